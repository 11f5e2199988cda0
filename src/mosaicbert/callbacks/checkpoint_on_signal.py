"""SIGTERM (Slurm's warning before the time limit, preemption, scancel): checkpoint, then stop.

The handler only raises a flag; at the end of the current step every rank agrees on it (a max
all-reduce, so all ranks stop at the same step), the checkpoint saver writes a checkpoint of that
step unless it just did, and training ends with `Interrupted`. The entry script exits with 128 +
the signal number; the same command with autoresume=true continues from the checkpoint.

With `nonfinite_guard` in the run, the flag rides in the guard's all-reduce after the backward, so a
batch has one all-reduce for both; a signal that arrives after it stops the run one step later.
"""

from __future__ import annotations

import os
import signal
import threading

import torch
from composer.callbacks import CheckpointSaver
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from mosaicbert.errors import Interrupted
from mosaicbert.files import SIGNAL_CHECKPOINTS


class CheckpointOnSignal(Callback):
    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        self.received = signum

    def fit_start(self, state: State, logger: Logger) -> None:
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread only
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)

    def agreed(self, batch: int, signum: int) -> None:
        """The ranks' agreed signal for `batch`, from `nonfinite_guard`'s all-reduce (one per batch for both)."""
        self._agreed = (batch, signum)

    def batch_checkpoint(self, state: State, logger: Logger) -> None:
        batch, signum = getattr(self, "_agreed", (None, 0))
        if batch != int(state.timestamp.batch) - 1:  # no guard agreed on this batch: agree here
            flag = torch.full((1,), self.received or 0, dtype=torch.int64, device=next(state.model.parameters()).device)
            dist.all_reduce(flag, reduce_operation="MAX")
            signum = int(flag.item())
        if not signum:
            return
        saver = next((cb for cb in state.callbacks if isinstance(cb, CheckpointSaver)), None)
        checkpoint = None
        if saver is not None:
            extra = saver.last_checkpoint_batch != state.timestamp.batch
            if extra:
                # Composer 0.32 has no public "save now" for callbacks; this is what its interval saving calls.
                saver._save_checkpoint(state, logger)
            checkpoint = saver.saved_checkpoints[-1] if saver.saved_checkpoints else None
            if extra and checkpoint is not None and dist.get_global_rank() == 0:
                # Off the save interval: sweeps leave it out of their points, which line up across seeds by interval.
                with open(os.path.join(os.path.dirname(checkpoint), SIGNAL_CHECKPOINTS), "a", encoding="utf-8") as f:
                    f.write(os.path.basename(checkpoint) + "\n")
        self.restore()
        raise Interrupted(signum, int(state.timestamp.batch), checkpoint)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def close(self, state: State, logger: Logger) -> None:
        # Not at FIT_END: Composer's final evaluation follows it, and a SIGTERM there must not kill the
        # run between its last checkpoint and its summary (a sweep would take it for unfinished).
        self.restore()
