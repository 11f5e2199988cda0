"""A logger destination that appends every logged metric to a JSON-lines file."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch
from composer.core import State
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or inf
    return value


class JSONLinesLogger(LoggerDestination):
    """Writes `{"step": N, "<metric>": value, ...}` lines to `path` (rank 0 only), flushed per line,
    so a crashed run keeps everything it logged and the file is easy to load with pandas or jq."""

    def __init__(self, path: str):
        self.path = path
        self._file = None

    def init(self, state: State, logger: Logger) -> None:
        if dist.get_global_rank() == 0:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self._file is not None:
            record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self, state: State, logger: Logger) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
