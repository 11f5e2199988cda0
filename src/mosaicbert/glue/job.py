"""One fine-tuning job (a task and a seed): train, evaluate on dev, write the result JSON.

The runner starts each job as its own process, `python -m mosaicbert.glue.job <job.json>`, with
its output going to the job's log: a crash or out-of-memory error ends that job only, and
every job starts from a clean slate.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mosaicbert.precision import autocast, default_gpu_precision
from mosaicbert.files import write_json_atomically


@dataclass
class Job:
    task: str
    seed: int
    start: str  # Composer checkpoint or Hugging Face model folder
    model_name: str
    model_config: dict[str, Any] | None
    tokenizer_name: str
    max_seq_len: int
    data_source: str
    data_local: str | None
    lr: float
    weight_decay: float
    batch_size: int
    epochs: int
    precision: str | None
    shuffle_train: bool
    result_path: str
    log_path: str
    save_model_dir: str | None = None
    earlybert: dict[str, Any] | None = None  # the GLUE config's earlybert section (glue/earlybert.py)
    earlybert_ticket: str | None = None  # ticket.json of the pruned model `start` is: train it, no new search
    inputs: dict[str, Any] | None = None  # name, size and mtime of the start's and the data's files
    spec_hash: str | None = None  # of every field but the output paths: the runner reuses results by it

    @property
    def name(self) -> str:
        return f"{self.task}-seed{self.seed}"

    @property
    def earlybert_folder(self) -> str:
        """Where the job's search writes its ticket, mask heatmap and weights."""
        return os.path.splitext(self.result_path)[0] + "-earlybert"


def resolve_precision(requested: str | None, regression: bool) -> str:
    """The precision a job trains in, decided when it is planned so the result cache keys on it: fp32 on
    CPU and for regression (STS-B, as the reference's STSBJob), else the config's choice or the GPU's default
    (amp_bf16 from Ampere on, amp_fp16 before it)."""
    if regression or not torch.cuda.is_available():
        return "fp32"
    return requested or default_gpu_precision()[0]


def fp32_attention(model: torch.nn.Module, precision: str) -> None:
    """FlashAttention runs in fp16/bf16 only: a model configured with `attention_backend: flash_attn`
    (which refuses to fall back) computes the same attention through SDPA when the job trains in fp32."""
    if precision == "fp32" and getattr(model.config, "attention_backend", None) == "flash_attn":
        print("attention_backend flash_attn -> auto: this job trains in fp32, which FlashAttention cannot", flush=True)
        model.config.attention_backend = "auto"  # the model reads it at every forward


def run(job: Job) -> dict[str, Any]:
    from composer import Trainer
    from composer.models import ComposerModel
    from composer.optim import ConstantScheduler, DecoupledAdamW, LinearWithWarmupScheduler
    from composer.utils import reproducibility

    from mosaicbert.data.tokenizer import build_tokenizer
    from mosaicbert.glue import data
    from mosaicbert.glue.metrics import METRICS
    from mosaicbert.glue.tasks import TASKS
    from mosaicbert.model.loading import load_classifier

    class ComposerClassifier(ComposerModel):
        def __init__(self, model):
            super().__init__()
            self.model = model
            self.reshape_hooks = []  # EarlyBERT's hook point (see ComposerMosaicBert)

        def forward(self, batch):
            return self.model(**batch)

        def loss(self, outputs, batch):
            return outputs.loss

        def get_metrics(self, is_train=False):
            return {}  # scored after training, with GLUE's own metric definitions

        def update_metric(self, batch, outputs, metric):
            raise AssertionError("no Composer metrics are registered")

    reproducibility.seed_all(job.seed)
    task = TASKS[job.task]
    regression = task.num_labels == 1
    device = "gpu" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(job.precision, regression)
    tokenizer = build_tokenizer(job.tokenizer_name, job.max_seq_len)
    train_set = data.TokenizedExamples(
        data.load_examples(task, "train", job.data_source, job.data_local), tokenizer, job.max_seq_len, regression
    )
    def fit(model, lr: float, duration: str, schedule: str, algorithms=()) -> None:
        """Train `model` for `duration` at `lr`, held constant or with a 6% warm-up and linear decay."""
        trainer = Trainer(
            model=ComposerClassifier(model),
            train_dataloader=data.dataloader(train_set, job.batch_size, job.shuffle_train, job.seed, tokenizer.pad_token_id,
                                             pin_memory=device == "gpu"),
            max_duration=duration,
            optimizers=DecoupledAdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=job.weight_decay),
            schedulers=ConstantScheduler() if schedule == "constant" else LinearWithWarmupScheduler(t_warmup="0.06dur", alpha_f=0.0),
            device=device,
            precision=precision,
            device_train_microbatch_size=job.batch_size if device == "cpu" else "auto",
            seed=job.seed,
            algorithms=list(algorithms),
            progress_bar=True,
            log_to_console=False,
            python_log_level="warning",
        )
        trainer.fit()
        trainer.close()

    def load():
        model = load_classifier(job.start, job.model_name, task.num_labels, job.model_config)
        fp32_attention(model, precision)
        return model

    model = load()
    started = time.perf_counter()
    earlybert = None
    if job.earlybert is None:
        fit(model, job.lr, f"{job.epochs}ep", "warmup_decay")
    else:
        from mosaicbert.glue import earlybert as glue_earlybert

        steps_per_epoch = -(-len(train_set) // job.batch_size)  # the last batch may be partial
        model, earlybert = glue_earlybert.train(job, model, fit, load, steps_per_epoch)
    train_seconds = time.perf_counter() - started

    model.eval()
    metrics = {}
    for split in task.eval_splits:
        examples = data.load_examples(task, split, job.data_source, job.data_local)
        loader = data.dataloader(data.TokenizedExamples(examples, tokenizer, job.max_seq_len, regression),
                                 64, False, job.seed, tokenizer.pad_token_id, pin_memory=device == "gpu")
        predictions, labels = predict(model, loader, regression, precision)
        names = task.metrics + task.extra_metrics
        metrics[split] = {name: METRICS[name](predictions, labels) for name in names}

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


@torch.no_grad()
def predict(model, loader, regression: bool, precision: str) -> tuple[np.ndarray, np.ndarray]:
    device = next(model.parameters()).device
    outputs, labels = [], []
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(precision, device):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           token_type_ids=batch["token_type_ids"]).logits.float()
        outputs.append(logits.squeeze(-1) if regression else logits.argmax(dim=-1))
        labels.append(batch["labels"])
    return torch.cat(outputs).cpu().numpy(), torch.cat(labels).cpu().numpy()


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        job = Job(**json.load(f))
    from mosaicbert.errors import UserError

    try:
        result = run(job)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    print(json.dumps(result["metrics"]), flush=True)
    return 0


def job_to_json(job: Job) -> dict[str, Any]:
    return dataclasses.asdict(job)


if __name__ == "__main__":
    sys.exit(main())
