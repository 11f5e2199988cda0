"""GPU-only checks: FlashAttention-2 varlen and FlexAttention against the SDPA path in bf16.
Skipped without CUDA (and, for the FlashAttention tests, without flash-attn)."""

from __future__ import annotations

import pytest
import torch

from mosaicbert.model import MosaicBertConfig, MosaicBertForMaskedLM, MosaicBertModel
from mosaicbert.model import modeling_mosaicbert

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
needs_flash = pytest.mark.skipif(modeling_mosaicbert.flash_attn_varlen_qkvpacked_func is None,
                                 reason="needs flash-attn (pip install '.[gpu]')")


def config(backend: str) -> MosaicBertConfig:
    return MosaicBertConfig(vocab_size=1024, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                            intermediate_size=512, hidden_dropout_prob=0.0, attention_backend=backend)


def padded_batch(device="cuda"):
    g = torch.Generator().manual_seed(0)
    lengths = [128, 5, 77, 1, 64, 100, 33, 2]
    ids = torch.randint(5, 1024, (len(lengths), 128), generator=g)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    labels = torch.full_like(ids, -100)
    chosen = mask.bool() & (torch.rand(ids.shape, generator=g) < 0.3)
    labels[chosen] = ids[chosen]
    return ids.to(device), mask.to(device), labels.to(device)


def compare_with_sdpa_in_bf16(backend: str) -> None:
    """Loss, sparse logits and every gradient of `backend` against SDPA, under bf16 autocast."""
    torch.manual_seed(0)
    candidate = MosaicBertForMaskedLM(config(backend)).cuda()
    sdpa = MosaicBertForMaskedLM(config("sdpa")).cuda()
    sdpa.load_state_dict(candidate.state_dict())
    ids, mask, labels = padded_batch()
    results = []
    for model in (candidate, sdpa):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(ids, mask, labels=labels)
        out.loss.backward()
        results.append((out.logits.float(), out.loss.float(), {n: p.grad.float() for n, p in model.named_parameters()}))
    (logits, loss, grads), (ref_logits, ref_loss, ref_grads) = results
    torch.testing.assert_close(logits, ref_logits, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-2, atol=1e-2)
    for name in grads:
        scale = ref_grads[name].abs().max().clamp_min(1e-6)
        assert (grads[name] - ref_grads[name]).abs().max() / scale < 5e-2, name


@needs_flash
def test_flash_matches_sdpa_in_bf16_forward_and_backward():
    compare_with_sdpa_in_bf16("flash_attn")


def test_flex_matches_sdpa_in_bf16_forward_and_backward():
    compare_with_sdpa_in_bf16("flex")


@needs_flash
def test_flash_hidden_states_match_sdpa_in_bf16():
    torch.manual_seed(0)
    flash = MosaicBertModel(config("flash_attn"), add_pooling_layer=False).cuda().to(torch.bfloat16).eval()
    sdpa = MosaicBertModel(config("sdpa"), add_pooling_layer=False).cuda().to(torch.bfloat16).eval()
    sdpa.load_state_dict(flash.state_dict())
    ids, mask, _ = padded_batch()
    a = flash(ids, mask).last_hidden_state.float()
    b = sdpa(ids, mask).last_hidden_state.float()
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real], rtol=2e-2, atol=2e-2)


@needs_flash
def test_auto_backend_uses_flash_for_bf16_cuda(monkeypatch):
    calls = []
    original = modeling_mosaicbert.flash_attn_varlen_qkvpacked_func

    def spy(*args, **kwargs):
        calls.append(kwargs.get("dropout_p"))
        return original(*args, **kwargs)

    monkeypatch.setattr(modeling_mosaicbert, "flash_attn_varlen_qkvpacked_func", spy)
    model = MosaicBertModel(config("auto"), add_pooling_layer=False).cuda().eval()
    ids, mask, _ = padded_batch()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        model(ids, mask)
    assert calls == [0.0] * 4  # every layer, no dropout in eval
    model(ids, mask)  # fp32: falls back to SDPA
    assert len(calls) == 4


def test_no_host_sync_between_the_first_layer_and_the_loss():
    """Indices for the sparse head and the loss come from the inputs, before the encoder: from the
    first layer to the loss, CUDA never waits for the host (sync debug mode turns any sync into an error)."""
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(config("sdpa")).cuda()
    ids, mask, labels = padded_batch()
    model.bert.encoder.register_forward_pre_hook(lambda *_: torch.cuda.set_sync_debug_mode("error"))
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, mask, labels=labels).loss
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss)


def test_a_training_step_syncs_once_with_the_host():
    """Forward, loss and backward of an MLM step: the one sync is `unpad` reading the counts that size its
    indices (CUDA's sync debug mode warns at every sync; tests/helpers/sync_spy.py checks the same calls on CPU)."""
    import warnings

    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(config("sdpa")).cuda()
    ids, mask, labels = padded_batch()
    model(ids, mask, labels=labels).loss.backward()  # warm-up: first-call allocations and kernel choices
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(ids, mask, labels=labels).loss
            loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 1, syncs
