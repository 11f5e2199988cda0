"""The 8 GLUE tasks (WNLI excluded): columns, labels, metrics, and the two fine-tuning protocols."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from pydantic import Field

from mosaicbert.config import Schema

PAPER_SEEDS_5 = (19, 8364, 717, 10536, 90166)


@dataclass(frozen=True)
class TSVLayout:
    """Where a task's fields sit in the classic GLUE TSV files (`<dir>/<TASK>/train.tsv`, `dev.tsv`)."""

    text_a: str | int
    text_b: str | int | None
    label: str | int
    header: bool = True  # CoLA's train/dev files have none: fields are then column numbers
    label_names: tuple[str, ...] = ()  # string labels, in label-id order; empty for numeric labels


@dataclass(frozen=True)
class TestSet:
    """A test split without labels, predicted for the GLUE leaderboard (gluebenchmark.com)."""

    name: str  # predictions are saved as <result>-<name>-predictions.jsonl
    tsv: str  # under data_local, in the classic layout
    hub: tuple[str, str]  # (nyu-mll/glue config, split)
    leaderboard_file: str
    text_columns: tuple[str, str | None]  # in the TSV's header
    index_column: str = "index"


@dataclass(frozen=True)
class Task:
    name: str  # our key and the nyu-mll/glue config name
    folder: str  # classic GLUE folder name
    num_labels: int  # 1 = regression
    hub_columns: tuple[str, str | None]
    metrics: tuple[str, ...]  # averaged into the task score
    eval_splits: dict[str, tuple[str, str]]  # evaluator -> (hub split, TSV file)
    tsv: TSVLayout
    extra_metrics: tuple[str, ...] = ()  # reported, not averaged
    test_sets: tuple[TestSet, ...] = ()

    # The interface the harness shares with own tasks (glue/own_task.py).
    @property
    def kind(self) -> str:
        return "regression" if self.num_labels == 1 else "classification"

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.tsv.label_names

    @property
    def test_names(self) -> tuple[str, ...]:
        return tuple(test_set.name for test_set in self.test_sets)

    @property
    def truncation(self) -> str:
        return "head"  # as GLUE has always been run


TASKS: dict[str, Task] = {
    "mnli": Task("mnli", "MNLI", 3, ("premise", "hypothesis"), ("accuracy",),
                 {"matched": ("validation_matched", "dev_matched.tsv"),
                  "mismatched": ("validation_mismatched", "dev_mismatched.tsv")},
                 TSVLayout("sentence1", "sentence2", "gold_label", label_names=("entailment", "neutral", "contradiction"))),
    "qnli": Task("qnli", "QNLI", 2, ("question", "sentence"), ("accuracy",), {"dev": ("validation", "dev.tsv")},
                 TSVLayout("question", "sentence", "label", label_names=("entailment", "not_entailment"))),
    "qqp": Task("qqp", "QQP", 2, ("question1", "question2"), ("accuracy", "f1"), {"dev": ("validation", "dev.tsv")},
                TSVLayout("question1", "question2", "is_duplicate")),
    "sst2": Task("sst2", "SST-2", 2, ("sentence", None), ("accuracy",), {"dev": ("validation", "dev.tsv")},
                 TSVLayout("sentence", None, "label")),
    "cola": Task("cola", "CoLA", 2, ("sentence", None), ("matthews",), {"dev": ("validation", "dev.tsv")},
                 TSVLayout(3, None, 1, header=False)),
    "rte": Task("rte", "RTE", 2, ("sentence1", "sentence2"), ("accuracy",), {"dev": ("validation", "dev.tsv")},
                TSVLayout("sentence1", "sentence2", "label", label_names=("entailment", "not_entailment"))),
    "mrpc": Task("mrpc", "MRPC", 2, ("sentence1", "sentence2"), ("accuracy", "f1"), {"dev": ("validation", "dev.tsv")},
                 TSVLayout("#1 String", "#2 String", "Quality")),
    "stsb": Task("stsb", "STS-B", 1, ("sentence1", "sentence2"), ("spearman",), {"dev": ("validation", "dev.tsv")},
                 TSVLayout("sentence1", "sentence2", "score"), extra_metrics=("pearson",)),
}


