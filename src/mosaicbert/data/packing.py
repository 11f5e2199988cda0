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
    padding = mask == 0
    packed = {key: value.new_full((len(rows), seq_len), int(value[padding][0]) if bool(padding.any()) else 0)
              for key, value in batch.items()}
    packed["attention_mask"].zero_()
    for r, documents in enumerate(rows):
        start = 0
        for number, d in enumerate(documents, 1):
            end = start + lengths[d]
            for key, value in batch.items():
                packed[key][r, start:end] = number if key == "attention_mask" else value[d, : lengths[d]]
            start = end
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
    """Documents in a (packed or plain) batch: the runs of one mask value in each row."""
    from mosaicbert.model.modeling_mosaicbert import unpad

    return unpad(batch["attention_mask"]).batch_size
