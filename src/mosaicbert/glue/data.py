"""GLUE examples from the Hugging Face hub (`nyu-mll/glue`) or a local folder in the classic GLUE layout."""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mosaicbert.errors import UserError
from mosaicbert.glue.tagging import IGNORE_INDEX
from mosaicbert.glue.tasks import Task, TestSet

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


def load_test(test_set: TestSet, source: str, local_dir: str | None) -> tuple[list[str], Examples]:
    """A test split's example ids (its index column, as the leaderboard wants them back) and texts; labels are
    0, as the files hold none."""
    if source == "local":
        ids, a, b = _read_test_tsv(test_set, Path(local_dir) / test_set.tsv)
    else:
        ids, a, b = _test_from_hub(test_set)
    return ids, Examples(a, b, [0] * len(ids))


def _read_test_tsv(test_set: TestSet, path: Path) -> tuple[list[str], list[str], list[str] | None]:
    if not path.is_file():
        raise UserError(f"GLUE test file {path} is missing; --submission needs the classic download's test files "
                        f"(<data_local>/{test_set.tsv}), or data_source=hub.")
    with open(path, encoding="utf-8-sig", newline="") as f:
        numbered = [(n, row) for n, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1)
                    if any(x.strip() for x in row)]
    header = numbered[0][1] if numbered else []
    rows = [row for _, row in numbered]
    a, b = test_set.text_columns
    missing = [c for c in (test_set.index_column, a, b) if c is not None and c not in header]
    if missing:
        raise UserError(f"{path}: no column {missing[0]!r} in the header {header}; is it the test file of "
                        f"{test_set.leaderboard_file.removesuffix('.tsv')}?")
    i, ia, ib = (header.index(c) if c is not None else None for c in (test_set.index_column, a, b))
    short = next((n for n, row in numbered[1:] if len(row) < len(header)), None)
    if short is not None:
        raise UserError(f"{path}:{short}: fewer fields than the header's {len(header)}; a test example cannot be skipped.")
    body = rows[1:]
    return [row[i] for row in body], [row[ia] for row in body], [row[ib] for row in body] if ib is not None else None


# The text columns of nyu-mll/glue's configs that are no fine-tuning task here: AX (MNLI's columns) and WNLI.
HUB_TEST_ONLY_COLUMNS = {"ax": ("premise", "hypothesis"), "wnli": ("sentence1", "sentence2")}


def _test_from_hub(test_set: TestSet) -> tuple[list[str], list[str], list[str] | None]:
    from mosaicbert.glue.tasks import TASKS

    config, split = test_set.hub
    data = _hub_split(config, split)
    a, b = TASKS[config].hub_columns if config in TASKS else HUB_TEST_ONLY_COLUMNS[config]
    return [str(x) for x in data["idx"]], list(data[a]), list(data[b]) if b else None


def _hub_split(config: str, split: str):
    import datasets

    try:
        return datasets.load_dataset("nyu-mll/glue", config, split=split)
    except Exception as err:  # noqa: BLE001  (offline, auth and hub errors alike)
        raise UserError(
            f"could not load nyu-mll/glue/{config} ({split}) from the Hugging Face hub ({err.__class__.__name__}). "
            "Offline: put the classic GLUE TSV files under a folder and set data_source=local data_local=<folder>."
        ) from None


def _from_hub(task: Task, hub_split: str) -> Examples:
    data = _hub_split(task.name, hub_split)
    a, b = task.hub_columns
    return Examples(list(data[a]), list(data[b]) if b else None, [float(x) if task.num_labels == 1 else int(x) for x in data["label"]])


TRUNCATION_SIDES = ("head", "tail", "head+tail")
HEAD_SHARE = 0.25  # head+tail keeps a quarter of the text's tokens from its start, the rest from its end


