"""Sequence packing: a batch's documents placed into full rows, each row filled to the sequence length.

Without packing a microbatch is a number of sequences, each padded to `max_seq_len`; with it, a
microbatch is a number of rows of `max_seq_len` token slots, filled by best fit, so a microbatch holds
a token budget rather than a sequence count. Documents keep their own masks (masking happens before
packing) and never attend to each other: the attention mask numbers a row's documents 1, 2, 3, ...
and MosaicBERT's unpadded path treats each as a sequence of its own (model/modeling_mosaicbert.py,
`sequence_starts`). Models that read the mask as 0/1 would attend across documents, so the training
config allows packing for MosaicBERT only.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

import torch


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group the indices of `lengths` into bins holding at most `capacity`: longest first, each into the
    bin with the least room left that still fits it (a new bin when none does)."""
    if any(n > capacity for n in lengths):
        raise ValueError(f"a document of {max(lengths)} tokens does not fit a row of {capacity}")
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (space left, bin), ascending
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        at = bisect.bisect_left(room, (lengths[i], -1))
        if at == len(room):
            bins.append([i])
            bisect.insort(room, (capacity - lengths[i], len(bins) - 1))
        else:
            space, b = room.pop(at)
            bins[b].append(i)
            bisect.insort(room, (space - lengths[i], b))
    return bins


def pack_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pack a padded batch (each row one document, real tokens first) into as few rows as best fit gives.

    Every `[rows, seq]` tensor is rearranged alike; `attention_mask` becomes the document number
    within the row (1, 2, ...; 0 for padding)."""
    mask = batch["attention_mask"]
    seq_len = mask.shape[1]
    if any(value.shape != mask.shape for value in batch.values()):
        raise ValueError(f"packing needs every tensor shaped like attention_mask {tuple(mask.shape)}")
    if bool((mask[:, 1:] > mask[:, :-1]).any()):
        raise ValueError("packing needs right padding (each row's real tokens first)")
    lengths = mask.sum(dim=1).tolist()
    if not any(lengths):
        raise ValueError("a batch without real tokens cannot be packed")
    rows = [[d for d in group if lengths[d] > 0] for group in best_fit_decreasing(lengths, seq_len)]
    rows = [row for row in rows if row]
    row_of, start_of, number_of = [0] * len(lengths), [0] * len(lengths), [0] * len(lengths)
    for r, documents in enumerate(rows):  # each document's row, first slot and number within the row
        start = 0
        for number, d in enumerate(documents, 1):
            row_of[d], start_of[d], number_of[d] = r, start, number
            start += lengths[d]
    # Every real token moves at once: from (its document, j) to (its document's row, the document's start + j).
    document, position = mask.nonzero(as_tuple=True)  # right padding: a document's tokens are positions 0..n-1
    row_of, start_of, number_of = (torch.tensor(values, device=mask.device) for values in (row_of, start_of, number_of))
    to_row, to_slot = row_of[document], start_of[document] + position
    # Padding keeps each tensor's own pad value, read where the shortest row is padded (0 when none is).
    shortest = min(range(len(lengths)), key=lengths.__getitem__)
    fill = {key: int(value[shortest, -1]) if lengths[shortest] < seq_len else 0 for key, value in batch.items()}
    packed = {key: value.new_full((len(rows), seq_len), fill[key]) for key, value in batch.items()}
    for key, value in batch.items():
        packed[key][to_row, to_slot] = value[document, position]
    packed["attention_mask"].zero_()
    packed["attention_mask"][to_row, to_slot] = number_of[document].to(mask.dtype)
    if "labels" in packed:  # padding is never a target
        packed["labels"][packed["attention_mask"] == 0] = -100
    return packed


class PackingCollator:
    """Collate (and mask) with `collate`, then pack the batch's documents into rows."""

    def __init__(self, collate: Callable[[list], dict[str, torch.Tensor]]):
        self.collate = collate

    def __call__(self, samples: list) -> dict[str, torch.Tensor]:
        return pack_batch(self.collate(samples))


def count_documents(batch: dict[str, torch.Tensor]) -> int:
    """Documents in a (packed or plain) batch: the runs of one non-zero mask value in each row (rows fill from
    the left, so padding never splits a document)."""
    mask = batch["attention_mask"]
    changes = torch.ones_like(mask, dtype=torch.bool)
    changes[:, 1:] = mask[:, 1:] != mask[:, :-1]
    return int(((mask != 0) & changes).sum())
