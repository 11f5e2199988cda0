"""Records first and last evaluation, real-token throughput and the checkpoint, and reports them at the end."""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import torch
from composer.core import Callback, Event, State
from composer.loggers import Logger
from composer.utils import dist


class RunSummary(Callback):
    """When training ends (after its final evaluation), prints a short summary and writes it to
    `<run_folder>/summary.json` (rank 0).

    Throughput is non-padding tokens over training wall time (evaluation excluded), summed
    over all ranks, from FIT_START to FIT_END of this process (a resumed run counts its own part).
    `train_seconds_total` is Composer's training clock of the whole run, resumed parts included,
    which a time budget (`time_budget_seconds`) is spent against.
    """

    def __init__(self, run_folder: str, save_folder: str | None, time_budget_seconds: float | None):
        self.run_folder = run_folder
        self.save_folder = save_folder
        self.time_budget_seconds = time_budget_seconds
        self.evaluations: list[dict[str, Any]] = []
        self._fit_start = 0.0
        self._tokens_start = 0
        self._batch_start = 0
        self._eval_seconds = 0.0
        self._eval_started = None
        self.summary: dict[str, Any] = {}

    def eval_start(self, state: State, logger: Logger) -> None:
        self._eval_started = time.perf_counter()

    def eval_end(self, state: State, logger: Logger) -> None:
        if self._eval_started is not None:
            self._eval_seconds += time.perf_counter() - self._eval_started
            self._eval_started = None
        values = {
            f"{label}/{name}": float(metric.compute())
            for label, metrics in state.eval_metrics.items()
            for name, metric in metrics.items()
        }
        self.evaluations.append({"batch": int(state.timestamp.batch), **values})

    def fit_start(self, state: State, logger: Logger) -> None:
        self._fit_start = time.perf_counter()
        self._tokens_start = int(state.timestamp.token)
        self._batch_start = int(state.timestamp.batch)
        self._eval_seconds = 0.0

    def fit_end(self, state: State, logger: Logger) -> None:
        elapsed = time.perf_counter() - self._fit_start
        train_seconds = max(elapsed - self._eval_seconds, 1e-9)
        tokens = int(state.timestamp.token) - self._tokens_start
        checkpoint = None
        if self.save_folder is not None:
            latest = os.path.join(self.save_folder, "latest-rank0.pt")
            checkpoint = os.path.realpath(latest) if os.path.exists(latest) else None
        self.summary = {
            "run_name": state.run_name,
            "batches": int(state.timestamp.batch),
            "batches_this_run": int(state.timestamp.batch) - self._batch_start,
            "samples": int(state.timestamp.sample),  # documents, also when rows are packed
            "train_seconds": round(train_seconds, 3),
            "train_seconds_total": round(state.timestamp.total_wct.total_seconds(), 3),
            "time_budget_seconds": self.time_budget_seconds,
            "eval_seconds": round(self._eval_seconds, 3),
            "non_padding_tokens": tokens,
            "non_padding_tokens_per_second": round(tokens / train_seconds, 1),
            "first_eval": self.evaluations[0] if self.evaluations else None,
            "last_eval": self.evaluations[-1] if self.evaluations else None,
            "checkpoint": checkpoint,
        }
        if dist.get_world_size() > 1:
            # Each rank's own weights: data-parallel ranks must end identical, and this shows whether they did.
            os.makedirs(self.run_folder, exist_ok=True)
            with open(os.path.join(self.run_folder, f"weights-rank{dist.get_global_rank()}.sha256"), "w", encoding="utf-8") as f:
                f.write(weights_digest(state.model) + "\n")
        # When training did not end on an eval_interval (a time budget rarely does), Composer evaluates
        # once more after FIT_END; the report waits for that evaluation.
        if not any(evaluator.eval_interval(state, Event.FIT_END) for evaluator in state.evaluators):
            self._report()

    def eval_after_all(self, state: State, logger: Logger) -> None:
        if self.summary:  # the evaluation after FIT_END
            self.summary["first_eval"], self.summary["last_eval"] = self.evaluations[0], self.evaluations[-1]
            self._report()

    def _report(self) -> None:
        if dist.get_global_rank() == 0:
            os.makedirs(self.run_folder, exist_ok=True)
            with open(os.path.join(self.run_folder, "summary.json"), "w", encoding="utf-8") as f:
                json.dump(self.summary, f, indent=2)
            print(format_summary(self.summary), flush=True)


def weights_digest(model) -> str:
    """sha256 over the model's tensors in key order (DDP's `module.` wrapper removed), as in the checkpoint."""
    model = model.module if hasattr(model, "module") else model
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        if hasattr(value, "detach"):  # skips non-tensor extra state
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"== run {summary['run_name']}: {summary['batches']} batches"]
    if summary["time_budget_seconds"] is not None:
        lines[0] += (f", bought by a time budget of {summary['time_budget_seconds']:g} s "
                     f"({summary['train_seconds_total']:.1f} s of training used)")
    first, last = summary["first_eval"], summary["last_eval"]
    for key in sorted(last or {}):
        if key.endswith("MaskedAccuracy"):
            start = f"{first[key]:.4f} (batch {first['batch']}) -> " if first is not last else ""
            lines.append(f"   MLM accuracy {key.split('/')[0]}: {start}{last[key]:.4f} (batch {last['batch']})")
        if key.endswith("LanguageCrossEntropy"):
            start = f"{first[key]:.3f} -> " if first is not last else ""
            lines.append(f"   MLM loss {key.split('/')[0]}: {start}{last[key]:.3f}")
    lines.append(
        f"   throughput: {summary['non_padding_tokens_per_second']:,.0f} non-padding tokens/s "
        f"({summary['non_padding_tokens']:,} tokens in {summary['train_seconds']:.1f}s of training)"
    )
    lines.append(f"   checkpoint: {summary['checkpoint'] or 'none saved (save_folder unset)'}")
    return "\n".join(lines)
