"""One fine-tuning job (a task and a seed): its specification; the work is glue/finetune.py.

The runner starts each job as its own process, `python -m mosaicbert.glue.finetune <job.json>`, with
its output going to the job's log: a crash or out-of-memory error ends that job only, and
every job starts from a clean slate.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch

from mosaicbert.precision import default_gpu_precision


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
    test_sets: bool = False  # also predict the task's test sets (for a leaderboard submission)
    earlybert: dict[str, Any] | None = None  # the GLUE config's earlybert section (glue/earlybert.py)
    earlybert_ticket: str | None = None  # ticket.json of the pruned model `start` is: train it, no new search
    own_task: dict[str, Any] | None = None  # an own task's resolved definition (glue/own_task.py); None for GLUE
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


def job_task(job: Job):
    """The job's task: an own task's definition it carries, or a GLUE task by name."""
    if job.own_task is not None:
        from mosaicbert.glue.own_task import from_json

        return from_json(job.own_task)
    from mosaicbert.glue.tasks import TASKS

    return TASKS[job.task]


def predictions_path(result_path: str, split: str) -> str:
    """Beside the job's result: `<task>-seed<seed>-<hash>-<split>-predictions.jsonl`."""
    return f"{os.path.splitext(result_path)[0]}-{split}-predictions.jsonl"


def job_to_json(job: Job) -> dict[str, Any]:
    return dataclasses.asdict(job)
