"""MosaicBERT model: unpadded computation against a plain padded reference, ALiBi, heads, save/load."""

from __future__ import annotations

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

from helpers.models import VOCAB, heavily_padded_batch, padded_reference, tiny_config


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
    from mosaicbert.model.composer import mlm_training_flops

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


@pytest.mark.parametrize("block", [1, 3, 16, 512])
def test_flex_query_blocks_cover_every_query_once_with_exactly_its_sequences_keys(monkeypatch, block):
    """Against brute force: each block's key range is the span of the sequences its queries belong to."""
    from mosaicbert.model import modeling_mosaicbert
    from mosaicbert.model.modeling_mosaicbert import flex_query_blocks, unpad

    monkeypatch.setattr(modeling_mosaicbert, "FLEX_EAGER_QUERY_BLOCK", block)
    _, mask, _ = heavily_padded_batch(lengths=(16, 3, 30, 1, 9, 16))  # sequences ending on block boundaries too
    unpadded = unpad(mask)
    seq, cu = unpadded.sequence_ids.tolist(), unpadded.cu_seqlens.tolist()
    covered = []
    for q_start, q_end, k_start, k_end in flex_query_blocks(unpadded):
        sequences = set(seq[q_start:q_end])
        assert (k_start, k_end) == (cu[min(sequences)], cu[max(sequences) + 1])
        covered += range(q_start, q_end)
    assert covered == list(range(len(seq)))


def test_flex_blocks_of_queries_cut_through_sequences_and_still_match_sdpa(monkeypatch):
    """On CPU, flex attends one block of queries at a time; blocks of 16 split most of these sequences."""
    from mosaicbert.model import modeling_mosaicbert

    monkeypatch.setattr(modeling_mosaicbert, "FLEX_EAGER_QUERY_BLOCK", 16)
    test_flex_backend_matches_sdpa_in_forward_and_gradients()