class TokenizedExamples(torch.utils.data.Dataset):
    """Examples tokenized once, truncated to `max_seq_len`; padding happens per batch in `collate`. Labels are
    class ids, or floats for regression and multi-label tasks (`float_labels`).

    `truncation` says which tokens of a text too long for `max_seq_len` stay: its first (`head`, the tokenizer's
    own truncation, as GLUE runs), its last (`tail`), or a quarter from its start and the rest from its end
    (`head+tail`; Sun et al. 2019, arXiv 1905.05583, found 128 + 382 of 512 best for long reviews)."""

    def __init__(self, examples: Examples, tokenizer, max_seq_len: int, float_labels: bool, truncation: str = "head"):
        if truncation == "head":
            encoded = tokenizer(examples.text_a, examples.text_b, truncation=True, max_length=max_seq_len)
            self.input_ids = encoded["input_ids"]
            self.token_type_ids = encoded.get("token_type_ids") or [[0] * len(ids) for ids in self.input_ids]
        else:
            self.input_ids, self.token_type_ids = truncate_sides(examples, tokenizer, max_seq_len, truncation)
        self.labels = torch.tensor(examples.labels, dtype=torch.float32 if float_labels else torch.long)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> tuple[list[int], list[int], torch.Tensor]:
        return self.input_ids[i], self.token_type_ids[i], self.labels[i]


def truncate_sides(examples: Examples, tokenizer, max_seq_len: int, side: str) -> tuple[list[list[int]], list[list[int]]]:
    """(input_ids, token_type_ids) with each over-long text cut from the side `side` names. The tokenizer encodes
    in full and says which positions are special tokens and which text each token belongs to; a pair shares the
    room as the tokenizer's longest-first truncation does (the longer text gives up tokens first)."""
    encoded = tokenizer(examples.text_a, examples.text_b, truncation=False, verbose=False)
    input_ids, token_type_ids = [], []
    for i, ids in enumerate(encoded["input_ids"]):
        owners = encoded.sequence_ids(i)
        spans = [[p for p, owner in enumerate(owners) if owner == text] for text in (0, 1)]
        room = max_seq_len - (len(ids) - len(spans[0]) - len(spans[1]))
        keep = [p for p, owner in enumerate(owners) if owner is None]  # [CLS], [SEP]
        for span, size in zip(spans, _share(len(spans[0]), len(spans[1]), room)):
            head = round(size * HEAD_SHARE) if side == "head+tail" else size if side == "head" else 0
            keep += span[:head] + span[len(span) - (size - head):]
        keep.sort()
        types = encoded["token_type_ids"][i] if "token_type_ids" in encoded else [0] * len(ids)
        input_ids.append([ids[p] for p in keep])
        token_type_ids.append([types[p] for p in keep])
    return input_ids, token_type_ids


def _share(a: int, b: int, room: int) -> tuple[int, int]:
    """Tokens kept of texts of `a` and `b` tokens in `room`: all when they fit, else the shorter keeps up to
    half (rounded down) and the longer the rest, as the tokenizers' longest-first truncation shares it."""
    if a + b <= room:
        return a, b
    if a <= b:
        kept_a = min(a, room // 2)
        return kept_a, room - kept_a
    kept_b = min(b, room // 2)
    return room - kept_b, kept_b


def collate(pad_id: int):
    """Pad to the longest sequence of the batch: MosaicBERT ignores padding entirely, and BERT's
    outputs for real tokens do not depend on how much padding follows them. Per-token labels (lists, token
    classification) are padded with -100, which the loss and the scores skip."""

    def _collate(items):
        longest = max(len(ids) for ids, _, _ in items)
        input_ids = torch.full((len(items), longest), pad_id, dtype=torch.long)
        token_type_ids = torch.zeros((len(items), longest), dtype=torch.long)
        attention_mask = torch.zeros((len(items), longest), dtype=torch.long)
        per_token = isinstance(items[0][2], list)
        labels = torch.full((len(items), longest), IGNORE_INDEX, dtype=torch.long) if per_token else None
        for row, (ids, types, label) in enumerate(items):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            token_type_ids[row, : len(types)] = torch.tensor(types)
            attention_mask[row, : len(ids)] = 1
            if per_token:
                labels[row, : len(label)] = torch.tensor(label)
        if not per_token:
            labels = torch.stack([label for _, _, label in items])
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask, "labels": labels}

    return _collate


def dataloader(dataset: torch.utils.data.Dataset, batch_size: int, shuffle: bool, seed: int, pad_id: int,
               pin_memory: bool = False) -> DataLoader:
    """`pin_memory` for a GPU job: its `non_blocking` copies to the device are asynchronous only from pinned memory."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate(pad_id),
                      generator=torch.Generator().manual_seed(seed), pin_memory=pin_memory)
