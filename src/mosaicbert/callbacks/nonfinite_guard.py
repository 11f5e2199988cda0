"""Stops (or recovers) a run whose loss or gradients stop being finite, before the bad update is applied.

The check runs at Composer's AFTER_TRAIN_BATCH: every microbatch's backward is done, the gradients are
whole (and unscaled under fp16 grad scaling), and the optimizer has not stepped yet. So a non-finite
loss or gradient norm never reaches the weights or the optimizer state, and every checkpoint written
so far, the last one included, is good. All ranks agree (a max all-reduce) and act on the same step.

`action`:
- `stop` (default): raise `NonFiniteError`, naming the step and the last checkpoint; the entry script
  prints it and exits 2, as for any error in the run's input. Resume with `autoresume=true` (perhaps with a lower lr or `action=skip`).
- `skip`: drop the step's gradients (`grad = None`: PyTorch optimizers then leave those parameters
  and their moments untouched, so the step is not applied at all) and go on. The batch still counts
  as trained-on for the schedule and the data order.
- `rollback`: stop, record the step in `<run_folder>/nonfinite-batches.json`, and let `train()` resume
  from the last checkpoint with `autoresume`; the same data order brings the same batches, and the
  recorded ones (and `skip_before` batches before each) are skipped as above. For divergence that
  built up over earlier steps (PaLM, arXiv 2204.02311, rolled back and skipped batches this way).

`max_skips` bounds the skipped steps of a run (beyond it the run stops): a run that keeps producing
non-finite values has a problem that skipping does not fix.
"""

from __future__ import annotations

import json
import logging
import os

import torch
from composer.callbacks import CheckpointSaver
from composer.core import Callback, Precision, State
from composer.loggers import Logger
from composer.utils import dist

from mosaicbert.callbacks.checkpoint_on_signal import CheckpointOnSignal
from mosaicbert.errors import ConfigError, UserError

log = logging.getLogger(__name__)
ACTIONS = ("stop", "skip", "rollback")
RECORD_FILE = "nonfinite-batches.json"


class NonFiniteError(UserError):
    """A non-finite loss or gradient norm; nothing of that step was applied."""

    def __init__(self, batch: int, what: str, checkpoint: str | None, advice: str):
        self.batch, self.checkpoint = batch, checkpoint
        saved = f"the last checkpoint, {checkpoint}, is good" if checkpoint else "no checkpoint was written before it"
        super().__init__(f"non-finite {what} at step {batch}; that step was not applied and {saved}. {advice}")


class RollBack(NonFiniteError):
    """Raised in `rollback` mode; `train()` resumes from the last checkpoint and skips the recorded steps."""