def training_step_peak(model, rows: int, seq: int) -> int:
    """Bytes a forward and backward of `rows x seq` tokens holds at its most, above what it started with (the
    second step: the first one's allocations are excluded). One row is half padding, so padded keys need masking."""
    from torch.profiler import ProfilerActivity, profile

    from mosaicbert.bench.measure import cpu_allocation_peak

    ids = torch.randint(5, VOCAB, (rows, seq))
    mask = torch.ones_like(ids)
    mask[0, seq // 2:] = 0

    def step():
        model(ids, mask).last_hidden_state.pow(2).mean().backward()
        model.zero_grad(set_to_none=True)

    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    return cpu_allocation_peak(prof)


@pytest.mark.slow
def test_peak_memory_per_token_stays_flat_from_128_to_2048_tokens_per_sequence():
    """8,192 tokens per batch as 64 x 128 and as 4 x 2048: training memory follows the tokens, not the batch
    times the square of the sequence (SDPA's per-sequence bias: 1.8x here) or the square of the batch's tokens
    (eager flex scoring every token against every other: 5.9 GB here)."""
    peak = {}
    for backend in ("sdpa", "flex"):
        torch.manual_seed(0)
        model = MosaicBertModel(tiny_config(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=512, attention_backend=backend))
        shapes = ((64, 128), (4, 2048)) if backend == "sdpa" else ((4, 2048),)  # eager flex is slow
        for rows, seq in shapes:
            peak[backend, seq] = training_step_peak(model, rows, seq)
    assert peak["sdpa", 2048] <= 1.5 * peak["sdpa", 128], peak
    assert peak["flex", 2048] <= 2 * peak["sdpa", 2048], peak


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


# --------------------------------------------------------------------------- independent reference


def formula_encoder(model: MosaicBertModel, ids: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
    """One sequence (no padding), fp64, written from the paper's formulas with the model's weights:
    softmax(q k^T / sqrt(d) - m_h |i - j|) v per head, m_h = 2^(-8(h+1)/n) (and, for n not a power of
    two, every other slope of the 2p-head set), post-LayerNorm residuals, GeGLU = (GELU(x Wg) * x Wv) Wo."""
    def w(module, name="weight"):
        return getattr(module, name).detach().double()

    def layer_norm(x, ln):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + ln.eps) * w(ln) + w(ln, "bias")

    def gelu(x):
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))

    config = model.config
    n = config.num_attention_heads
    p = 2 ** int(math.floor(math.log2(n)))
    slopes = [2.0 ** (-8 * (h + 1) / p) for h in range(p)] + [2.0 ** (-8 * (2 * h + 1) / (2 * p)) for h in range(n - p)]
    emb = model.embeddings
    x = layer_norm(w(emb.word_embeddings)[ids] + w(emb.token_type_embeddings)[types], emb.LayerNorm)
    length, d = len(ids), config.head_dim
    distance = torch.tensor([[abs(i - j) for j in range(length)] for i in range(length)], dtype=torch.float64)
    for layer in model.encoder.layer:
        attn, mlp = layer.attention, layer.mlp
        qkv = x @ w(attn.Wqkv).T + w(attn.Wqkv, "bias")
        heads = []
        for h in range(n):
            q, k, v = (qkv[:, t * n * d + h * d: t * n * d + (h + 1) * d] for t in range(3))
            scores = q @ k.T / math.sqrt(d) - slopes[h] * distance
            heads.append(torch.softmax(scores, dim=-1) @ v)
        x = layer_norm(torch.cat(heads, dim=1) @ w(attn.dense).T + w(attn.dense, "bias") + x, attn.LayerNorm)
        gate, value = (x @ w(mlp.gated_layers).T).split(mlp.intermediate_size, dim=1)
        x = layer_norm((gelu(gate) * value) @ w(mlp.wo).T + w(mlp.wo, "bias") + x, mlp.layernorm)
    return x


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_ragged_batch_equals_fp64_formula_one_sequence_at_a_time(backend):
    torch.manual_seed(0)
    model = MosaicBertModel(tiny_config(num_attention_heads=12, hidden_size=48, attention_backend=backend),
                            add_pooling_layer=False).eval()
    lengths = (300, 17, 1, 129, 64)  # ragged, across FlexAttention's 128-token blocks
    ids, mask, types = heavily_padded_batch(lengths=lengths, seq=300)
    out = model.double()(ids, mask, types).last_hidden_state
    for row, n in enumerate(lengths):
        expected = formula_encoder(model, ids[row, :n], types[row, :n])
        torch.testing.assert_close(out[row, :n], expected, rtol=1e-6, atol=1e-6, msg=f"sequence {row}")


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_permuting_the_other_sequences_leaves_each_output_unchanged(backend):
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(tiny_config(attention_backend=backend)).eval()
    ids, mask, types = heavily_padded_batch(lengths=(17, 3, 30, 1, 9, 25))
    order = torch.tensor([4, 2, 5, 0, 3, 1])
    logits = model(ids, mask, types).logits
    permuted = model(ids[order], mask[order], types[order]).logits
    real = mask[order].bool()
    torch.testing.assert_close(permuted[real], logits[order][real], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- dtypes, buffers, kernels' inputs


@pytest.mark.parametrize("cast", [lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.double()],
                         ids=["to_bf16", "half", "double"])
def test_alibi_slopes_stay_exact_fp32_whatever_the_module_dtype(cast):
    model = cast(MosaicBertForMaskedLM(tiny_config(num_attention_heads=12, hidden_size=48)))
    buffers = dict(model.named_buffers())
    assert buffers, "the slopes are buffers, so .to(device) moves them"
    for name, buffer in buffers.items():
        assert name.endswith("alibi_slopes") and buffer.dtype == torch.float32, (name, buffer.dtype)
        torch.testing.assert_close(buffer, alibi_slopes(12), rtol=0, atol=0)


def test_bf16_model_runs_on_cpu_with_finite_outputs():
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(tiny_config()).to(torch.bfloat16).eval()
    ids, mask, types = heavily_padded_batch()
    labels = torch.where(mask.bool(), ids, -100)
    out = model(ids, mask, types, labels=labels)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)


def packed_batch():
    """Rows of several documents (mask values 1, 2, ...), a gap inside one, and an empty row."""
    mask = torch.tensor([[1, 1, 1, 2, 2, 0, 0, 0], [1, 1, 0, 0, 1, 2, 3, 3], [0] * 8, [1] * 8])
    ids = torch.randint(5, VOCAB, mask.shape, generator=torch.Generator().manual_seed(1)) * (mask != 0)
    return ids, mask, torch.zeros_like(ids)


