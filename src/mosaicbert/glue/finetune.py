"""One job's work, in its own process (`python -m mosaicbert.glue.finetune <job.json>`; the job is glue/job.py):
load the start, fine-tune, score dev, save predictions.

A GLUE task and an own task (glue/own_task.py) look alike here: both say their kind, labels, metrics and
splits. Sentence tasks (classification, multi-label, regression) and token classification differ in their
data only, so each has a small data class with the same three methods.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from typing import Any

import numpy as np
import torch
from composer.models import ComposerModel

from mosaicbert.errors import entry_point
from mosaicbert.files import write_json_atomically, write_text_atomically
from mosaicbert.glue import data, own_task, tagging
from mosaicbert.glue.job import Job, fp32_attention, job_task, job_to_json, predictions_path, resolve_precision
from mosaicbert.glue.metrics import KIND_METRICS
from mosaicbert.precision import autocast

EVAL_BATCH_SIZE = 64


class ComposerClassifier(ComposerModel):
    """A Hugging Face-style classifier for Composer's Trainer; scored after training, by the harness."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.reshape_hooks = []  # EarlyBERT's hook point (see ComposerMosaicBert)

    def forward(self, batch):
        return self.model(**batch)

    def loss(self, outputs, batch):
        return outputs.loss

    def get_metrics(self, is_train=False):
        return {}

    def update_metric(self, batch, outputs, metric):
        raise AssertionError("no Composer metrics are registered")


@torch.no_grad()
def batch_logits(model, loader, precision: str):
    """(logits in fp32 on the CPU, batch) for each batch of `loader`, in order."""
    device = next(model.parameters()).device
    for batch in loader:
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        with autocast(precision, device):
            yield model(**inputs).logits.float().cpu(), batch


