from __future__ import annotations

import torch

from mosaicbert.data.mlm import IGNORE_INDEX, MLMCollator

PAD, UNK, CLS, SEP, MASK = range(5)
VOCAB = 1000


def make_batch(batch: int = 64, seq: int = 128, real: int = 100):
    torch.manual_seed(0)
    ids = torch.randint(5, VOCAB, (batch, seq))
    ids[:, 0] = CLS
    ids[:, real - 1] = SEP
    ids[:, real:] = PAD
    mask = torch.zeros(batch, seq, dtype=torch.long)
    mask[:, :real] = 1
    return ids, mask


def test_masking_statistics():
    collator = MLMCollator(0.3, MASK, [PAD, UNK, CLS, SEP, MASK], VOCAB)
    ids, mask = make_batch()
    torch.manual_seed(1)
    masked, labels = collator.mask(ids, mask)
    selected = labels != IGNORE_INDEX
    candidates = 64 * 98  # real tokens minus [CLS] and [SEP]
    rate = selected.sum().item() / candidates
    assert abs(rate - 0.3) < 0.02
    # Labels hold the original ids exactly where selected.
    assert torch.equal(labels[selected], ids[selected])
    # 80 / 10 / 10 among selected tokens.
    n = selected.sum().item()
    to_mask = (masked[selected] == MASK).float().mean().item()
    unchanged = (masked[selected] == ids[selected]).float().mean().item()
    assert abs(to_mask - 0.8) < 0.03
    assert abs(unchanged - 0.1) < 0.03  # a random pick equal to the original is rare (1/995)
    assert abs(1 - to_mask - unchanged - 0.1) < 0.03 and n > 1000
    # Unselected positions are untouched.
    assert torch.equal(masked[~selected], ids[~selected])


def test_special_tokens_and_padding_are_never_selected_or_inserted():
    collator = MLMCollator(0.9, MASK, [PAD, UNK, CLS, SEP, MASK], VOCAB)
    ids, mask = make_batch(real=60)
    for seed in range(5):
        torch.manual_seed(seed)
        masked, labels = collator.mask(ids, mask)
        assert (labels[:, 0] == IGNORE_INDEX).all() and (labels[:, 59] == IGNORE_INDEX).all()
        assert (labels[:, 60:] == IGNORE_INDEX).all()
        assert (masked[:, 60:] == PAD).all()
        random_replacements = masked[(labels != IGNORE_INDEX) & (masked != MASK) & (masked != ids)]
        assert not torch.isin(random_replacements, torch.tensor([PAD, UNK, CLS, SEP])).any()


def test_collator_stacks_and_draws_fresh_masks():
    collator = MLMCollator(0.15, MASK, [PAD, UNK, CLS, SEP, MASK], VOCAB)
    ids, mask = make_batch(batch=4)
    samples = [{"input_ids": ids[i], "attention_mask": mask[i], "token_type_ids": torch.zeros_like(ids[i])} for i in range(4)]
    first, second = collator(samples), collator(samples)
    assert set(first) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert first["input_ids"].shape == (4, 128)
    assert not torch.equal(first["labels"], second["labels"])


def test_seeded_masks_do_not_depend_on_batch_composition_or_global_rng():
    collator = MLMCollator(0.3, MASK, [PAD, UNK, CLS, SEP, MASK], VOCAB)
    ids, mask = make_batch(batch=6)
    samples = [{"input_ids": ids[i], "attention_mask": mask[i], "mask_seed": 1000 + i} for i in range(6)]
    torch.manual_seed(0)
    together = collator(samples)
    torch.manual_seed(123)
    alone = collator(samples[3:5])
    assert torch.equal(together["labels"][3:5], alone["labels"])
    assert torch.equal(together["input_ids"][3:5], alone["input_ids"])
    assert "mask_seed" not in together
    assert not torch.equal(together["labels"][0], together["labels"][1])