@pytest.mark.parametrize("batch", [heavily_padded_batch, packed_batch])
def test_unpad_matches_a_loop_over_each_row(batch):
    """Sequences are runs of one mask value in a row (padding between them closes up), checked against a loop."""
    from mosaicbert.model.modeling_mosaicbert import unpad

    _, mask, _ = batch()
    subset = torch.rand(mask.shape, generator=torch.Generator().manual_seed(2)) < 0.5
    indices, sequences, positions, subset_rows = [], [], [], []
    for r, row in enumerate(mask.tolist()):
        previous = None
        for c, value in enumerate(row):
            if value == 0:
                continue
            if value != previous:
                sequences.append([])
            previous = value
            positions.append(len(sequences[-1]))
            sequences[-1].append(r * mask.shape[1] + c)
            if subset[r, c]:
                subset_rows.append(len(indices))
            indices.append(r * mask.shape[1] + c)
    lengths = [len(s) for s in sequences]
    unpadded = unpad(mask, subset)
    assert unpadded.indices.tolist() == indices
    assert unpadded.seqlens.tolist() == lengths and unpadded.batch_size == len(lengths)
    assert unpadded.cu_seqlens.tolist() == [sum(lengths[:i]) for i in range(len(lengths) + 1)]
    assert unpadded.cu_seqlens.dtype == torch.int32 and unpadded.max_seqlen == max(lengths)
    assert unpadded.positions.tolist() == positions
    assert unpadded.sequence_ids.tolist() == [i for i, n in enumerate(lengths) for _ in range(n)]
    assert unpadded.subset_idx.tolist() == subset_rows


def test_a_training_step_reads_the_device_once_in_the_forward_and_never_after():
    """MLM forward, loss and backward, and a classifier's: the one host sync is `unpad`'s read of the
    counts that size the indices; nothing else waits for the device (tests/helpers/sync_spy.py)."""
    from mosaicbert.model.composer import ComposerMosaicBert
    from helpers.sync_spy import host_syncs

    torch.manual_seed(0)
    ids, mask, types = packed_batch()
    labels = torch.where((mask != 0) & (torch.rand(ids.shape) < 0.4), ids, -100)
    composer_model = ComposerMosaicBert(MosaicBertForMaskedLM(tiny_config()), tokenizer=None)
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}
    classifier = MosaicBertForSequenceClassification(tiny_config(num_labels=2))
    ids, mask, types = heavily_padded_batch()
    with host_syncs() as mlm:
        composer_model.loss(composer_model(batch), batch).backward()
    with host_syncs() as classification:
        classifier(ids, mask, types, labels=torch.tensor([0, 1, 1, 0, 1])).loss.backward()
    assert mlm == [("tolist", "modeling_mosaicbert.py:unpad")]
    assert classification == [("tolist", "modeling_mosaicbert.py:unpad")]


def test_the_sync_spy_sees_what_would_sync():
    """The spy above would have listed the syncs this model used to have."""
    from helpers.sync_spy import host_syncs

    x = torch.tensor([0, 1, 2, 0])
    with host_syncs() as seen:
        torch.nonzero(x), torch.bincount(x), x[x > 0], bool(x.any()), int(x.max()), x.tolist()
        x.repeat_interleave(x), torch.nonzero_static(x, size=2), x.cumsum(0)
    assert [op for op, _ in seen] == ["nonzero", "bincount", "index[bool index]", "__bool__", "__int__", "tolist",
                                      "repeat_interleave"]


def test_masked_lm_head_runs_on_masked_tokens_only():
    """No forced first token: the last layer and the head see exactly the masked tokens."""
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(tiny_config()).eval()
    ids, mask, types = heavily_padded_batch()
    labels = torch.full_like(ids, -100)
    labels[:, 2] = torch.where(mask[:, 2].bool(), ids[:, 2], -100)
    rows = []
    for module in (model.bert.encoder.layer[-1].mlp, model.cls):
        module.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape[0]))
    model(ids, mask, types, labels=labels)
    masked = int((labels != -100).sum())
    assert rows == [masked, masked]


