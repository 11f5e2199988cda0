"""A sequence-length schedule: short sequences for most of a run, longer ones later.

BERT trained 90% of its steps at 128 tokens and the rest at 512, because attention's cost grows with the
length and most of what an encoder learns does not need long contexts; long-context encoders end with a
context-extension phase the same way. In a training config:

    max_seq_len: 512
    seq_len_schedule:
      - {max_seq_len: 128, until: 0.9dur, device_train_microbatch_size: 128}
      - {max_seq_len: 512, until: 1dur}

The loaders tokenize and mask at the longest length (`max_seq_len`). Before each batch leaves the host, it
is cut to the current phase's length: a document longer than that ends in [SEP] there (not a target), as a
tokenizer's truncation would end it, and with packing the documents are packed into rows of that length
(packing moves here from the loader's workers, which run ahead of training and cannot know the phase). Masks
are drawn per token, so a cut batch keeps the masking rate. The phase comes from the run's progress
before every batch, and never goes back to a shorter one (the length reached is checkpointed): a resumed
run continues at the length its step calls for, and under a time budget a `dur` phase is that share of the
budget. Evaluation always runs at `max_seq_len`, one measure across phases.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from composer.core import Callback, State, Time, TimeUnit
from composer.loggers import Logger

from mosaicbert.data.mlm import IGNORE_INDEX
from mosaicbert.data.packing import pack_batch

log = logging.getLogger("mosaicbert")


@dataclass(frozen=True)
class Phase:
    max_seq_len: int
    until: Time
    microbatch_size: int | None = None


class LengthSchedule(Callback):
    """Keeps the current phase (a callback) and cuts each training batch to it (the loader's batch transform)."""

    def __init__(self, phases: list[Phase], sep_token_id: int, packing: bool, run_microbatch: int | str):
        self.phases = phases
        self.sep_token_id = sep_token_id
        self.packing = packing
        self.run_microbatch = run_microbatch  # 'auto' (GPU): Composer adapts it, phases leave it alone
        self.reached = 0  # the furthest phase so far, checkpointed

    @classmethod
    def from_config(cls, config, sep_token_id: int) -> LengthSchedule:
        phases = [Phase(p.max_seq_len, Time.from_timestring(p.until), p.device_train_microbatch_size)
                  for p in config.seq_len_schedule]
        return cls(phases, sep_token_id, config.train_loader.packing, config.device_train_microbatch_size)

    @property
    def phase(self) -> Phase:
        return self.phases[self.reached]

    def phase_at(self, state: State) -> int:
        """The phase the run's progress calls for; never one before a phase already reached, so a run resumed
        with a longer budget or max_duration (a smaller share done) does not go back to shorter sequences."""
        for i, phase in enumerate(self.phases):
            done = run_fraction(state) if phase.until.unit == TimeUnit.DURATION else int(state.timestamp.batch)
            if done < phase.until.value:
                return max(i, self.reached)
        return len(self.phases) - 1

    def fit_start(self, state: State, logger: Logger) -> None:
        self._follow(state, first=True)

    def batch_end(self, state: State, logger: Logger) -> None:
        # After the time budget (first among the callbacks) has planned the run's length at this batch.
        self._follow(state)

    def after_dataloader(self, state: State, logger: Logger) -> None:
        logger.log_metrics({"data/max_seq_len": self.phase.max_seq_len})

    def _follow(self, state: State, first: bool = False) -> None:
        reached = self.phase_at(state)
        if reached != self.reached or first:
            log.info("sequence length %d from batch %d", self.phases[reached].max_seq_len, int(state.timestamp.batch))
        self.reached = reached
        if isinstance(self.run_microbatch, int):
            state.device_train_microbatch_size = self.phase.microbatch_size or self.run_microbatch

    def state_dict(self) -> dict[str, int]:
        return {"max_seq_len": self.phase.max_seq_len}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """The first phase at least as long as the checkpoint's, so a resume may also change the schedule."""
        reached = state.get("max_seq_len", 0)  # checkpoints of the first version of this callback hold {}
        self.reached = next((i for i, p in enumerate(self.phases) if p.max_seq_len >= reached), len(self.phases) - 1)

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = cut_to_length(batch, self.phase.max_seq_len, self.sep_token_id)
        return pack_batch(batch) if self.packing else batch


def run_fraction(state: State) -> float:
    """The share of the run done. A run of epochs is measured in batches: Composer's elapsed duration of an
    epoch-long run moves only when an epoch ends."""
    if state.max_duration.unit == TimeUnit.EPOCH and state.dataloader_len is not None:
        return int(state.timestamp.batch) / (int(state.dataloader_len) * state.max_duration.value)
    return state.get_elapsed_duration().value


def cut_to_length(batch: dict[str, torch.Tensor], length: int, sep_token_id: int) -> dict[str, torch.Tensor]:
    """Every `[rows, seq]` tensor cut to `length` columns; a row whose real tokens run past the cut ends in
    [SEP], which is no MLM target. Rows are right-padded, one document each."""
    mask = batch["attention_mask"]
    if mask.shape[1] <= length:
        return batch
    cut = {key: value[:, :length].clone() for key, value in batch.items()}
    runs_on = mask[:, length] != 0
    cut["input_ids"][runs_on, length - 1] = sep_token_id
    if "labels" in cut:
        cut["labels"][runs_on, length - 1] = IGNORE_INDEX
    return cut
