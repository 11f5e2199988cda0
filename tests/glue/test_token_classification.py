"""MosaicBertForTokenClassification: unpadded inside, padded logits outside, -100 ignored, Auto classes."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from mosaicbert.model import MosaicBertForTokenClassification

from helpers.models import heavily_padded_batch, padded_reference, tiny_config


def labelled_batch(num_labels: int = 5):
    ids, mask, types = heavily_padded_batch()
    labels = torch.randint(0, num_labels, ids.shape, generator=torch.Generator().manual_seed(3))
    labels[mask == 0] = -100
    labels[:, 2::3] = -100  # later subwords of words, as the alignment leaves them
    return ids, mask, types, labels


def test_logits_and_loss_equal_a_padded_reference():
    """Real tokens' logits equal a plain padded BERT with ALiBi (written independently in the model tests),
    padding's are zero, and the loss is cross-entropy over the labelled tokens only."""
    torch.manual_seed(0)
    model = MosaicBertForTokenClassification(tiny_config(num_labels=5)).eval()
    ids, mask, types, labels = labelled_batch()
    out = model(ids, mask, types, labels=labels)
    expected = model.classifier(padded_reference(model.bert, ids, mask, types))
    real = mask.bool()
    assert out.logits.shape == (*ids.shape, 5)
    torch.testing.assert_close(out.logits[real], expected[real], rtol=1e-4, atol=1e-5)
    assert not out.logits[~real].any()
    reference = F.cross_entropy(expected.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(out.loss, reference, rtol=1e-4, atol=1e-5)


def test_a_batch_without_labelled_tokens_has_zero_loss_and_gradients_flow():
    model = MosaicBertForTokenClassification(tiny_config(num_labels=3))
    ids, mask, types, _ = labelled_batch()
    out = model(ids, mask, types, labels=torch.full_like(ids, -100))
    assert out.loss.item() == 0.0
    _, _, _, labels = labelled_batch(3)
    model(ids, mask, types, labels=labels).loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_saved_folder_names_the_token_classifier_for_transformers(tmp_path):
    from transformers import AutoModelForTokenClassification

    model = MosaicBertForTokenClassification(tiny_config(num_labels=3, id2label={0: "O", 1: "B-PER", 2: "I-PER"}))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForTokenClassification"].endswith(".MosaicBertForTokenClassification")
    assert config["id2label"] == {"0": "O", "1": "B-PER", "2": "I-PER"}
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is MosaicBertForTokenClassification
    ids, mask, types, _ = labelled_batch(3)
    torch.testing.assert_close(loaded(ids, mask, types).logits, model.eval()(ids, mask, types).logits)


def test_a_token_classification_step_reads_the_device_once():
    from helpers.sync_spy import host_syncs

    model = MosaicBertForTokenClassification(tiny_config(num_labels=5))
    ids, mask, types, labels = labelled_batch()
    with host_syncs() as seen:
        model(ids, mask, types, labels=labels).loss.backward()
    assert seen == [("tolist", "modeling_mosaicbert.py:unpad")]