def test_sdpa_bias_is_built_once_per_forward_for_layers_with_the_same_heads(monkeypatch):
    from mosaicbert.model import modeling_mosaicbert
    from mosaicbert.model.pruning import prune_heads

    built = []
    original = modeling_mosaicbert.MosaicBertAttention._alibi_bias

    def spy(self, seq, dtype):
        built.append(self.head_indices)
        return original(self, seq, dtype)

    monkeypatch.setattr(modeling_mosaicbert.MosaicBertAttention, "_alibi_bias", spy)
    model = MosaicBertModel(tiny_config(), add_pooling_layer=False).eval()
    ids, mask, types = heavily_padded_batch()
    model(ids, mask, types)
    assert built == [tuple(range(6))]  # three layers, one bias
    built.clear()
    prune_heads(model.encoder.layer[1].attention, [0, 2, 5])
    model(ids, mask, types)
    assert built == [tuple(range(6)), (0, 2, 5)]


@pytest.mark.parametrize("lengths", [(17, 3, 30, 1, 9), (128, 128, 5), (300, 0, 129, 127, 256), (1,), (700, 40)])
def test_document_block_mask_equals_create_block_mask_without_the_dense_mask(lengths):
    from torch.nn.attention.flex_attention import create_block_mask

    from mosaicbert.model.modeling_mosaicbert import document_block_mask, unpad

    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    unpadded = unpad(mask)
    sequence_ids, tokens = unpadded.sequence_ids, int(mask.sum())

    def same_sequence(batch, head, q_idx, kv_idx):
        return sequence_ids[q_idx] == sequence_ids[kv_idx]

    ours = document_block_mask(sequence_ids, unpadded.cu_seqlens, same_sequence)
    reference = create_block_mask(same_sequence, B=None, H=None, Q_LEN=tokens, KV_LEN=tokens, device="cpu")
    for field in ("kv_num_blocks", "full_kv_num_blocks", "q_num_blocks", "full_q_num_blocks"):
        assert torch.equal(getattr(ours, field), getattr(reference, field)), field
    for counts, indices in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")):
        for row, count in enumerate(getattr(reference, counts)[0, 0].tolist()):
            assert torch.equal(getattr(ours, indices)[0, 0, row, :count], getattr(reference, indices)[0, 0, row, :count])
    assert ours.seq_lengths == reference.seq_lengths
    assert torch.equal(ours.to_dense(), reference.to_dense())


def _ddp_ranks_see_different_lengths(rank: int, world_size: int, init_file: str, results: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = DistributedDataParallel(MosaicBertForMaskedLM(tiny_config()))  # broadcast_buffers=True, the default
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(2):
        # Rank 1's batches are much longer than rank 0's, and longer than any earlier batch.
        lengths = (9, 12) if rank == 0 else (150 + 100 * step, 40)
        ids, mask, types = heavily_padded_batch(lengths=lengths, seq=max(lengths), seed=rank * 10 + step)
        labels = torch.where(mask.bool(), ids, -100)
        optimizer.zero_grad()
        model(ids, mask, types, labels=labels).loss.backward()
        optimizer.step()
    torch.save({"params": {n: p.detach() for n, p in model.module.named_parameters()},
                "buffer_bytes": sum(b.numel() * b.element_size() for b in model.module.buffers())},
               f"{results}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_with_a_longer_batch_on_one_rank_keeps_ranks_identical(tmp_path):
    import torch.multiprocessing as mp

    results = str(tmp_path / "params")
    mp.spawn(_ddp_ranks_see_different_lengths, args=(2, str(tmp_path / "init"), results), nprocs=2)
    rank0, rank1 = torch.load(f"{results}.0"), torch.load(f"{results}.1")
    for name, param in rank0["params"].items():
        torch.testing.assert_close(rank1["params"][name], param, rtol=0, atol=0, msg=name)
    assert rank0["buffer_bytes"] == rank1["buffer_bytes"] <= 3 * 6 * 4  # only the slopes: 3 layers x 6 heads, fp32


# --------------------------------------------------------------------------- transformers conventions


def test_top_level_imports_and_auto_classes(tmp_path):
    import mosaicbert
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

    assert mosaicbert.MosaicBertForMaskedLM is MosaicBertForMaskedLM
    assert isinstance(AutoConfig.for_model("mosaic_bert"), MosaicBertConfig)
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    ids, mask, types = heavily_padded_batch()
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is MosaicBertForMaskedLM
    torch.testing.assert_close(loaded(ids, mask, types).logits, model(ids, mask, types).logits, rtol=0, atol=0)
    assert type(AutoModel.from_pretrained(tmp_path)) is MosaicBertModel
    assert type(AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=3)) is MosaicBertForSequenceClassification


def test_trainer_and_pipeline_keyword_arguments():
    torch.manual_seed(0)
    config = tiny_config()
    model = MosaicBertForMaskedLM(config).eval()
    ids, mask, types = heavily_padded_batch()
    labels = torch.where(mask.bool() & (torch.rand(ids.shape) < 0.3), ids, -100)

    out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels, return_dict=True,
                output_hidden_states=True)
    as_tuple = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.loss)
    torch.testing.assert_close(as_tuple[1], out.logits)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    real = mask.bool()
    full = model.bert(ids, mask, types).last_hidden_state
    torch.testing.assert_close(out.hidden_states[-1][real], full[real], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.logits, model.cls(full[labels != -100]), rtol=1e-5, atol=1e-5)
    assert (out.hidden_states[0][~real] == 0).all()

    classifier = MosaicBertForSequenceClassification(tiny_config(num_labels=2)).eval()
    states = classifier(ids, mask, types, output_hidden_states=True).hidden_states
    assert len(states) == config.num_hidden_layers + 1 and states[-1].shape == (*ids.shape, 48)
    with pytest.raises(ValueError, match="does not return attention weights"):
        model(ids, mask, output_attentions=True)
    with pytest.raises(TypeError, match="unexpected keyword"):
        model(ids, mask, head_mask=None)


