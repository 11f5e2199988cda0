"""Says early, in one line, when a run will take far longer than its recipe promises.

The same 600-step demo took 4 minutes on one 2-core machine and 18 on another: a newcomer should
learn that after a few batches, with the way to shorten it, not after twenty minutes.
"""

from __future__ import annotations

import logging
import time

from composer.core import Callback, State, TimeUnit
from composer.loggers import Logger
from composer.utils import dist

log = logging.getLogger(__name__)


class DurationCheck(Callback):
    """After `after_batches` training batches, extrapolates the training time to `max_duration`
    (batches, or epochs times the dataloader length) and, if it exceeds `expected_minutes` by more
    than `tolerance`, prints one line with the estimate and `hint` (how to shorten the run).

    The first batch is left out of the rate (it pays for start-up); evaluation time is not counted.
    """

    def __init__(self, expected_minutes: float, hint: str, after_batches: int = 20, tolerance: float = 1.5):
        if expected_minutes <= 0 or after_batches < 2 or tolerance < 1:
            raise ValueError("duration_check needs expected_minutes > 0, after_batches >= 2 and tolerance >= 1")
        self.expected_minutes = expected_minutes
        self.hint = hint
        self.after_batches = after_batches
        self.tolerance = tolerance
        self._measured = 0
        self._seconds = 0.0
        self._batch_started: float | None = None
        self.estimate_minutes: float | None = None

    def batch_start(self, state: State, logger: Logger) -> None:
        self._batch_started = time.perf_counter()

    def batch_end(self, state: State, logger: Logger) -> None:
        if self.estimate_minutes is not None or self._batch_started is None:
            return
        self._measured += 1
        if self._measured > 1:  # the first batch pays for start-up
            self._seconds += time.perf_counter() - self._batch_started
        if self._measured < self.after_batches:
            return
        total = self._total_batches(state)
        if total is None:
            self.estimate_minutes = float("nan")
            return
        per_batch = self._seconds / (self._measured - 1)
        self.estimate_minutes = per_batch * total / 60
        if self.estimate_minutes > self.expected_minutes * self.tolerance and dist.get_global_rank() == 0:
            message = (f"this run will take about {self.estimate_minutes:.0f} min of training on this machine "
                       f"(first {self._measured} batches extrapolated), far more than the {self.expected_minutes:g} min "
                       f"it takes on the machine its recipe was timed on; {self.hint}")
            log.warning(message)
            print(f"[duration_check] {message}", flush=True)

    @staticmethod
    def _total_batches(state: State) -> int | None:
        max_duration = state.max_duration
        if max_duration is None:
            return None
        if max_duration.unit == TimeUnit.BATCH:
            return int(max_duration.value)
        if max_duration.unit == TimeUnit.EPOCH and state.dataloader_len is not None:
            return int(max_duration.value) * int(state.dataloader_len)
        return None
