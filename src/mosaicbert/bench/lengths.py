"""Sequence-length distributions for the benchmark, and the batches drawn from them.

A training batch's padding depends on how long its documents are once cut at the sequence length.
Uniform lengths (or none) misstate it, so the benchmark draws lengths from a real distribution:

- `corpus`: the documents of an MDS text split tokenized with the tokenizer stored beside it (the
  offline sample corpus by default), plus [CLS] and [SEP], cut at the sequence length;
- `c4`: a stored histogram of C4 `en` document lengths (benchmarks/profiles/c4_en.csv, written by
  benchmarks/length_profile.py from `make c4-shards` output), cut likewise;
- `full`: every sequence full length (0% padding).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mosaicbert.data.mlm import MLMCollator
from mosaicbert.errors import UserError

# bert-base-uncased's special ids, so the batches look like the real ones to every model.
PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103
FIRST_ORDINARY_ID = 999  # ids below are [unused] and special tokens


@dataclass
class LengthProfile:
    """Token counts of documents (special tokens included), not yet cut at a sequence length."""

    name: str
    source: str
    lengths: np.ndarray  # one entry per document; a histogram row contributes `count` copies

    def cut(self, seq_len: int) -> np.ndarray:
        return np.minimum(self.lengths, seq_len)

    def padding_fraction(self, seq_len: int) -> float:
        return float(1 - self.cut(seq_len).mean() / seq_len)


def full_profile(seq_len: int) -> LengthProfile:
    return LengthProfile("full", "every sequence full length", np.array([seq_len]))


def read_histogram(path: Path) -> LengthProfile:
    """A CSV of `tokens,documents` rows; `# source:` comment lines say where it came from."""
    if not path.is_file():
        raise UserError(f"no length profile at {path}. Write one from MDS text shards with "
                        "`python benchmarks/length_profile.py <data root> --split <split> --out <csv>` "
                        "(for C4: `make c4-shards` first), or pick --lengths corpus or --lengths full")
    lines = path.read_text().splitlines()
    source = " ".join(line.removeprefix("# source:").strip() for line in lines if line.startswith("# source:"))
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    lengths = np.repeat([int(r["tokens"]) for r in rows], [int(r["documents"]) for r in rows])
    return LengthProfile(path.stem, source or str(path), lengths)


def write_histogram(profile: LengthProfile, path: Path) -> None:
    """The profile as `tokens,documents` rows under a `# source:` line (read back by `read_histogram`)."""
    tokens, documents = np.unique(profile.lengths, return_counts=True)
    lines = [f"# source: {profile.source}", "tokens,documents"]
    lines += [f"{t},{d}" for t, d in zip(tokens.tolist(), documents.tolist())]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text("\n".join(lines) + "\n")
    partial.replace(path)


def tokenized_profile(data_root: Path, split: str, tokenizer_name: str | None = None,
                      max_documents: int = 20_000) -> LengthProfile:
    """Tokenize (up to `max_documents` of) an MDS text split: with `tokenizer_name` (a hub name or folder),
    else with the tokenizer stored beside the split (`<data root>/tokenizer`, as `make sample-shards` writes)."""
    from streaming import StreamingDataset
    from transformers import AutoTokenizer

    folder = Path(data_root) / split
    if not (folder / "index.json").is_file():
        raise UserError(f"no MDS text split at {folder} (index.json missing); build it with `make sample-shards` "
                        "(the offline corpus) or `make c4-shards`, or pick --lengths full")
    if tokenizer_name is None:
        if not (Path(data_root) / "tokenizer").is_dir():
            raise UserError(f"no tokenizer stored at {Path(data_root) / 'tokenizer'}; name one (e.g. bert-base-uncased)")
        tokenizer_name = str(Path(data_root) / "tokenizer")
    info_file = folder / "mosaicbert_prep.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    dataset = StreamingDataset(local=str(folder), shuffle=False, batch_size=1)
    texts = [dataset[i]["text"] for i in range(min(len(dataset), max_documents))]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
    counts = [len(ids) + 2 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]  # + [CLS], [SEP]
    shown = Path(*folder.resolve().parts[-3:])  # e.g. data/sample/train: no machine's absolute path in results
    tokenizer_shown = Path(*Path(tokenizer_name).resolve().parts[-3:]) if Path(tokenizer_name).is_dir() else tokenizer_name
    source = (f"the first {len(texts)} documents of {shown} ({info.get('source', 'MDS text')}), "
              f"tokenizer {tokenizer_shown}, plus [CLS] and [SEP]")
    return LengthProfile(split, source, np.array(counts))


def make_batches(profile: LengthProfile, num_batches: int, batch_size: int, seq_len: int, vocab_size: int,
                 mlm_probability: float, seed: int, zipf: float | None = None) -> list[dict[str, torch.Tensor]]:
    """`num_batches` padded batches: lengths drawn from the profile, [CLS] ids [SEP], random ordinary ids,
    masked by the training collator (80/10/10 of `mlm_probability` of the real, non-special tokens). The ids are
    uniform, or with `zipf` follow Zipf's law with that exponent, as words do, so a model has something to
    learn (its loss falls) without any data."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    if vocab_size <= MASK + 1:
        raise UserError(f"vocabulary of {vocab_size} tokens: the batches use BERT's special ids up to {MASK}")
    low = FIRST_ORDINARY_ID if vocab_size > 2 * FIRST_ORDINARY_ID else MASK + 1  # small test vocabularies
    mask_seeds = iter(rng.integers(2**62, size=num_batches * batch_size).tolist())
    collator = MLMCollator(mlm_probability, MASK, [PAD, UNK, CLS, SEP, MASK], vocab_size)
    batches = []
    for _ in range(num_batches):
        lengths = torch.from_numpy(rng.choice(profile.cut(seq_len), size=batch_size))
        positions = torch.arange(seq_len)[None, :]
        attention_mask = (positions < lengths[:, None]).long()
        ids = ordinary_ids(low, min(vocab_size, 30522), (batch_size, seq_len), generator, zipf)
        ids[:, 0] = CLS
        ids[torch.arange(batch_size), lengths - 1] = SEP
        ids = torch.where(attention_mask.bool(), ids, PAD)
        input_ids, labels = collator.mask(ids, attention_mask,
                                          [torch.Generator().manual_seed(next(mask_seeds)) for _ in range(batch_size)])
        batches.append(dict(input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=torch.zeros_like(input_ids), labels=labels))
    return batches


def ordinary_ids(low: int, high: int, shape: tuple[int, int], generator: torch.Generator,
                 zipf: float | None) -> torch.Tensor:
    if zipf is None:
        return torch.randint(low, high, shape, generator=generator)
    weights = torch.arange(1, high - low + 1, dtype=torch.float64) ** -zipf
    draws = torch.multinomial(weights, shape[0] * shape[1], replacement=True, generator=generator)
    return (low + draws).view(shape)