@pytest.mark.parametrize("head", ["mlm", "classification"])
def test_transformers_trainer_trains_both_heads(tmp_path, head):
    """A real transformers.Trainer run with gradient accumulation: Trainer adds `num_items_in_batch` to
    the inputs of models whose forward takes **kwargs unless `accepts_loss_kwargs` says no."""
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(tiny_config()) if head == "mlm" else MosaicBertForSequenceClassification(tiny_config(num_labels=2))
    ids, mask, types = heavily_padded_batch(lengths=(17, 3, 30, 1, 9, 12, 20, 5))
    labels = torch.where(mask.bool() & (torch.rand(ids.shape) < 0.3), ids, -100) if head == "mlm" else torch.arange(8) % 2
    data = [{"input_ids": ids[i], "attention_mask": mask[i], "token_type_ids": types[i], "labels": labels[i]} for i in range(8)]
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=2,
                             use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True)
    before = [p.detach().clone() for p in model.parameters()]
    result = Trainer(model=model, args=args, train_dataset=data).train()
    assert result.global_step == 2 and math.isfinite(result.training_loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_recipe_model_config_keys_are_checked_by_name():
    from mosaicbert.errors import ConfigError
    from mosaicbert.model.composer import build_mosaic_bert

    tokenizer = type("Tok", (), {"pad_token_id": 0, "__len__": lambda self: 90})()
    with pytest.raises(ConfigError, match="alibi_starting_size is no longer a setting"):
        build_mosaic_bert(tokenizer, {"alibi_starting_size": 512})
    with pytest.raises(ConfigError, match="has no field 'hiden_size'. Did you mean 'hidden_size'"):
        build_mosaic_bert(tokenizer, {"hiden_size": 64})
    # An original-release config with the key still loads.
    assert MosaicBertConfig(alibi_starting_size=512, num_hidden_layers=1).num_hidden_layers == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_dropout_keeps_one_minus_p_and_scales_like_torch(dtype):
    from scipy.stats import binomtest

    from mosaicbert.model.modeling_mosaicbert import Dropout

    torch.manual_seed(0)
    dropout = Dropout(0.1).train()
    x = torch.ones(400, 500, dtype=dtype, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    assert binomtest(int(kept.sum()), kept.numel(), 0.9).pvalue > 1e-4
    scale = torch.tensor(1 / 0.9, dtype=dtype)  # what nn.Dropout gives in this dtype
    assert bool((y[kept] == scale).all()) and y.dtype == dtype
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.to(dtype) * scale)
    assert torch.equal(dropout.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert not bool(Dropout(1.0).train()(x).any())
