"""What the GPU path decides, tested on CPU with the device mocked: the attention kernel, the default
precision, and evaluation in the training precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mosaicbert.model import MosaicBertConfig, MosaicBertForMaskedLM, MosaicBertForSequenceClassification
from mosaicbert.model import modeling_mosaicbert
from mosaicbert.model.modeling_mosaicbert import choose_attention_backend

CUDA = torch.device("cuda")


def tiny(**overrides) -> MosaicBertConfig:
    values = dict(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48)
    return MosaicBertConfig(**{**values, **overrides})


@pytest.fixture
def gpu(monkeypatch):
    """flash-attn importable and a CUDA device of a chosen compute capability (`gpu(7, 5)`)."""
    monkeypatch.setattr(modeling_mosaicbert, "flash_attn_varlen_qkvpacked_func", object())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")

    def set_capability(major: int, minor: int) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))

    return set_capability


@pytest.fixture
def decisions(monkeypatch) -> list[torch.dtype]:
    """The dtype of every backend decision the model makes (the real decision still runs)."""
    seen = []
    original = modeling_mosaicbert.choose_attention_backend

    def spy(requested, device, dtype, head_dim):
        seen.append(dtype)
        return original(requested, device, dtype, head_dim)

    monkeypatch.setattr(modeling_mosaicbert, "choose_attention_backend", spy)
    return seen


@pytest.mark.parametrize("capability, head_dim, expected", [
    ((9, 0), 64, "flash_attn"), ((8, 0), 256, "flash_attn"),
    ((7, 5), 64, "sdpa"), ((7, 0), 64, "sdpa"),  # T4, V100: FlashAttention-2 has no kernels for them
    ((9, 0), 320, "sdpa"),  # hidden 640, 2 heads: over FlashAttention-2's head dimension limit
])
def test_auto_uses_flash_attention_only_where_it_runs(gpu, capability, head_dim, expected):
    gpu(*capability)
    assert choose_attention_backend("auto", CUDA, torch.bfloat16, head_dim) == expected
    if expected == "sdpa":
        reason = "older than Ampere" if capability < (8, 0) else "head dimension 320 is over 256"
        with pytest.raises(RuntimeError, match=f"attention_backend=flash_attn cannot run: .*{reason}"):
            choose_attention_backend("flash_attn", CUDA, torch.bfloat16, head_dim)


def test_auto_falls_back_for_fp32_cpu_or_no_flash_attn(gpu, monkeypatch):
    gpu(9, 0)
    assert choose_attention_backend("auto", CUDA, torch.float32, 64) == "sdpa"
    assert choose_attention_backend("auto", torch.device("cpu"), torch.bfloat16, 64) == "sdpa"
    monkeypatch.setattr(modeling_mosaicbert, "flash_attn_varlen_qkvpacked_func", None)
    assert choose_attention_backend("auto", CUDA, torch.bfloat16, 64) == "sdpa"
    assert choose_attention_backend("flex", CUDA, torch.bfloat16, 64) == "flex"


def test_one_decision_per_forward_from_the_dtype_the_layers_compute_in(decisions):
    """Decided once per forward, for every layer, from what the layers will compute in: autocast's dtype when
    it is on, else the weights'."""
    model = MosaicBertForMaskedLM(tiny()).eval()
    ids = torch.randint(5, 64, (2, 8))
    model(ids, labels=ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids)
    model.to(torch.bfloat16)(ids)
    assert decisions == [torch.float32, torch.bfloat16, torch.bfloat16]


@pytest.mark.parametrize("capability, expected", [((9, 0), "amp_bf16"), ((8, 6), "amp_bf16"), ((7, 5), "amp_fp16")])
def test_gpu_precision_defaults_to_fp16_before_ampere(gpu, monkeypatch, capability, expected):
    from conftest import DEMO_YAML
    from mosaicbert.config import load_config
    from mosaicbert.glue.job import resolve_precision

    gpu(*capability)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config = load_config(DEMO_YAML, ["device=gpu"], world_size=1)  # the demo recipe leaves precision unset
    assert config.precision == expected
    assert ("compute capability 7.5" in config.filled_defaults["precision"]) == (expected == "amp_fp16")
    assert resolve_precision(None, regression=False) == expected
    assert resolve_precision("amp_bf16", regression=False) == "amp_bf16"  # a recipe's choice stands