def decide(kind: str, logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions from logits (class ids; 0/1 per class for multi-label at probability 0.5; values for
    regression) and class probabilities (softmax; sigmoid per class for multi-label)."""
    if kind == "regression":
        return logits.squeeze(-1).numpy(), None
    if kind == "multilabel":
        probabilities = torch.sigmoid(logits.double())
        return (probabilities > 0.5).long().numpy(), probabilities.numpy()
    return logits.argmax(dim=-1).numpy(), torch.softmax(logits.double(), dim=-1).numpy()


def predict(model, loader, kind: str, precision: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Predictions, labels and class probabilities (None for regression) of a sentence task's loader."""
    logits, labels = zip(*((out, batch["labels"]) for out, batch in batch_logits(model, loader, precision)))
    predictions, probabilities = decide(kind, torch.cat(logits))
    return predictions, torch.cat(labels).numpy(), probabilities


def score(task, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics (those averaged into its score and those only reported)."""
    table = KIND_METRICS[task.kind]
    if task.kind == "regression":
        return {name: table[name](predictions, labels) for name in (*task.metrics, *task.extra_metrics)}
    return {name: table[name](predictions, labels, task.num_labels) for name in (*task.metrics, *task.extra_metrics)}


class SentenceData:
    """Single sentences or pairs, one label (or value, or label set) each: GLUE's tasks and own tasks."""

    def __init__(self, job: Job, task, tokenizer):
        self.job, self.task, self.tokenizer = job, task, tokenizer

    def examples(self, split: str) -> tuple[list[str] | None, data.Examples]:
        """(ids, examples): own tasks' ids are their id column (or row numbers), GLUE test sets' their index."""
        job, task = self.job, self.task
        if isinstance(task, own_task.OwnTask):
            return own_task.load_examples(task, split)
        if split in task.test_names:
            test_set = next(t for t in task.test_sets if t.name == split)
            return data.load_test(test_set, job.data_source, job.data_local)
        return None, data.load_examples(task, split, job.data_source, job.data_local)

    def tokenized(self, examples: data.Examples) -> data.TokenizedExamples:
        return data.TokenizedExamples(examples, self.tokenizer, self.job.max_seq_len,
                                      float_labels=self.task.kind in ("regression", "multilabel"),
                                      truncation=self.task.truncation)

    def dataset(self, split: str) -> data.TokenizedExamples:
        return self.tokenized(self.examples(split)[1])

    def evaluate(self, model, split: str, precision: str) -> tuple[dict[str, float] | None, list[dict[str, Any]]]:
        """(scores, or None for a test split; one prediction row per example)."""
        ids, examples = self.examples(split)
        dataset = self.tokenized(examples)
        predictions, labels, probabilities = predict(model, loader(self.job, dataset, self.tokenizer), self.task.kind, precision)
        scores = None if split in self.task.test_names else score(self.task, predictions, labels)
        return scores, prediction_rows(self.task, ids, predictions, probabilities)


def prediction_rows(task, ids: list[str] | None, predictions: np.ndarray, probabilities: np.ndarray | None) -> list[dict]:
    """`id` (given, else the row number among the split's examples), the prediction (label name where the task
    names its labels, else the class id; the label names for multi-label; the value for regression) and the
    class probabilities."""
    names = task.label_names
    rows = []
    for i, prediction in enumerate(predictions.tolist()):
        if task.kind == "multilabel":
            prediction = [names[c] for c, chosen in enumerate(prediction) if chosen]
        elif task.kind == "classification" and names:
            prediction = names[prediction]
        row = {"id": ids[i] if ids is not None else i, "prediction": prediction}
        if probabilities is not None:
            row["probabilities"] = {names[c] if names else str(c): round(p, 6) for c, p in enumerate(probabilities[i].tolist())}
        rows.append(row)
    return rows


class TaggingData:
    """Token classification: words with a tag each; the first subword of a word carries its tag (glue/tagging.py)."""

    def __init__(self, job: Job, task: own_task.OwnTask, tokenizer):
        self.job, self.task, self.tokenizer = job, task, tokenizer
        self.label_ids = {name: i for i, name in enumerate(task.label_names)}

    def encoded(self, split: str) -> tuple[list[tagging.Sentence], list[tagging.Encoded]]:
        sentences = own_task.read_tagged(self.task, split)
        return sentences, [tagging.encode(self.tokenizer, s, self.label_ids, self.job.max_seq_len) for s in sentences]

    @staticmethod
    def rows(encoded: list[tagging.Encoded]) -> list[tuple[list[int], list[int], list[int]]]:
        """(input ids, token types, labels) items for `data.collate`: one segment, labels per subword."""
        return [(e.input_ids, [0] * len(e.input_ids), e.labels) for e in encoded]

    def dataset(self, split: str) -> list[tuple[list[int], list[int], list[int]]]:
        return self.rows(self.encoded(split)[1])

    def evaluate(self, model, split: str, precision: str) -> tuple[dict[str, float] | None, list[dict[str, Any]]]:
        sentences, encoded = self.encoded(split)
        tags, cut = [], 0
        for logits, batch in batch_logits(model, loader(self.job, self.rows(encoded), self.tokenizer), precision):
            for row, length in zip(logits.argmax(dim=-1).tolist(), batch["attention_mask"].sum(dim=1).tolist()):
                e, sentence = encoded[len(tags)], sentences[len(tags)]
                words, missing = tagging.word_tags(row[:length], e.word_ids, len(sentence.words), self.task.label_names)
                tags.append(words)
                cut += missing
        if cut:
            print(f"{split}: {cut} words without a subword within max_seq_len={self.job.max_seq_len} (cut off, or "
                  "tokenized to nothing) were predicted 'O'", flush=True)
        scores = None
        if split not in self.task.test_names:
            scores = tagging.tagging_metrics([s.tags for s in sentences], tags,
                                             (*self.task.metrics, *self.task.extra_metrics))
        return scores, [{"id": i, "words": s.words, "prediction": t} for i, (s, t) in enumerate(zip(sentences, tags))]


def loader(job: Job, dataset, tokenizer, train: bool = False):
    return data.dataloader(dataset, job.batch_size if train else EVAL_BATCH_SIZE, train and job.shuffle_train,
                           job.seed, tokenizer.pad_token_id, pin_memory=torch.cuda.is_available())


def fit(job: Job, train_set, tokenizer, precision: str, model, lr: float, duration: str, schedule: str,
        algorithms=()) -> None:
    """Train `model` for `duration` at `lr`, held constant or with a 6% warm-up and linear decay."""
    from composer import Trainer
    from composer.optim import ConstantScheduler, DecoupledAdamW, LinearWithWarmupScheduler

    cpu = not torch.cuda.is_available()
    trainer = Trainer(
        model=ComposerClassifier(model),
        train_dataloader=loader(job, train_set, tokenizer, train=True),
        max_duration=duration,
        optimizers=DecoupledAdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=job.weight_decay),
        schedulers=ConstantScheduler() if schedule == "constant" else LinearWithWarmupScheduler(t_warmup="0.06dur", alpha_f=0.0),
        device="cpu" if cpu else "gpu",
        precision=precision,
        device_train_microbatch_size=job.batch_size if cpu else "auto",
        seed=job.seed,
        algorithms=list(algorithms),
        progress_bar=True,
        log_to_console=False,
        python_log_level="warning",
    )
    trainer.fit()
    trainer.close()


def load_model(job: Job, task, precision: str):
    from mosaicbert.model.loading import load_classifier

    model = load_classifier(job.start, job.model_name, task.num_labels, job.model_config, task.label_names,
                            per_token=task.kind == "token_classification", multilabel=task.kind == "multilabel")
    fp32_attention(model, precision)
    return model


def run(job: Job) -> dict[str, Any]:
    from composer.utils import reproducibility

    from mosaicbert.data.tokenizer import build_tokenizer

    reproducibility.seed_all(job.seed)
    task = job_task(job)
    precision = resolve_precision(job.precision, task.kind == "regression")
    tokenizer = build_tokenizer(job.tokenizer_name, job.max_seq_len)
    task_data = (TaggingData if task.kind == "token_classification" else SentenceData)(job, task, tokenizer)
    train_set = task_data.dataset("train")
    train = functools.partial(fit, job, train_set, tokenizer, precision)
    model = load_model(job, task, precision)
    started = time.perf_counter()
    earlybert = None
    if job.earlybert is None:
        train(model, job.lr, f"{job.epochs}ep", "warmup_decay")
    else:
        from mosaicbert.glue import earlybert as glue_earlybert

        steps_per_epoch = -(-len(train_set) // job.batch_size)  # the last batch may be partial
        model, earlybert = glue_earlybert.train(job, model, train, lambda: load_model(job, task, precision), steps_per_epoch)
    train_seconds = time.perf_counter() - started

    model.eval()
    metrics = {}
    for split in list(task.eval_splits) + list(task.test_names if job.test_sets else ()):
        scores, rows = task_data.evaluate(model, split, precision)
        if scores is not None:
            metrics[split] = scores
        write_text_atomically(predictions_path(job.result_path, split), "".join(json.dumps(r) + "\n" for r in rows))
    if job.save_model_dir:
        model.save_pretrained(job.save_model_dir)
    result = {
        "task": job.task, "seed": job.seed, "status": "ok", "start": job.start, "metrics": metrics,
        "spec_hash": job.spec_hash, "job": job_to_json(job),
        "hyperparameters": {"lr": job.lr, "weight_decay": job.weight_decay, "batch_size": job.batch_size,
                            "epochs": job.epochs, "precision": precision, "shuffle_train": job.shuffle_train},
        "train_examples": len(train_set), "train_seconds": round(train_seconds, 2), "saved_model": job.save_model_dir,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if earlybert is not None:
        result.update(earlybert=earlybert, earlybert_draw_step=earlybert["draw_step"])
    write_json_atomically(job.result_path, result)
    return result


@entry_point()
def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        job = Job(**json.load(f))
    result = run(job)
    print(json.dumps(result["metrics"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
