"""Timing, FLOPs, memory and profiles of full training steps, several models side by side in one process.

Every model trains on the same batches (forward, backward, AdamW step). Models take turns within each
round, in an order that rotates from round to round, so a busy spell of a shared machine hits all of
them; a round is one pass over the batches, and the figures are the median round and its spread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from composer.algorithms.low_precision_layernorm.low_precision_layernorm import apply_low_precision_layernorm
from composer.core import Precision
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop
from transformers.modeling_outputs import MaskedLMOutput

from mosaicbert.bench.lengths import CLS, MASK, PAD, SEP

PRESETS = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
MODELS = ("mosaicbert", "bert", "modernbert", "mosaicbert-flex")
DEFAULT_MODELS = MODELS[:3]  # eager flex (CPU) is a correctness path, timed when asked for
BERT_POSITIONS = 512  # BERT-Base's learned position table: the baseline is not run past it
BASELINE = "bert"


def training_precision(device: torch.device, autocast_dtype: torch.dtype | None) -> Precision:
    """The precision a training run would have here: mixed precision is for CUDA only (config.finalize runs CPU
    recipes in fp32), so a CPU benchmark under autocast still builds what CPU training builds."""
    if device.type != "cuda" or autocast_dtype is None:
        return Precision.FP32
    return {torch.bfloat16: Precision.AMP_BF16, torch.float16: Precision.AMP_FP16}[autocast_dtype]


def build_model(name: str, dims: dict, vocab_size: int, seq_len: int, device: torch.device,
                autocast_dtype: torch.dtype | None = None) -> tuple[torch.nn.Module, str]:
    """The model and a line saying how it was built: each with its own design, at its fastest settings
    that keep that design (no attention dropout for any of them: it forces SDPA off its fused kernels)."""
    if name in ("mosaicbert", "mosaicbert-flex"):
        from mosaicbert.model import MosaicBertConfig, MosaicBertForMaskedLM

        backend = "flex" if name == "mosaicbert-flex" else "auto"
        config = MosaicBertConfig(vocab_size=vocab_size, attention_probs_dropout_prob=0.0, attention_backend=backend,
                                  **dims)
        model = MosaicBertForMaskedLM(config)
        note = f"padding removed, sparse MLM head, GeGLU, ALiBi; attention_backend={backend}; dropout 0.1, attention 0"
        precision = training_precision(device, autocast_dtype)
        if precision is not Precision.FP32:
            # The recipe's algorithms.low_precision_layernorm (yamls/base.yaml), the surgery Composer does at INIT:
            # under autocast nn.LayerNorm computes and returns fp32, and with it the residual stream.
            apply_low_precision_layernorm(model, precision)
            note += "; Composer's low-precision LayerNorm, as the recipe"
        return model.to(device), note
    if name == "bert":
        from transformers import BertConfig, BertForMaskedLM

        config = BertConfig(vocab_size=vocab_size, max_position_embeddings=max(512, seq_len),
                            attention_probs_dropout_prob=0.0, **dims)
        model = BertForMaskedLM._from_config(config, attn_implementation="sdpa")
        return model.to(device), (f"transformers BertForMaskedLM, attn_implementation="
                                  f"{model.config._attn_implementation}; dropout 0.1, attention 0")
    if name == "modernbert":
        from transformers import ModernBertConfig, ModernBertForMaskedLM

        flash = device.type == "cuda" and flash_attn_version() is not None
        # Its own design (GeGLU of the same width, RoPE, alternating local/global attention, no biases,
        # no dropout) and its sparse MLM head; unpadding needs FlashAttention-2, so on CPU it runs padded
        # SDPA. Eager like the others (reference_compile would compile its MLP and head on GPU, where the
        # FLOP counter cannot see them); --compile times every model compiled.
        config = ModernBertConfig(vocab_size=vocab_size, pad_token_id=PAD, cls_token_id=CLS, sep_token_id=SEP,
                                  bos_token_id=CLS, eos_token_id=SEP, max_position_embeddings=max(512, seq_len),
                                  reference_compile=False, **dims)
        implementation = "flash_attention_2" if flash else "sdpa"
        model = ModernBertForMaskedLM._from_config(config, attn_implementation=implementation)
        path = "unpadded FlashAttention-2" if flash else "padded SDPA (its unpadded path needs FlashAttention-2)"
        return SparseModernBert(model).to(device), f"transformers ModernBertForMaskedLM, sparse MLM head, {path}"
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


class SparseModernBert(torch.nn.Module):
    """ModernBertForMaskedLM's encoder and head, the head on masked tokens only (its `sparse_prediction`).

    transformers 4.53's own sparse path re-pads the masked tokens' logits as if they were every token's
    when it runs FlashAttention-2, which fails; this runs the same modules and loss on both paths."""

    def __init__(self, mlm: torch.nn.Module):
        super().__init__()
        self.mlm = mlm

    def forward(self, input_ids, attention_mask, labels, **_) -> MaskedLMOutput:
        hidden = self.mlm.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        is_masked = labels != -100
        rows = hidden[is_masked]
        mlm = self.mlm
        logits = mlm.compiled_head(rows) if mlm.config.reference_compile else mlm.decoder(mlm.head(rows))
        return MaskedLMOutput(loss=F.cross_entropy(logits.float(), labels[is_masked]), logits=logits)


def flash_attn_version() -> str | None:
    try:
        import flash_attn
    except ImportError:
        return None
    return flash_attn.__version__


@dataclass
class Contender:
    """One model in the comparison, with its optimizer and its timings."""

    key: str
    model: torch.nn.Module
    note: str
    autocast_dtype: torch.dtype | None
    batches: list[dict[str, torch.Tensor]] = field(default_factory=list)  # the case's, or a packed copy
    lr: float = 1e-5
    optimizer: torch.optim.Optimizer = field(init=False)
    round_seconds: list[float] = field(default_factory=list)

    def __post_init__(self):
        self.model.train()
        # The fused kernel (CPU and CUDA) for every model: the optimizer is not what is compared.
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.lr, fused=True)

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One training step; its loss, detached and left on the device (reading it would wait for the step)."""
        device_type = next(iter(batch.values())).device.type
        autocast = (torch.autocast(device_type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                    else nullcontext())
        with autocast:
            loss = self.model(**batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rounds(contenders: list[Contender], rounds: int, device: torch.device,
                progress: Callable[[str], None] = print) -> None:
    for r in range(rounds):
        shift = r % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            synchronize(device)
            start = time.perf_counter()
            for batch in contender.batches:
                contender.step(batch)
            synchronize(device)
            contender.round_seconds.append(time.perf_counter() - start)
        progress(f"  round {r + 1}/{rounds}: " + ", ".join(f"{c.key} {c.round_seconds[-1]:.2f}s" for c in contenders))


def attended_pairs(seqlens: torch.Tensor, window: tuple[int, int] = (-1, -1)) -> int:
    """The (query, key) pairs attention scores over sequences of `seqlens` tokens. FlashAttention's sliding window
    (left, right) lets query i see keys i - left .. i + right (-1: no limit, ModernBERT's global layers), so a
    sequence of s tokens loses, on each limited side, 1 + 2 + ... + (s - 1 - limit) of its s^2 pairs."""
    s = seqlens.long()
    pairs = s * s
    for limit in window:
        if limit >= 0:
            beyond = (s - 1 - limit).clamp(min=0)
            pairs = pairs - beyond * (beyond + 1) // 2
    return int(pairs.sum())


def flash_varlen_flops(q_shape, cu_seqlens: torch.Tensor, backward: bool, window: tuple[int, int] = (-1, -1)) -> int:
    """FLOPs of FlashAttention's varlen kernel: QK^T and PV are 2 * 2 * heads * head_dim per attended pair; the
    backward's five products (the scores recomputed) 2.5 times that, torch's count for SDPA."""
    heads, head_dim = q_shape[-2], q_shape[-1]
    forward = 4 * attended_pairs(cu_seqlens.diff(), window) * heads * head_dim
    return 5 * forward // 2 if backward else forward


def _raw(formula: Callable) -> Callable:
    """A formula FlopCounterMode calls with the op's own arguments, not their shapes: torch's own formulas come
    wrapped already (tensors to shapes), and the varlen ones read the values of `cu_seqlens`."""
    def counted(*args, **kwargs):
        return formula(*args, **kwargs)

    counted._get_raw = True
    return counted


def flash_varlen_ops() -> tuple | None:
    """flash-attn's varlen forward and backward ops, which flash-attn >= 2.7 registers as `flash_attn::` torch ops
    on import; None without flash-attn, or with an older one, whose kernels FlopCounterMode cannot see."""
    if flash_attn_version() is None or not hasattr(torch.ops.flash_attn, "_flash_attn_varlen_forward"):
        return None
    return torch.ops.flash_attn._flash_attn_varlen_forward, torch.ops.flash_attn._flash_attn_varlen_backward


def uncounted_attention(device: torch.device) -> str | None:
    """Why FLOPs (and so MFU) cannot be counted on `device`, or None: flash-attn runs there (CUDA) but registers
    no op, so its attention would count 0 FLOPs."""
    version = flash_attn_version() if device.type == "cuda" else None
    if version is None or flash_varlen_ops() is not None:
        return None
    return (f"MFU not reported: flash-attn {version} registers no torch op for FlopCounterMode to count its "
            "attention FLOPs; flash-attn>=2.7 does")


def varlen_forward_flops(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                         causal, window_size_left=-1, window_size_right=-1, *args, **kwargs) -> int:
    """`flash_attn::_flash_attn_varlen_forward`'s FLOPs. The arguments are its schema's, so the window is found
    whether it comes by position or by name, or not at all (torch leaves out trailing defaults: -1, -1)."""
    return flash_varlen_flops(q.shape, cu_seqlens_q, False, (window_size_left, window_size_right))


def varlen_backward_flops(dout, q, k, v, out, softmax_lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                          max_seqlen_k, dropout_p, softmax_scale, causal, window_size_left, window_size_right,
                          *args, **kwargs) -> int:
    """`flash_attn::_flash_attn_varlen_backward`'s FLOPs, from its arguments."""
    return flash_varlen_flops(q.shape, cu_seqlens_q, True, (window_size_left, window_size_right))


def flop_formulas() -> dict:
    """Formulas torch's FlopCounterMode lacks for the attention kernels these models run: SDPA's CPU flash
    kernel (forward and backward, the same counts as its CUDA kernels) and flash-attn's varlen ops."""
    aten = torch.ops.aten
    formulas = {aten._scaled_dot_product_flash_attention_for_cpu: _raw(sdpa_flop),
                aten._scaled_dot_product_flash_attention_for_cpu_backward: _raw(sdpa_backward_flop)}
    ops = flash_varlen_ops()
    if ops is not None:
        formulas.update(zip(ops, (_raw(varlen_forward_flops), _raw(varlen_backward_flops))))
    return formulas


def count_flops(contender: Contender) -> int:
    """Matmul and attention FLOPs the model executes (padding included) in forward and backward over its batches."""
    counter = FlopCounterMode(display=False, custom_mapping=flop_formulas())
    with counter:
        for batch in contender.batches:
            contender.step(batch)
    return counter.get_total_flops()


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 10) -> float:
    """The machine's dense matmul rate in FLOP/s (the best of `repeats`), measured in this process."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / min(seconds)


def profile_step(contender: Contender, batch: dict, device: torch.device, rows: int = 30) -> tuple[str, int]:
    """A per-op table of one training step (self time, descending) and the step's peak memory in bytes
    above what was allocated before it (activations, gradients, temporaries)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    with profile(activities=activities, profile_memory=True) as prof:
        contender.step(batch)
        synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=rows)
    if device.type == "cuda":
        return table, torch.cuda.max_memory_allocated(device) - before
    return table, cpu_allocation_peak(prof)


def cpu_allocation_peak(prof) -> int:
    """The most bytes a profiled CPU block held above what it started with: the running sum of the allocator's
    events (the raw ones: the profiler's table attributes allocations to ops)."""
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def resident_bytes(contender: Contender) -> int:
    """Parameters and optimizer state, held across steps."""
    tensors = list(contender.model.parameters())
    tensors += [t for state in contender.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)