class NonFiniteGuard(Callback):
    def __init__(self, run_folder: str, action: str = "stop", max_skips: int = 10, skip_before: int = 0):
        if action not in ACTIONS:
            raise ConfigError(f"callbacks.nonfinite_guard.action must be one of {', '.join(ACTIONS)}, got '{action}'.")
        if max_skips < 0 or skip_before < 0:
            raise ConfigError("callbacks.nonfinite_guard.max_skips and skip_before must be >= 0.")
        self.action, self.max_skips, self.skip_before = action, max_skips, skip_before
        self.record = os.path.join(run_folder, RECORD_FILE)
        self.skips = 0
        self._loss_finite: torch.Tensor | bool = True  # a device tensor once a loss is seen: read once per batch

    def recorded(self) -> list[int]:
        """Steps recorded by an earlier attempt of this run (rollback mode)."""
        if not os.path.isfile(self.record):
            return []
        with open(self.record, encoding="utf-8") as f:
            return json.load(f)["batches"]

    def _record(self, batch: int) -> None:
        if dist.get_global_rank() == 0:
            batches = sorted(set(self.recorded()) | {batch})
            with open(self.record + ".tmp", "w", encoding="utf-8") as f:
                json.dump({"batches": batches, "skip_before": self.skip_before}, f)
            os.replace(self.record + ".tmp", self.record)

    def fit_start(self, state: State, logger: Logger) -> None:
        self._recorded = self.recorded()  # read once; every rank acts on the flags all ranks agree on below

    def before_train_batch(self, state: State, logger: Logger) -> None:
        self._loss_finite = True  # here, so a retry after an automatic-microbatching OOM starts clean

    def after_backward(self, state: State, logger: Logger) -> None:
        # Once per microbatch, after every AFTER_LOSS callback has seen (or changed) the loss; state.loss is
        # this microbatch's (a tensor, or a dict of them).
        losses = state.loss.values() if isinstance(state.loss, dict) else \
            state.loss if isinstance(state.loss, (list, tuple)) else [state.loss]
        # On the device, and no `bool()`: reading it here would make the host wait for every microbatch's
        # backward before it can queue the next microbatch. It is read once, after the last one.
        for loss in losses:
            if isinstance(loss, torch.Tensor):
                self._loss_finite = torch.isfinite(loss.detach()).all() & self._loss_finite

    def after_train_batch(self, state: State, logger: Logger) -> None:
        batch = int(state.timestamp.batch) + 1  # the step being trained (the timestamp moves on after it)
        device = next(state.model.parameters()).device
        grads = [p.grad for p in state.model.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros((), device=device)
        loss_finite = self._loss_finite if isinstance(self._loss_finite, torch.Tensor) else torch.full((), True, device=device)
        # Under amp_fp16 an overflowing gradient is routine while the loss scale settles: GradScaler skips that
        # step and lowers the scale by itself. Only the loss is checked there.
        check_gradients = state.precision != Precision.AMP_FP16
        recorded = any(b - self.skip_before <= batch <= b for b in getattr(self, "_recorded", []))
        signal = next((cb for cb in state.callbacks if isinstance(cb, CheckpointOnSignal)), None)
        # Host values as fills (`torch.full`), not copies; the signal flag rides along, so a batch has one
        # all-reduce and one read for both callbacks.
        flags = torch.stack([~loss_finite,
                             ~torch.isfinite(norm) & check_gradients,
                             torch.full((), recorded, device=device),
                             torch.full((), 0 if signal is None else signal.received or 0, device=device)]).long()
        dist.all_reduce(flags, reduce_operation="MAX")
        bad_loss, bad_grad, skip_recorded, signum = flags.tolist()  # the batch's one read of the device
        if signal is not None:
            signal.agreed(int(state.timestamp.batch), signum)
        if skip_recorded:
            self._drop_gradients(state)
            log.warning("nonfinite_guard: skipping step %d, recorded as non-finite by an earlier attempt", batch)
            return
        if not (bad_loss or bad_grad):
            return
        logger.log_metrics({"nonfinite_guard/step": batch})
        what = "loss" if bad_loss else f"gradient norm ({float(norm)})"
        checkpoint = _last_checkpoint(state)
        skipped = self.skips + len(getattr(self, "_recorded", []))  # this attempt's, and earlier attempts' (rollback)
        if skipped >= self.max_skips and self.action != "stop":
            raise NonFiniteError(batch, what, checkpoint, f"{skipped} steps were skipped already (max_skips); "
                                 "the run keeps diverging: lower the lr or check the data, then resume.")
        if self.action == "stop":
            raise NonFiniteError(batch, what, checkpoint, "Resume with autoresume=true, perhaps with a lower lr, or "
                                 "set callbacks.nonfinite_guard.action=skip (or rollback) to go past such steps.")
        self.skips += 1
        if self.action == "skip":
            self._drop_gradients(state)
            log.warning("nonfinite_guard: non-finite %s at step %d; step skipped (%d so far)", what, batch, self.skips)
            return
        self._record(batch)
        raise RollBack(batch, what, checkpoint, "Resuming from it and skipping that step.")

    @staticmethod
    def _drop_gradients(state: State) -> None:
        for p in state.model.parameters():
            p.grad = None


def _last_checkpoint(state: State) -> str | None:
    saver = next((cb for cb in state.callbacks if isinstance(cb, CheckpointSaver)), None)
    return saver.saved_checkpoints[-1] if saver is not None and saver.saved_checkpoints else None

