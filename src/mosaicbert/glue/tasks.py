"""The 8 GLUE tasks (WNLI excluded): columns, labels, metrics, and the two fine-tuning protocols."""

from __future__ import annotations

from dataclasses import dataclass, field

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
class Task:
    name: str  # our key and the nyu-mll/glue config name
    folder: str  # classic GLUE folder name
    num_labels: int  # 1 = regression
    hub_columns: tuple[str, str | None]
    metrics: tuple[str, ...]  # averaged into the task score
    eval_splits: dict[str, tuple[str, str]]  # evaluator -> (hub split, TSV file)
    tsv: TSVLayout
    extra_metrics: tuple[str, ...] = ()  # reported, not averaged


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

ROUND_1 = ("mnli", "qnli", "qqp", "sst2", "cola")
ROUND_2 = ("rte", "mrpc", "stsb")  # start from the fine-tuned MNLI model in the paper protocol


@dataclass
class Hyperparameters:
    lr: float
    weight_decay: float  # decoupled (Composer DecoupledAdamW): torch AdamW's value times lr
    batch_size: int
    epochs: int
    seeds: list[int] = field(default_factory=lambda: [19])


# The MosaicBERT paper's per-task settings (mosaicml/examples finetuning_jobs.py; mosaicbert-recipe.md 5).
PAPER: dict[str, Hyperparameters] = {
    "mnli": Hyperparameters(5e-5, 5e-6, 48, 3, [19]),
    "qnli": Hyperparameters(1e-5, 1e-6, 16, 10, [19]),
    "qqp": Hyperparameters(3e-5, 3e-6, 16, 5, [19]),
    "sst2": Hyperparameters(3e-5, 3e-6, 16, 3, [19, 8364, 717]),
    "cola": Hyperparameters(5e-5, 5e-6, 32, 10, [19, 8364, 717, 10536]),
    "rte": Hyperparameters(1e-5, 1e-5, 16, 3, list(PAPER_SEEDS_5)),
    "mrpc": Hyperparameters(8e-5, 8e-6, 32, 10, list(PAPER_SEEDS_5)),
    "stsb": Hyperparameters(3e-5, 3e-6, 32, 10, list(PAPER_SEEDS_5)),
}
