"""MosaicBERT model: unpadded computation against a plain padded reference, ALiBi, heads, save/load."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from mosaicbert.model import (
    MosaicBertConfig,
    MosaicBertForMaskedLM,
    MosaicBertForSequenceClassification,
    MosaicBertModel,
)
from mosaicbert.model.modeling_mosaicbert import alibi_slopes

VOCAB = 96


def tiny_config(**overrides) -> MosaicBertConfig:
    values = dict(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                  intermediate_size=80, hidden_dropout_prob=0.0, alibi_starting_size=64, attention_backend="sdpa")
    values.update(overrides)
    return MosaicBertConfig(**values)


def heavily_padded_batch(lengths=(17, 3, 30, 1, 9), seq=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (len(lengths), seq), generator=g)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    ids[mask == 0] = 0
    types = torch.randint(0, 2, ids.shape, generator=g) * mask
    return ids, mask, types


def padded_reference(bert: MosaicBertModel, ids, mask, types) -> torch.Tensor:
    """A plain padded BERT with ALiBi, written independently: every position goes through every
    layer, attention is an explicit softmax over a [batch, heads, seq, seq] bias."""
    x = bert.embeddings(ids, types)
    batch, seq = ids.shape
    positions = torch.arange(seq)
    distance = (positions[None, :] - positions[:, None]).abs().float()
    for layer in bert.encoder.layer:
        attn = layer.attention
        qkv = attn.Wqkv(x).view(batch, seq, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        bias = -attn.alibi_slopes[:, None, None] * distance
        bias = bias[None].masked_fill(mask[:, None, None, :] == 0, -1e30)
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim) + bias, dim=-1)
        context = (probs @ v).transpose(1, 2).reshape(batch, seq, -1)
        x = attn.LayerNorm(attn.dense(context) + x)
        x = layer.mlp(x)
    return x


def test_unpadded_forward_and_gradients_equal_padded_reference():
    torch.manual_seed(0)
    model = MosaicBertModel(tiny_config(), add_pooling_layer=False)
    ids, mask, types = heavily_padded_batch()
    real = mask.bool()
    weights = torch.randn(*ids.shape, 48)

    ours = model(ids, mask, types).last_hidden_state
    (ours * weights)[real].sum().backward()
    our_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    reference = padded_reference(model, ids, mask, types)
    (reference * weights)[real].sum().backward()

    torch.testing.assert_close(ours[real], reference[real], rtol=1e-5, atol=1e-5)
    assert (ours[~real] == 0).all()  # padding rows are zeros, never NaN
    for name, param in model.named_parameters():
        torch.testing.assert_close(our_grads[name], param.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_padding_ids_and_types_do_not_change_real_tokens():
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(tiny_config()).eval()
    ids, mask, types = heavily_padded_batch()
    other_ids = torch.where(mask.bool(), ids, torch.randint(5, VOCAB, ids.shape))
    other_types = torch.where(mask.bool(), types, 1)
    real = mask.bool()
    a = model(ids, mask, types).logits
    b = model(other_ids, mask, other_types).logits
    torch.testing.assert_close(a[real], b[real], rtol=0, atol=0)


def test_a_sequence_of_padding_only_gives_no_nan():
    model = MosaicBertModel(tiny_config(), add_pooling_layer=False).eval()
    ids, mask, types = heavily_padded_batch(lengths=(5, 0, 3))
    out = model(ids, mask, types).last_hidden_state
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "heads, expected",
    [
        (8, [2 ** -(i + 1) for i in range(8)]),
        (16, [2 ** (-0.5 * k) for k in range(1, 17)]),
        (12, [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625,
              2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5]),
    ],
)
def test_alibi_slopes(heads, expected):
    torch.testing.assert_close(alibi_slopes(heads), torch.tensor(expected), rtol=1e-6, atol=0)


def test_alibi_slopes_are_buffers_not_state():
    model = MosaicBertModel(tiny_config())
    assert not any("alibi" in key for key in model.state_dict())
    slopes = model.encoder.layer[0].attention.alibi_slopes
    assert slopes.shape == (6,)
    assert "encoder.layer.0.attention.alibi_slopes" in dict(model.named_buffers())
    if torch.cuda.is_available():  # buffers move with the module
        assert model.to("cuda").encoder.layer[0].attention.alibi_slopes.is_cuda


def test_sparse_head_loss_equals_dense_logits_masked_afterwards():
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(tiny_config()).eval()
    ids, mask, types = heavily_padded_batch()
    labels = torch.full_like(ids, -100)
    chosen = mask.bool() & (torch.rand(ids.shape) < 0.3)
    labels[chosen] = ids[chosen]
    sparse = model(ids, mask, types, labels=labels)
    dense_logits = model(ids, mask, types).logits
    assert sparse.logits.shape == (int(chosen.sum()), VOCAB)
    torch.testing.assert_close(sparse.logits, dense_logits[chosen], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sparse.loss, F.cross_entropy(dense_logits[chosen], ids[chosen]), rtol=1e-5, atol=1e-6)
    assert torch.equal(sparse.labels, ids[chosen])


def test_sparse_head_gradients_equal_dense():
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(tiny_config())
    ids, mask, types = heavily_padded_batch()
    labels = torch.full_like(ids, -100)
    chosen = mask.bool() & (torch.rand(ids.shape) < 0.3)
    labels[chosen] = ids[chosen]
    model(ids, mask, types, labels=labels).loss.backward()
    sparse = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    F.cross_entropy(model(ids, mask, types).logits[chosen], ids[chosen]).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(sparse[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_base_parameter_count_is_about_137m():
    with torch.device("meta"):
        model = MosaicBertForMaskedLM(MosaicBertConfig())
    count = sum(p.numel() for p in model.parameters())  # tied decoder weight counted once
    assert 136.5e6 < count < 138e6
    assert model.cls.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model.config.vocab_size == 30528


def test_sequences_longer_than_prepared_alibi_size(caplog):
    torch.manual_seed(0)
    short = MosaicBertModel(tiny_config(alibi_starting_size=8), add_pooling_layer=False).eval()
    long = MosaicBertModel(tiny_config(alibi_starting_size=64), add_pooling_layer=False).eval()
    long.load_state_dict(short.state_dict())
    ids, mask, types = heavily_padded_batch()
    with caplog.at_level(logging.WARNING):
        grown = short(ids, mask, types).last_hidden_state
    assert "exceeds the prepared ALiBi size 8" in caplog.text
    assert short.encoder.alibi_distance_table.shape[0] == 30
    torch.testing.assert_close(grown, long(ids, mask, types).last_hidden_state)


def test_save_and_reload_round_trip(tmp_path):
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    loaded = MosaicBertForMaskedLM.from_pretrained(tmp_path).eval()
    ids, mask, types = heavily_padded_batch()
    torch.testing.assert_close(loaded(ids, mask, types).logits, model(ids, mask, types).logits, rtol=0, atol=0)
    assert loaded.cls.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    torch.testing.assert_close(loaded.bert.encoder.layer[0].attention.alibi_slopes, alibi_slopes(6))


def test_classification_reads_the_first_token_and_regression_uses_mse():
    torch.manual_seed(0)
    config = tiny_config(num_labels=3)
    model = MosaicBertForSequenceClassification(config).eval()
    ids, mask, types = heavily_padded_batch(lengths=(17, 3, 30, 1, 9))
    labels = torch.tensor([0, 1, 2, 1, 0])
    out = model(ids, mask, types, labels=labels)
    assert out.logits.shape == (5, 3)
    full = model.bert(ids, mask, types).last_hidden_state[:, 0]  # without the last-layer subset
    expected = model.classifier(model.bert.pooler(full))
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, F.cross_entropy(expected, labels))

    regression = MosaicBertForSequenceClassification(tiny_config(num_labels=1)).eval()
    scores = torch.tensor([0.5, 4.0, 2.5, 1.0, 3.0])
    out = regression(ids, mask, types, labels=scores)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), scores))


def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    model = MosaicBertModel(tiny_config(attention_probs_dropout_prob=0.5), add_pooling_layer=False)
    ids, mask, types = heavily_padded_batch()
    model.eval()
    a, b = model(ids, mask, types).last_hidden_state, model(ids, mask, types).last_hidden_state
    assert torch.equal(a, b)
    model.train()
    c = model(ids, mask, types).last_hidden_state
    assert not torch.allclose(a, c)


def test_explicit_flash_backend_without_a_gpu_fails_clearly():
    model = MosaicBertModel(tiny_config(attention_backend="flash_attn"))
    ids, mask, types = heavily_padded_batch()
    with pytest.raises(RuntimeError, match="attention_backend=flash_attn cannot run"):
        model(ids, mask, types)


def test_config_rejects_unknown_backend():
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        MosaicBertConfig(attention_backend="triton")


def test_flop_count_matches_parameter_arithmetic_when_every_token_is_computed():
    from mosaicbert.model.mosaic_bert import mlm_training_flops

    config = tiny_config()
    model = MosaicBertForMaskedLM(config)
    batch, seq = 4, 16
    mask = torch.ones(batch, seq, dtype=torch.long)
    labels = torch.ones(batch, seq, dtype=torch.long)  # every token masked: nothing is skipped
    tokens = batch * seq
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = 2 * 2 * batch * seq**2 * config.hidden_size * config.num_hidden_layers
    assert mlm_training_flops(model, mask, labels) == 3 * (2 * tokens * matmul_weights + attention)
    # Padding and unmasked tokens are not counted.
    mask[:, 8:] = 0
    labels[:, 4:] = -100
    assert mlm_training_flops(model, mask, labels) < mlm_training_flops(model, torch.ones_like(mask), torch.ones_like(labels)) / 2


def test_flex_backend_matches_sdpa_in_forward_and_gradients():
    torch.manual_seed(0)
    sdpa = MosaicBertForMaskedLM(tiny_config())
    flex = MosaicBertForMaskedLM(tiny_config(attention_backend="flex"))
    flex.load_state_dict(sdpa.state_dict())
    ids, mask, types = heavily_padded_batch()
    labels = torch.where(mask.bool() & (torch.rand(ids.shape) < 0.3), ids, -100)
    outputs = []
    for model in (sdpa, flex):
        out = model(ids, mask, types, labels=labels)
        out.loss.backward()
        outputs.append((out.logits, {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(outputs[1][0], outputs[0][0], rtol=1e-5, atol=1e-5)
    for name, grad in outputs[0][1].items():
        torch.testing.assert_close(outputs[1][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)
