"""GLUE examples from the Hugging Face hub (`nyu-mll/glue`) or a local folder in the classic GLUE layout."""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mosaicbert.errors import UserError
from mosaicbert.glue.tasks import Task

csv.field_size_limit(sys.maxsize)  # some GLUE sentences are long


@dataclass
class Examples:
    text_a: list[str]
    text_b: list[str] | None
    labels: list[float]  # class ids, or scores for regression

    def __len__(self) -> int:
        return len(self.labels)


def load_examples(task: Task, split: str, source: str, local_dir: str | None) -> Examples:
    """`split` is "train" or an evaluator name from `task.eval_splits` ("dev", "matched", "mismatched")."""
    if source == "local":
        filename = "train.tsv" if split == "train" else task.eval_splits[split][1]
        return read_tsv(task, Path(local_dir) / task.folder / filename)
    hub_split = "train" if split == "train" else task.eval_splits[split][0]
    return _from_hub(task, hub_split)


def read_tsv(task: Task, path: Path) -> Examples:
    if not path.is_file():
        raise UserError(
            f"GLUE file {path} is missing. Expected the classic layout <data_local>/{task.folder}/"
            f"{{train.tsv,{','.join(f for _, f in task.eval_splits.values())}}}; or set data_source=hub."
        )
    layout = task.tsv
    # utf-8-sig: MRPC's files start with a byte-order mark, which would otherwise stick to "Quality".
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise UserError(f"{path} is empty.")
    if layout.header:
        header, rows = rows[0], rows[1:]
        missing = [c for c in (layout.text_a, layout.text_b, layout.label) if c is not None and c not in header]
        if missing:
            raise UserError(f"{path}: no column {missing[0]!r} in the header {header}; is this {task.folder}'s file?")
        column = {name: header.index(name) for name in header}
        a, b, y = column[layout.text_a], column.get(layout.text_b), column[layout.label]
    else:
        a, b, y = layout.text_a, layout.text_b, layout.label
    width = max(i for i in (a, b, y) if i is not None) + 1
    text_a, text_b, labels = [], [], []
    malformed = 0
    for line, row in enumerate(rows, start=2 if layout.header else 1):
        if not any(field.strip() for field in row):  # blank lines (a trailing newline) are not malformed rows
            continue
        if len(row) < width:
            # QQP holds some rows with missing fields: drop them rather than the whole job.
            malformed += 1
            continue
        text_a.append(row[a])
        if b is not None:
            text_b.append(row[b])
        labels.append(_label(task, row[y], path, line))
    if malformed:
        print(f"skipped {malformed} malformed rows in {path} (fewer than {width} fields)", flush=True)
    if not labels:
        raise UserError(f"{path} has no rows with the {width} fields {task.folder} needs; is it {task.folder}'s file?")
    return Examples(text_a, text_b if b is not None else None, labels)


def _label(task: Task, raw: str, path: Path, line: int) -> float:
    names = task.tsv.label_names
    if names:
        if raw not in names:
            raise UserError(f"{path}:{line}: label {raw!r} is not one of {', '.join(names)}.")
        return names.index(raw)
    try:
        return float(raw) if task.num_labels == 1 else int(raw)
    except ValueError:
        raise UserError(f"{path}:{line}: label {raw!r} is not a number.") from None


def _from_hub(task: Task, hub_split: str) -> Examples:
    import datasets

    try:
        data = datasets.load_dataset("nyu-mll/glue", task.name, split=hub_split)
    except Exception as err:  # noqa: BLE001  (offline, auth and hub errors alike)
        raise UserError(
            f"could not load nyu-mll/glue/{task.name} from the Hugging Face hub ({err.__class__.__name__}). "
            "Offline: put the classic GLUE TSV files under a folder and set data_source=local data_local=<folder>."
        ) from None
    a, b = task.hub_columns
    return Examples(list(data[a]), list(data[b]) if b else None, [float(x) if task.num_labels == 1 else int(x) for x in data["label"]])


class TokenizedExamples(torch.utils.data.Dataset):
    """Examples tokenized once, truncated to `max_seq_len`; padding happens per batch in `collate`."""

    def __init__(self, examples: Examples, tokenizer, max_seq_len: int, regression: bool):
        encoded = tokenizer(examples.text_a, examples.text_b, truncation=True, max_length=max_seq_len)
        self.input_ids = encoded["input_ids"]
        self.token_type_ids = encoded.get("token_type_ids") or [[0] * len(ids) for ids in self.input_ids]
        self.labels = torch.tensor(examples.labels, dtype=torch.float32 if regression else torch.long)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> tuple[list[int], list[int], torch.Tensor]:
        return self.input_ids[i], self.token_type_ids[i], self.labels[i]


def collate(pad_id: int):
    """Pad to the longest sequence of the batch: MosaicBERT ignores padding entirely, and BERT's
    outputs for real tokens do not depend on how much padding follows them."""

    def _collate(items):
        longest = max(len(ids) for ids, _, _ in items)
        input_ids = torch.full((len(items), longest), pad_id, dtype=torch.long)
        token_type_ids = torch.zeros((len(items), longest), dtype=torch.long)
        attention_mask = torch.zeros((len(items), longest), dtype=torch.long)
        for row, (ids, types, _) in enumerate(items):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            token_type_ids[row, : len(types)] = torch.tensor(types)
            attention_mask[row, : len(ids)] = 1
        labels = torch.stack([label for _, _, label in items])
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask, "labels": labels}

    return _collate


def dataloader(dataset: TokenizedExamples, batch_size: int, shuffle: bool, seed: int, pad_id: int,
               pin_memory: bool = False) -> DataLoader:
    """`pin_memory` for a GPU job: its `non_blocking` copies to the device are asynchronous only from pinned memory."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate(pad_id),
                      generator=torch.Generator().manual_seed(seed), pin_memory=pin_memory)