def _test(task: str, folder: str, text: tuple[str, str | None], file: str = "test.tsv", name: str = "test",
          hub: tuple[str, str] | None = None, leaderboard: str | None = None, index: str = "index") -> TestSet:
    return TestSet(name, f"{folder}/{file}", hub or (task, "test"), leaderboard or f"{folder}.tsv", text, index)


# The test files of the classic GLUE download, their columns, and the leaderboard's file names. AX (the
# diagnostic set) has no training data: the leaderboard takes MNLI's model's predictions on it.
TEST_SETS = {
    "cola": (_test("cola", "CoLA", ("sentence", None)),),
    "sst2": (_test("sst2", "SST-2", ("sentence", None)),),
    "mrpc": (_test("mrpc", "MRPC", ("#1 String", "#2 String")),),
    "qqp": (_test("qqp", "QQP", ("question1", "question2"), index="id"),),
    "stsb": (_test("stsb", "STS-B", ("sentence1", "sentence2")),),
    "mnli": (_test("mnli", "MNLI", ("sentence1", "sentence2"), "test_matched.tsv", "test_matched",
                   ("mnli", "test_matched"), "MNLI-m.tsv"),
             _test("mnli", "MNLI", ("sentence1", "sentence2"), "test_mismatched.tsv", "test_mismatched",
                   ("mnli", "test_mismatched"), "MNLI-mm.tsv"),
             _test("mnli", "diagnostic", ("sentence1", "sentence2"), "diagnostic.tsv", "ax", ("ax", "test"), "AX.tsv")),
    "qnli": (_test("qnli", "QNLI", ("question", "sentence")),),
    "rte": (_test("rte", "RTE", ("sentence1", "sentence2")),),
}
TASKS = {name: replace(task, test_sets=TEST_SETS[name]) for name, task in TASKS.items()}
# WNLI is not fine-tuned (its train and dev sets contradict each other; BERT's authors predicted the
# majority class); the submission writes its majority class, as they did.
WNLI_TEST = _test("wnli", "WNLI", ("sentence1", "sentence2"))
WNLI_MAJORITY = 0  # not entailment: what BERT's submissions predicted for every WNLI example

ROUND_1 = ("mnli", "qnli", "qqp", "sst2", "cola")
ROUND_2 = ("rte", "mrpc", "stsb")  # start from the fine-tuned MNLI model in the paper protocol


class Hyperparameters(Schema):
    lr: float
    weight_decay: float  # decoupled (Composer DecoupledAdamW): torch AdamW's value times lr
    batch_size: int
    epochs: int
    seeds: list[int] = Field(default_factory=lambda: [19])


# The MosaicBERT paper's per-task settings (mosaicml/examples finetuning_jobs.py; mosaicbert-recipe.md 5):
# lr, weight decay, batch size, epochs, seeds.
PAPER: dict[str, Hyperparameters] = {
    task: Hyperparameters(lr=lr, weight_decay=decay, batch_size=batch, epochs=epochs, seeds=list(seeds))
    for task, (lr, decay, batch, epochs, seeds) in {
        "mnli": (5e-5, 5e-6, 48, 3, [19]),
        "qnli": (1e-5, 1e-6, 16, 10, [19]),
        "qqp": (3e-5, 3e-6, 16, 5, [19]),
        "sst2": (3e-5, 3e-6, 16, 3, [19, 8364, 717]),
        "cola": (5e-5, 5e-6, 32, 10, [19, 8364, 717, 10536]),
        "rte": (1e-5, 1e-5, 16, 3, PAPER_SEEDS_5),
        "mrpc": (8e-5, 8e-6, 32, 10, PAPER_SEEDS_5),
        "stsb": (3e-5, 3e-6, 32, 10, PAPER_SEEDS_5),
    }.items()
}
