"""Sequence packing (data/packing.py) and MosaicBERT's per-document attention on packed rows."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mosaicbert.config import load_config
from mosaicbert.data.packing import best_fit_decreasing, count_documents, pack_batch
from mosaicbert.errors import ConfigError
from mosaicbert.model import MosaicBertConfig, MosaicBertForMaskedLM
from mosaicbert.train import train

from conftest import DEMO_YAML, tiny_overrides


def reference_best_fit(lengths, capacity):
    """Best fit decreasing from its definition: scan every bin, take the one with least room that fits."""
    bins, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fits = [b for b in range(len(bins)) if room[b] >= lengths[i]]
        if not fits:
            bins.append([i])
            room.append(capacity - lengths[i])
        else:
            b = min(fits, key=lambda b: (room[b], b))
            bins[b].append(i)
            room[b] -= lengths[i]
    return bins


@pytest.mark.parametrize("seed", range(5))
def test_best_fit_matches_the_definition_and_fills_rows(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(1, 40), rng.randint(60, 128)]) for _ in range(rng.randint(1, 200))]
    bins = best_fit_decreasing(lengths, 128)
    assert bins == reference_best_fit(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert len(bins) >= -(-sum(lengths) // 128)


def test_a_document_longer_than_a_row_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        best_fit_decreasing([10, 200], 128)


def padded_batch(lengths, seq_len, vocab=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = len(lengths)
    mask = (torch.arange(seq_len)[None] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(5, vocab, (rows, seq_len), generator=g) * mask
    labels = torch.where(mask.bool() & (torch.rand(rows, seq_len, generator=g) < 0.3), ids, -100)
    types = torch.randint(0, 2, (rows, seq_len), generator=g) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}


def documents_of(batch):
    """Each document's (ids, types, labels) in a packed or plain batch, as tuples, sorted."""
    found = []
    for r in range(batch["attention_mask"].shape[0]):
        mask = batch["attention_mask"][r]
        for number in mask[mask > 0].unique().tolist():
            at = mask == number
            found.append(tuple(tuple(batch[k][r][at].tolist()) for k in ("input_ids", "token_type_ids", "labels")))
    return sorted(found)


def test_packing_keeps_every_document_token_and_label():
    batch = padded_batch([5, 120, 60, 64, 3, 100, 28, 0], seq_len=128)
    packed = pack_batch(batch)
    assert packed["attention_mask"].shape[0] < 7
    assert documents_of(packed) == documents_of(batch)
    assert bool((packed["labels"][packed["attention_mask"] == 0] == -100).all())
    assert count_documents(packed) == count_documents(batch) == 7  # the empty row is no document
    assert int(packed["attention_mask"].count_nonzero()) == int(batch["attention_mask"].sum())


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_packed_documents_see_only_themselves(backend):
    """Packed rows give every document the outputs it gets alone (fp64, one document at a time)."""
    torch.manual_seed(0)
    config = MosaicBertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                              attention_backend=backend)
    model = MosaicBertForMaskedLM(config).double().eval()
    lengths = [5, 40, 17, 64, 9, 30]
    batch = padded_batch(lengths, seq_len=64)
    packed = pack_batch(batch)
    assert packed["attention_mask"].shape[0] < len(lengths)
    with torch.no_grad():
        out = model(input_ids=packed["input_ids"], attention_mask=packed["attention_mask"],
                    token_type_ids=packed["token_type_ids"]).logits
        for d, n in enumerate(lengths):
            alone = model(input_ids=batch["input_ids"][d: d + 1, :n], token_type_ids=batch["token_type_ids"][d: d + 1, :n]).logits[0]
            # where document d landed: the packed row and number holding its ids
            hits = [(r, number) for r in range(packed["input_ids"].shape[0])
                    for number in packed["attention_mask"][r].unique().tolist() if number > 0
                    and torch.equal(packed["input_ids"][r][packed["attention_mask"][r] == number], batch["input_ids"][d, :n])]
            r, number = hits[0]
            torch.testing.assert_close(out[r][packed["attention_mask"][r] == number], alone, rtol=1e-10, atol=1e-10)
        # With labels: the same loss as the unpacked batch (the same masked tokens, in another order).
        loss_packed = model(**packed).loss
        loss_plain = model(**batch).loss
    torch.testing.assert_close(loss_packed, loss_plain, rtol=1e-12, atol=1e-12)


def test_packing_needs_mosaicbert(sample_root, tmp_path):
    from conftest import REPO

    overrides = [f"data_local={sample_root}", "train_loader.packing=true"]
    with pytest.raises(ConfigError, match="train_loader.packing=true needs model.name=mosaic_bert"):
        load_config(REPO / "yamls" / "pretrain" / "hf-bert-demo.yaml", overrides)


def test_a_packed_run_counts_documents_and_tokens_like_a_plain_one(clean_env, sample_root, tmp_path):
    common = dict(max_duration="3ba", eval_interval="3ba", save_interval="3ba")
    plain = train(load_config(DEMO_YAML, tiny_overrides(sample_root, tmp_path / "plain", **common)))
    packed = train(load_config(DEMO_YAML, tiny_overrides(sample_root, tmp_path / "packed", **common,
                                                          **{"train_loader.packing": "true"})))
    # The same documents (Streaming's order, counted in documents) and so the same real tokens.
    assert packed["samples"] == plain["samples"] == 3 * 16
    assert packed["non_padding_tokens"] == plain["non_padding_tokens"]
    assert np.isfinite(packed["last_eval"]["eval/LanguageCrossEntropy"])
