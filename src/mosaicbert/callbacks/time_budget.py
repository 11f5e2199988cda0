"""Training to a wall-clock budget (`max_duration: 2h`), as Cramming and the "24h BERT" do.

Composer's trainer refuses a wall-clock `max_duration`, but it keeps a run's training time in
`state.timestamp.total_wct`: evaluation is left out (the training loop stops its clock around
the evaluators), checkpoint writes and data loading are in, and the value is saved in every
checkpoint and restored on resume. After each batch, `TimeBudget` sets `max_duration` to the
number of batches the budget buys at the pace so far. Everything written as a fraction of the
run (`t_warmup: 0.06dur`, the decay to `alpha_f` at `1dur`) then follows the elapsed share of the
budget instead of a batch count, and when the budget is spent `max_duration` becomes the current
batch: training ends there, with the final checkpoint and evaluation of any other run.
"""

from __future__ import annotations

import math

from composer.core import Callback, State, Time, TimeUnit
from composer.loggers import Logger

# What the Trainer gets as max_duration until the first batch has set a pace. Large, so that a
# `dur` warm-up is not empty at the first step and a resumed run is not finished before it starts.
PLACEHOLDER_MAX_DURATION = Time(10**12, TimeUnit.BATCH)


class TimeBudget(Callback):
    """Ends training at the first batch that brings the training time to `budget_seconds`.

    Until then, `max_duration` is `ceil(batches * budget / seconds so far)`, and at least one more
    batch, so `batches / max_duration`, what every `dur` schedule reads, is the fraction of the budget
    spent, to within one batch. The run overshoots its budget by less than its last batch. Nothing is
    kept in checkpoints beyond Composer's timestamp: a resumed run goes on from the saved training
    time (a larger budget on resume stretches the schedule to it).
    """

    def __init__(self, budget_seconds: float):
        if budget_seconds <= 0:
            raise ValueError(f"a time budget must be positive, got {budget_seconds} s")
        self.budget_seconds = budget_seconds
        self._planned: Time | None = None

    def fit_start(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) > 0:  # resumed: the checkpoint's pace and training time
            self._plan(state, logger)

    def batch_start(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) == 0:
            # The bar read PLACEHOLDER_MAX_DURATION (10**12 batches) as its total: show no total until
            # the first batch has set a pace and `_plan` gives the real one.
            _set_progress_bar_total(logger, None)

    def batch_end(self, state: State, logger: Logger) -> None:
        self._plan(state, logger)

    def _plan(self, state: State, logger: Logger) -> None:
        # total_wct is rank 0's clock, broadcast every batch, so every rank plans the same last batch.
        batches = int(state.timestamp.batch)
        current = state.max_duration
        if self._planned is not None and current != self._planned and current.unit == TimeUnit.BATCH and int(current) <= batches:
            return  # something else stopped training here (EarlyBERT's two-phase draw, stop_training): that stands
        seconds = state.timestamp.total_wct.total_seconds()
        if seconds >= self.budget_seconds:
            total = batches
        elif seconds <= 0:  # no pace yet
            total = batches + 1
        else:
            total = max(batches + 1, math.ceil(batches * self.budget_seconds / seconds))
        self._planned = state.max_duration = Time(total, TimeUnit.BATCH)
        logger.log_metrics({"time/budget_batches": total})
        _set_progress_bar_total(logger, total)


def _set_progress_bar_total(logger: Logger, total: int | None) -> None:
    """Composer's training progress bar reads max_duration once, when training starts."""
    for destination in logger.destinations:
        bar = getattr(destination, "train_pbar", None)
        if bar is not None:
            bar.pbar.total = total