@pytest.mark.parametrize("precision, dtype", [("amp_fp16", torch.float16), ("amp_bf16", torch.bfloat16),
                                              ("fp32", torch.float32)])
def test_glue_predictions_run_in_the_training_precision(decisions, precision, dtype):
    """The attention sees the training precision's dtype (CPU autocast stands in for CUDA's)."""
    from mosaicbert.glue.finetune import predict

    model = MosaicBertForSequenceClassification(tiny(num_labels=2)).eval()
    ids = torch.randint(5, 64, (4, 8))
    loader = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
               "labels": torch.tensor([0, 1, 0, 1])}]
    predictions, labels, probabilities = predict(model, loader, "classification", precision)
    assert decisions == [dtype] and predictions.shape == (4,) and labels.tolist() == [0, 1, 0, 1]
    assert probabilities.shape == (4, 2) and np.allclose(probabilities.sum(1), 1)


def test_the_evaluation_autocast_is_composers_for_each_precision():
    """The MLM scorer and GLUE's predictions share it: bf16 and fp16 autocast, off for fp32."""
    from mosaicbert.precision import autocast

    cpu = torch.device("cpu")  # torch turns a CUDA autocast off where CUDA is missing; the choice is the same
    for precision, dtype in (("amp_bf16", torch.bfloat16), ("amp_fp16", torch.float16)):
        context = autocast(precision, cpu)
        assert context.fast_dtype == dtype and context._enabled
    assert not autocast("fp32", cpu)._enabled


def test_earlybert_coefficients_keep_a_bf16_search_in_bf16():
    """The fp32 head and unit coefficients scale bf16 activations without promoting them (and still learn)."""
    from mosaicbert.model.pruning import add_coefficients

    model = MosaicBertForMaskedLM(tiny(attention_backend="sdpa"))
    coefficients = add_coefficients(model)
    layer = model.bert.encoder.layer[0]
    seen = []
    for module in (layer.attention.dense, layer.mlp.wo):
        module.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].dtype))
    ids = torch.randint(5, 64, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(ids, labels=ids).loss
    loss.backward()
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert all(c.dtype == torch.float32 and c.grad is not None for c in coefficients)


def test_mlm_loaders_pin_memory_for_gpu_runs_only(monkeypatch, sample_root):
    """A CPU run on a GPU host does not pin (that would open a CUDA context per rank on GPU 0)."""
    from mosaicbert.config import LoaderConfig
    from mosaicbert.data.text_dataset import build_mlm_dataloader
    from mosaicbert.data.tokenizer import build_tokenizer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    tokenizer = build_tokenizer(str(sample_root / "tokenizer"), 32)
    loader = LoaderConfig(split="val_small", local=str(sample_root))
    assert not build_mlm_dataloader(loader, tokenizer, 32, 4, seed=0).dataloader.pin_memory
    assert build_mlm_dataloader(loader, tokenizer, 32, 4, seed=0, pin_memory=True).dataloader.pin_memory


def test_compiled_flex_attention_has_room_for_its_variants(monkeypatch):
    """grad mode x dtype x head count recompile flex_attention; past Dynamo's default limit of 8 it would run
    uncompiled (dense scores on CUDA), so its compiled form raises the limit."""
    import torch._dynamo.config as dynamo

    monkeypatch.setattr(modeling_mosaicbert, "_compiled_flex", None)
    with dynamo.patch(recompile_limit=8):  # torch's config objects restore through their own patch
        modeling_mosaicbert._flex_attention(on_cuda=True)  # built, not yet compiled
        assert dynamo.recompile_limit >= 2 * 2 * 12 * 2  # train/eval x bf16/fp32 x head counts x one block


def test_the_backend_reads_the_dtype_of_the_attention_weights_not_of_earlybert_coefficients(decisions):
    """A bf16 model with EarlyBERT's fp32 coefficients still computes attention in bf16."""
    from mosaicbert.model.pruning import add_coefficients

    model = MosaicBertForMaskedLM(tiny()).to(torch.bfloat16)
    add_coefficients(model)
    model(torch.randint(5, 64, (2, 8)))
    assert decisions == [torch.bfloat16]
