"""Restores the random-number state when a run resumes in the middle of an epoch."""

from __future__ import annotations

from typing import Any

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import reproducibility


class ResumeRNG(Callback):
    """Makes an autoresumed run draw the same dropout masks as an uninterrupted one.

    Composer 0.32.1 restores the RNG state from a checkpoint only at an epoch boundary
    or while spinning the dataloader forward. A StreamingDataset resumes by itself, so
    no spinning happens and, mid-epoch, the saved state is never applied. This callback
    keeps its own copy in the checkpoint and applies it just before the first batch
    after loading.
    """

    def __init__(self):
        self._pending: list[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": reproducibility.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = state.get("rng")

    def before_dataloader(self, state: State, logger: Logger) -> None:
        if self._pending is not None:
            reproducibility.load_rng_state(self._pending)
            self._pending = None
