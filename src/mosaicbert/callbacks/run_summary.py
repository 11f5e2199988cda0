"""Records first and last evaluation, real-token throughput and the checkpoint, and reports them at the end."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist


class RunSummary(Callback):
    """At FIT_END, prints a short summary and writes it to `<run_folder>/summary.json` (rank 0).

    Throughput is non-padding tokens over training wall time (evaluation excluded), summed
    over all ranks, from FIT_START to FIT_END of this process (a resumed run counts its own part).
    """

    def __init__(self, run_folder: str, save_folder: str | None):
        self.run_folder = run_folder
        self.save_folder = save_folder
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
            "train_seconds": round(train_seconds, 3),
            "eval_seconds": round(self._eval_seconds, 3),
            "non_padding_tokens": tokens,
            "non_padding_tokens_per_second": round(tokens / train_seconds, 1),
            "first_eval": self.evaluations[0] if self.evaluations else None,
            "last_eval": self.evaluations[-1] if self.evaluations else None,
            "checkpoint": checkpoint,
        }
        if dist.get_global_rank() == 0:
            os.makedirs(self.run_folder, exist_ok=True)
            with open(os.path.join(self.run_folder, "summary.json"), "w", encoding="utf-8") as f:
                json.dump(self.summary, f, indent=2)
            print(format_summary(self.summary), flush=True)


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"== run {summary['run_name']}: {summary['batches']} batches"]
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


def compare_runs(baseline_folder: str, candidate_folder: str) -> str:
    """Training time and final MLM quality of two runs on the same data and steps (from their summary.json)."""
    runs = []
    for folder in (baseline_folder, candidate_folder):
        with open(os.path.join(folder, "summary.json"), encoding="utf-8") as f:
            runs.append(json.load(f))
    base, cand = runs
    if base["batches"] != cand["batches"]:
        raise ValueError(f"the runs differ in length: {base['batches']} vs {cand['batches']} batches")
    saved = 1 - cand["train_seconds"] / base["train_seconds"]
    lines = [f"== {cand['run_name']} vs {base['run_name']} ({base['batches']} batches each, same data)",
             f"   training time: {base['train_seconds']:.1f}s -> {cand['train_seconds']:.1f}s ({saved:+.1%} saved)"]
    for key in sorted(base["last_eval"] or {}):
        if key == "batch":
            continue
        lines.append(f"   {key}: {base['last_eval'][key]:.4f} -> {cand['last_eval'][key]:.4f}")
    return "\n".join(lines)
