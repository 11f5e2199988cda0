"""MosaicBERT (arXiv 2312.17482): a post-LayerNorm BERT encoder with ALiBi, GeGLU and no padding.

Reading order: `unpad` (padding is removed once, right after the inputs), the embeddings,
`MosaicBertAttention` (FlashAttention-2 varlen on CUDA half precision, otherwise PyTorch
SDPA with an explicit ALiBi bias and padded keys masked), `MosaicBertGLU`, the encoder, and the heads.
Every linear layer, LayerNorm and feed-forward sees real tokens only: activations are
`[num_real_tokens, hidden]` matrices from the embeddings to the output.

Widths live on each module (`num_heads`, `intermediate_size`) rather than being read from
the shared config, so structurally pruned layers of different widths work unchanged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import MaskedLMOutput, SequenceClassifierOutput, TokenClassifierOutput
from transformers.utils import ModelOutput

# Relative, and the only import from this package: `save_pretrained` copies this file and the
# configuration beside the weights, so the folder loads with `trust_remote_code=True` where the
# package is not installed (src/mosaicbert/export/).
from .configuration_mosaicbert import MosaicBertConfig

try:  # optional `gpu` extra
    from flash_attn import flash_attn_varlen_qkvpacked_func
except ImportError:
    flash_attn_varlen_qkvpacked_func = None

log = logging.getLogger(__name__)
IGNORE_INDEX = -100
# Module state on purpose: the backend is chosen inside forward, which torch.compile traces. A set lookup is
# something Dynamo guards on (once announced, no call is left); a functools.cache'd function it would trace
# through on every compiled forward, logging call and all.
_announced_backends: set[str] = set()


def _announce_backend(name: str, reason: str) -> None:
    if name not in _announced_backends:
        _announced_backends.add(name)
        log.info("MosaicBERT attention backend: %s (%s)", name, reason)


FLASH_MAX_HEAD_DIM = 256  # FlashAttention-2's kernels (flash_attn_interface: "head dimension at most 256")
FLASH_MIN_CAPABILITY = (8, 0)  # Ampere: FlashAttention-2 has no kernels for Turing (T4) or Volta (V100)


def flash_attention_problems(device: torch.device, dtype: torch.dtype, head_dim: int) -> list[str]:
    """Why FlashAttention-2 cannot run attention on `dtype` tensors on `device` (empty when it can)."""
    problems = []
    if flash_attn_varlen_qkvpacked_func is None:
        problems.append("flash-attn is not installed (pip install '.[gpu]')")
    if device.type != "cuda":
        problems.append("tensors are not on a CUDA device")
    elif torch.cuda.get_device_capability(device) < FLASH_MIN_CAPABILITY:
        major, minor = torch.cuda.get_device_capability(device)
        problems.append(f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) is older than "
                        "Ampere (8.0)")
    if dtype not in (torch.float16, torch.bfloat16):
        problems.append(f"tensors are {dtype}, not fp16/bf16 (use precision=amp_bf16, or amp_fp16 before Ampere)")
    if head_dim > FLASH_MAX_HEAD_DIM:
        problems.append(f"head dimension {head_dim} is over {FLASH_MAX_HEAD_DIM}")
    return problems


def choose_attention_backend(requested: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> str:
    """The one decision of which kernel a forward's layers use: `flex` and `sdpa` as asked; `flash_attn` when
    FlashAttention-2 can run (an error naming why when it cannot); `auto` falls back to SDPA, saying why once."""
    if requested in ("flex", "sdpa"):
        _announce_backend(requested, "FlexAttention, ALiBi score_mod and a per-sequence block mask"
                          if requested == "flex" else "attention_backend=sdpa")
        return requested
    problems = flash_attention_problems(device, dtype, head_dim)
    if not problems:
        _announce_backend("flash_attn", "FlashAttention-2 varlen with ALiBi slopes")
        return "flash_attn"
    if requested == "flash_attn":
        raise RuntimeError("attention_backend=flash_attn cannot run: " + "; ".join(problems))
    _announce_backend("sdpa", "auto: " + "; ".join(problems))
    return "sdpa"


def compute_dtype(linear: nn.Linear) -> torch.dtype:
    """The dtype `linear` produces here: autocast's when it is on for the weight's device, else the weight's."""
    weight = linear.weight
    if torch.is_autocast_enabled(weight.device.type):
        return torch.get_autocast_dtype(weight.device.type)
    return weight.dtype


# --------------------------------------------------------------------------- ALiBi


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi head slopes. For n a power of two: 2^(-8(i+1)/n). Otherwise the slopes of the
    largest power of two p below n, then every other slope of the 2p-head set."""

    def geometric(n: int) -> list[float]:
        return [2 ** (-8 * (i + 1) / n) for i in range(n)]

    p = 2 ** math.floor(math.log2(num_heads))
    slopes = geometric(p)
    if p < num_heads:
        slopes += geometric(2 * p)[0::2][: num_heads - p]
    return torch.tensor(slopes, dtype=torch.float32)


_compiled_flex = None  # one per process, built on first use (a global for the same reason as above)
FLEX_RECOMPILE_LIMIT = 128  # train/eval x bf16/fp32 x up to 12 head counts x one-block case = 96


def _flex_attention(on_cuda: bool):
    """FlexAttention: compiled on CUDA (where it is fast), eager elsewhere (exact, for CPU tests; block-wise)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if not on_cuda:
        return flex_attention
    if _compiled_flex is None:
        # Token counts do not recompile (dynamic), but grad mode x dtype x head count (pruned layers differ) x
        # the one-block case each do. Past Dynamo's limit (8 in torch 2.7) flex_attention would run uncompiled,
        # and on CUDA that materialises [heads, tokens, tokens] scores: out of memory. Room for every variant
        # (Dynamo has one limit per process: a compiled model, `compile_config`, gets the same room).
        import torch._dynamo.config as dynamo

        dynamo.recompile_limit = max(dynamo.recompile_limit, FLEX_RECOMPILE_LIMIT)
        _compiled_flex = torch.compile(flex_attention, dynamic=True)
    return _compiled_flex


# --------------------------------------------------------------------------- padding


@dataclass
class Unpadded:
    """Where the real tokens of a padded `[batch, seq]` batch are, and what the layers of one forward share.

    A row holds one sequence, or several when packed: `attention_mask` then numbers each row's
    documents 1, 2, 3, ... (0 for padding), and each document is a sequence of its own (no attention
    between documents, ALiBi distances within each).

    indices: flat positions of real tokens in the `[batch * seq]` input, row-major.
    cu_seqlens: int32 `[num_sequences + 1]`, 0 then cumulative sequence lengths (FlashAttention's layout).
    packed_indices: positions of the same tokens in a `[num_sequences * max_seqlen]` layout, for SDPA.
    subset_idx: with a subset mask, the rows of the `[num_real_tokens, hidden]` matrix in the subset.
    """

    indices: torch.Tensor
    cu_seqlens: torch.Tensor
    seqlens: torch.Tensor
    max_seqlen: int
    batch_size: int  # the number of sequences
    packed_indices: torch.Tensor
    sequence_ids: torch.Tensor  # which sequence each real token belongs to
    positions: torch.Tensor  # each real token's position within its sequence
    subset_idx: torch.Tensor | None = None
    subset_has_every_first_token: bool = True  # every row's first token is real and in the subset
    backend: str = "sdpa"  # the attention kernel of every layer (`choose_attention_backend`)
    # Built by the first layer that needs them and reused by the others (layers with the same heads
    # share one SDPA bias; every layer shares FlexAttention's document mask).
    sdpa_bias: dict[tuple[int, ...], torch.Tensor] = field(default_factory=dict)
    block_mask: Any = None
    flex_blocks: list[tuple[int, int, int, int]] | None = None  # eager FlexAttention's work list (flex_query_blocks)


def sequence_starts(attention_mask: torch.Tensor) -> torch.Tensor:
    """`[batch, seq]` bool: the real tokens that start a sequence.

    A sequence is a run of real tokens of one row with one mask value: a 0/1 mask gives one per
    non-empty row; a packed row (documents numbered 1, 2, ...) gives one per document. Padding
    between a row's tokens closes up: a token starts a sequence when the previous real token of its
    row has another value, or there is none."""
    real = attention_mask != 0
    column = torch.arange(attention_mask.shape[-1], device=attention_mask.device).expand_as(attention_mask)
    last_real_so_far = torch.cummax(torch.where(real, column, -1), dim=-1).values
    previous_real = F.pad(last_real_so_far[:, :-1], (1, 0), value=-1)
    previous_value = torch.where(previous_real >= 0, attention_mask.gather(-1, previous_real.clamp_min(0)), 0)
    return real & (attention_mask != previous_value)


def unpad(attention_mask: torch.Tensor, subset_mask: torch.Tensor | None = None) -> Unpadded:
    """Every index of a forward, computed before any layer is launched, with one host sync.

    The sizes of the index tensors (real tokens, sequences, subset tokens) and `max_seqlen` depend on
    the data, so the host must learn them: they travel together in one copy, and every index is then
    computed on the device at a size the host already knows (`nonzero_static`). Nothing after this
    waits for the device."""
    real, starts = (attention_mask != 0).flatten(), sequence_starts(attention_mask).flatten()
    row = torch.cumsum(real, dim=0) - 1  # each real token's row in the [num_real_tokens, hidden] matrix
    start_row = torch.cummax(torch.where(starts, row, -1), dim=0).values  # the row its sequence starts at
    position = row - start_row
    in_subset = real if subset_mask is None else real & subset_mask.flatten().bool()
    first_tokens = in_subset.view_as(attention_mask)[:, 0].all()
    counts = torch.stack([real.sum(), starts.sum(), torch.where(real, position + 1, 0).amax(), in_subset.sum(),
                          first_tokens.long()])
    num_tokens, num_sequences, max_seqlen, num_subset, has_first_tokens = counts.tolist()  # the one sync

    indices = torch.nonzero_static(real, size=num_tokens).flatten()
    start_rows = row.index_select(0, torch.nonzero_static(starts, size=num_sequences).flatten())
    cu_seqlens = F.pad(start_rows, (0, 1), value=num_tokens).to(torch.int32)
    sequence_ids = (torch.cumsum(starts, dim=0) - 1).index_select(0, indices)
    positions = position.index_select(0, indices)
    subset_idx = None
    if subset_mask is not None:
        subset_idx = torch.nonzero_static(in_subset.index_select(0, indices), size=num_subset).flatten()
    # A sequence's real tokens, packed to the left of its row of the [num_sequences, max_seqlen] layout.
    packed_indices = sequence_ids * max_seqlen + positions
    return Unpadded(indices, cu_seqlens, cu_seqlens.diff(), max_seqlen, num_sequences, packed_indices, sequence_ids,
                    positions, subset_idx, bool(has_first_tokens))


def document_block_mask(sequence_ids: torch.Tensor, cu_seqlens: torch.Tensor, mask_mod: Callable,
                        block_size: int = 128):
    """FlexAttention's BlockMask for packed sequences, built from the sequence boundaries alone.

    `create_block_mask` evaluates the mask on every (query, key) pair, a dense tokens x tokens
    tensor; here each query block's key blocks follow from which sequences it touches, so the cost
    is (blocks)^2 integers. The result equals `create_block_mask(mask_mod, ...)` (tested): key
    blocks inside the query block's sequences, split into full blocks (query and key block wholly
    inside one and the same sequence, neither cut short by the end) and partial ones (mask_mod decides).
    """
    from torch.nn.attention.flex_attention import BlockMask

    tokens = sequence_ids.shape[0]
    blocks = -(-tokens // block_size)
    starts = torch.arange(blocks, device=sequence_ids.device) * block_size
    ends = torch.clamp(starts + block_size, max=tokens) - 1  # last token of each block
    first_seq, last_seq = sequence_ids[starts], sequence_ids[ends]
    cu = cu_seqlens.long()
    low = cu[first_seq] // block_size  # key blocks from the first sequence's start ...
    high = (cu[last_seq + 1] - 1) // block_size  # ... to the last sequence's end
    column = torch.arange(blocks, device=sequence_ids.device)
    touched = (column[None, :] >= low[:, None]) & (column[None, :] <= high[:, None])
    whole = (first_seq == last_seq) & (ends - starts + 1 == block_size)  # one sequence, not cut short
    full = touched & whole[:, None] & whole[None, :] & (first_seq[:, None] == first_seq[None, :])
    partial = touched & ~full

    def ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Block counts per query block, and the key-block indices with the used ones first, ascending.
        dense = dense.to(torch.int32)[None, None]
        return dense.sum(-1, dtype=torch.int32), torch.argsort(dense, dim=-1, descending=True, stable=True).to(torch.int32)

    return BlockMask.from_kv_blocks(*ordered(partial), *ordered(full), BLOCK_SIZE=block_size, mask_mod=mask_mod,
                                    seq_lengths=(tokens, tokens))


FLEX_EAGER_QUERY_BLOCK = 512


def flex_query_blocks(unpadded: Unpadded) -> list[tuple[int, int, int, int]]:
    """Eager FlexAttention's work list: blocks of `FLEX_EAGER_QUERY_BLOCK` packed queries, each with the key
    range its sequences span, `(q_start, q_end, k_start, k_end)` (host integers, read once per forward)."""
    tokens = unpadded.sequence_ids.shape[0]
    q_start = torch.arange(0, tokens, FLEX_EAGER_QUERY_BLOCK, device=unpadded.sequence_ids.device)
    q_end = torch.clamp(q_start + FLEX_EAGER_QUERY_BLOCK, max=tokens)
    cu = unpadded.cu_seqlens.long()
    k_start, k_end = cu[unpadded.sequence_ids[q_start]], cu[unpadded.sequence_ids[q_end - 1] + 1]
    return list(zip(*torch.stack([q_start, q_end, k_start, k_end]).tolist()))


def pad(rows: torch.Tensor, indices: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Scatter `[n, ...]` rows into zeros of `[num_slots, ...]` at `indices` (differentiable)."""
    return rows.new_zeros(num_slots, *rows.shape[1:]).index_copy(0, indices, rows)


# --------------------------------------------------------------------------- modules


class Dropout(nn.Dropout):
    """`nn.Dropout` whose CPU mask comes from `rand_like`: torch's CPU Bernoulli kernel is the slower way to
    draw it (docs/benchmarks.md, runs cpu-base-malloc and cpu-base). The same distribution: each element
    kept with probability 1 - p (drawn in fp32 whatever the input's dtype), scaled by 1 / (1 - p); backward
    keeps a bool mask, as torch's does. On GPUs, torch's fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p in (0.0, 1.0) or x.device.type != "cpu":
            return super().forward(x)
        return x * (torch.rand_like(x, dtype=torch.float32) >= self.p) * (1.0 / (1.0 - self.p))


class MosaicBertEmbeddings(nn.Module):
    """Word and token-type embeddings, LayerNorm, dropout. No position embeddings: ALiBi encodes position."""

    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(embeddings))


class MosaicBertAttention(nn.Module):
    """Self-attention with ALiBi on unpadded tokens, then output projection, dropout and post-LayerNorm.

    The fused `Wqkv` output is laid out as (q|k|v, head, head_dim): rows
    `[t * inner + h * head_dim, t * inner + (h + 1) * head_dim)` belong to head h of q, k or v.
    """

    def __init__(self, config: MosaicBertConfig, layer_idx: int):
        super().__init__()
        heads = config.layer_head_indices(layer_idx)
        self.num_heads = len(heads)
        self.head_dim = config.head_dim
        inner = self.num_heads * self.head_dim
        self.Wqkv = nn.Linear(config.hidden_size, 3 * inner)
        self.dense = nn.Linear(inner, config.hidden_size)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention_dropout = config.attention_probs_dropout_prob
        # Each kept head keeps its original slope, so pruned models attend as before. `head_indices`
        # (the original head numbers) names the slope set, so layers with the same heads share one bias.
        self.head_indices = tuple(heads)
        self.register_buffer("alibi_slopes", alibi_slopes(config.num_attention_heads)[heads], persistent=False)
        self.register_parameter("head_coef", None)  # EarlyBERT search: one scale per head (model/pruning.py)

    def _apply(self, fn, recurse=True):
        # `.to(torch.bfloat16)` / `.half()` cast every floating buffer, but FlashAttention-2 takes fp32
        # slopes only, and bf16 slopes would change the bias: follow the device, keep fp32 and the exact values.
        slopes = self.alibi_slopes
        super()._apply(fn, recurse)
        if self.alibi_slopes.dtype != torch.float32:
            self.alibi_slopes = slopes.to(device=self.alibi_slopes.device, dtype=torch.float32)
        return self

    def forward(self, hidden: torch.Tensor, unpadded: Unpadded, subset_idx: torch.Tensor | None = None) -> torch.Tensor:
        qkv = self.Wqkv(hidden).view(-1, 3, self.num_heads, self.head_dim)
        context = ATTENTION_FUNCTIONS[unpadded.backend](self, qkv, unpadded)
        if self.head_coef is not None:
            # In the activations' dtype: fp32 coefficients would promote a bf16 search's activations to fp32.
            context = (context.view(-1, self.num_heads, self.head_dim) * self.head_coef.to(context.dtype)[:, None]).flatten(1)
        if subset_idx is not None:  # last layer: keys and values used every token; the rest runs on the subset
            context, hidden = context[subset_idx], hidden[subset_idx]
        return self.LayerNorm(self.dropout(self.dense(context)) + hidden)

    def _alibi_bias(self, seq: int, dtype: torch.dtype) -> torch.Tensor:
        """`[1, heads, seq, seq]`: -slope * |i - j|. Rows are allocated a multiple of 16 long (a view's columns
        cut to `seq`): CUDA's memory-efficient kernel copies a mask whose rows are not aligned, per layer."""
        positions = torch.arange(seq, device=self.alibi_slopes.device)
        columns = torch.arange(-(-seq // 16) * 16, device=self.alibi_slopes.device)
        distance = (columns[None, :] - positions[:, None]).abs()  # integers: exact at any length
        # Computed in fp32, then rounded to the attention dtype, which SDPA requires of a float mask: in bf16 a
        # bias of -m * d keeps 8 significant bits (up to ~0.2 logit off at distance 127 where m is not a power
        # of two, e.g. 12 heads), where FlashAttention-2 and flex add it exactly. `make gpu-check` measures both.
        return (-self.alibi_slopes[:, None, None] * distance).to(dtype)[None, :, :, :seq]


def flash_attention_forward(attn: MosaicBertAttention, qkv: torch.Tensor, unpadded: Unpadded) -> torch.Tensor:
    """FlashAttention-2 varlen on the packed tokens, ALiBi by its slopes (CUDA, fp16/bf16)."""
    context = flash_attn_varlen_qkvpacked_func(
        qkv,
        unpadded.cu_seqlens,
        unpadded.max_seqlen,
        dropout_p=attn.attention_dropout if attn.training else 0.0,
        alibi_slopes=attn.alibi_slopes,
    )
    return context.reshape(qkv.shape[0], -1)


def flex_attention_forward(attn: MosaicBertAttention, qkv: torch.Tensor, unpadded: Unpadded) -> torch.Tensor:
    """FlexAttention on the packed tokens: ALiBi as a score modifier, sequences as a block mask (compiled,
    on CUDA); block by block of queries, eagerly, elsewhere."""
    if attn.training and attn.attention_dropout > 0:
        raise RuntimeError("attention_backend=flex has no attention dropout; set attention_probs_dropout_prob=0 "
                           "or use another backend")
    if qkv.shape[0] == 0:  # a batch of padding only
        return qkv.new_zeros(0, attn.num_heads * attn.head_dim)
    q, k, v = qkv.permute(1, 2, 0, 3).unsqueeze(1).unbind(0)  # each [1, heads, tokens, head_dim]
    if not qkv.is_cuda:
        return _flex_eager(attn, q, k, v, unpadded).transpose(0, 1).reshape(qkv.shape[0], -1)
    positions, sequence_ids, slopes = unpadded.positions, unpadded.sequence_ids, attn.alibi_slopes

    def alibi(score, batch, head, q_idx, kv_idx):
        return score - slopes[head] * (positions[q_idx] - positions[kv_idx]).abs()

    if unpadded.block_mask is None:
        def same_sequence(batch, head, q_idx, kv_idx):
            return sequence_ids[q_idx] == sequence_ids[kv_idx]

        unpadded.block_mask = document_block_mask(sequence_ids, unpadded.cu_seqlens, same_sequence)
    context = _flex_attention(on_cuda=True)(q, k, v, score_mod=alibi, block_mask=unpadded.block_mask)
    return context[0].transpose(0, 1).reshape(qkv.shape[0], -1)


@torch._dynamo.disable  # host integers slice the blocks: one graph per block under torch.compile otherwise
def _flex_eager(attn: MosaicBertAttention, q, k, v, unpadded: Unpadded) -> torch.Tensor:
    """`[heads, tokens, head_dim]`: eager FlexAttention block by block of queries (`flex_query_blocks`)."""
    if unpadded.flex_blocks is None:
        unpadded.flex_blocks = flex_query_blocks(unpadded)  # once per forward, shared by the layers
    return torch.cat([_flex_eager_block(attn, q, k, v, unpadded, *block) for block in unpadded.flex_blocks], dim=2)[0]


def _flex_eager_block(attn: MosaicBertAttention, q, k, v, unpadded: Unpadded, q_start: int, q_end: int, k_start: int,
                      k_end: int):
    """Eager FlexAttention scores every query against every key it is given, `[heads, queries, keys]`: here
    one block of queries against the keys of its own sequences, so memory follows the block, not the batch."""
    positions, sequence_ids, slopes = unpadded.positions, unpadded.sequence_ids, attn.alibi_slopes

    def alibi_within_sequences(score, batch, head, q_idx, kv_idx):
        query, key = q_idx + q_start, kv_idx + k_start
        score = score - slopes[head] * (positions[query] - positions[key]).abs()
        return torch.where(sequence_ids[query] == sequence_ids[key], score, -float("inf"))

    return _flex_attention(on_cuda=False)(q[:, :, q_start:q_end], k[:, :, k_start:k_end], v[:, :, k_start:k_end],
                                          score_mod=alibi_within_sequences)


def sdpa_attention_forward(attn: MosaicBertAttention, qkv: torch.Tensor, unpadded: Unpadded) -> torch.Tensor:
    """SDPA on the `[sequences, heads, max_seqlen, width]` layout, memory linear in the batch's tokens.

    The bias is ALiBi alone, `[1, heads, seq, seq]`, shared by every sequence and every layer with these
    heads. Padded keys are masked by one more feature: queries carry 1 there, real keys 0 and padded
    keys the dtype's most negative value, so q.k is exact for real keys and drowns padded ones (a
    per-sequence `[batch, heads, seq, seq]` mask would grow with batch x seq^2; at 4 x 2048 it was
    most of the memory). `width` is `head_dim` plus that feature, rounded up to a multiple of 8
    for the fused kernels' alignment; the extra columns are zeros."""
    batch, seq, heads, head_dim = unpadded.batch_size, unpadded.max_seqlen, attn.num_heads, attn.head_dim
    width = sdpa_width(head_dim)
    rows = F.pad(qkv.view(-1, 3, heads, head_dim), (0, width - head_dim))
    rows = rows + padding_feature(qkv, width, query=1.0, key=0.0)
    empty = padding_feature(qkv, width, query=1.0, key=torch.finfo(qkv.dtype).min)  # a padding slot
    padded = empty.repeat(batch * seq, 1, heads, 1).index_copy(0, unpadded.packed_indices, rows)
    q, k, v = padded.view(batch, seq, 3, heads, width).permute(2, 0, 3, 1, 4).unbind(0)
    bias = unpadded.sdpa_bias.get(attn.head_indices)
    if bias is None or bias.dtype != q.dtype:
        bias = unpadded.sdpa_bias[attn.head_indices] = attn._alibi_bias(seq, q.dtype)
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=head_dim**-0.5,
                                             dropout_p=attn.attention_dropout if attn.training else 0.0)
    context = context[..., :head_dim].transpose(1, 2).reshape(batch * seq, heads * head_dim)
    return context.index_select(0, unpadded.packed_indices)


# The attention kernels, one function each, chosen once per forward (`choose_attention_backend`) and read
# by every layer from `Unpadded.backend`.
ATTENTION_FUNCTIONS: dict[str, Callable[[MosaicBertAttention, torch.Tensor, Unpadded], torch.Tensor]] = {
    "flash_attn": flash_attention_forward,
    "flex": flex_attention_forward,
    "sdpa": sdpa_attention_forward,
}


def sdpa_width(head_dim: int) -> int:
    """The SDPA path's head width: `head_dim` and the padding feature, rounded up to a multiple of 8."""
    return (head_dim // 8 + 1) * 8


def padding_feature(like: torch.Tensor, width: int, query: float, key: float) -> torch.Tensor:
    """`[3, 1, width]` (q|k|v, broadcast over heads): `query` and `key` in column `width - 1`, zeros elsewhere."""
    feature = like.new_zeros(3, 1, width)
    feature[0, 0, -1], feature[1, 0, -1] = query, key
    return feature


class MosaicBertGLU(nn.Module):
    """GeGLU feed-forward: (GELU(x W_gate) * x W_value) W_o, dropout, post-LayerNorm residual.

    `gated_layers` fuses gate and value without bias: rows [0, I) are the gate, [I, 2I) the
    value, so unit j is the pair of rows (j, I + j) and column j of `wo`.
    """

    def __init__(self, config: MosaicBertConfig, layer_idx: int):
        super().__init__()
        self.intermediate_size = config.layer_intermediate_size(layer_idx)
        self.gated_layers = nn.Linear(config.hidden_size, 2 * self.intermediate_size, bias=False)
        self.act = ACT2FN[config.hidden_act]
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.wo = nn.Linear(self.intermediate_size, config.hidden_size)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.register_parameter("unit_coef", None)  # EarlyBERT search: one scale per unit (model/pruning.py)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gate, value = self.gated_layers(hidden).split(self.intermediate_size, dim=-1)
        units = self.act(gate) * value
        if self.unit_coef is not None:
            units = units * self.unit_coef.to(units.dtype)
        return self.layernorm(self.wo(self.dropout(units)) + hidden)


class MosaicBertLayer(nn.Module):
    def __init__(self, config: MosaicBertConfig, layer_idx: int):
        super().__init__()
        self.attention = MosaicBertAttention(config, layer_idx)
        self.mlp = MosaicBertGLU(config, layer_idx)

    def forward(self, hidden, unpadded, subset_idx=None):
        return self.mlp(self.attention(hidden, unpadded, subset_idx))


class MosaicBertEncoder(nn.Module):
    """The layers. ALiBi needs no table sized in advance: each forward builds what its longest
    sequence needs, so any length works and no large buffer travels in DDP's buffer broadcast."""

    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.layer = nn.ModuleList([MosaicBertLayer(config, i) for i in range(config.num_hidden_layers)])

    def forward(
        self,
        hidden: torch.Tensor,
        unpadded: Unpadded,
        subset_idx: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """With `subset_idx`, the last layer after attention runs on those rows only (keys and values
        still come from every token). With `output_hidden_states`, every layer runs on every token and
        the list holds the embeddings' output and each layer's, `[num_real_tokens, hidden]` each."""
        states = [hidden] if output_hidden_states else None
        last = len(self.layer) - 1
        for i, layer in enumerate(self.layer):
            hidden = layer(hidden, unpadded, subset_idx if i == last and not output_hidden_states else None)
            if states is not None:
                states.append(hidden)
        if output_hidden_states and subset_idx is not None:
            hidden = hidden.index_select(0, subset_idx)
        return hidden, states


class MosaicBertPooler(nn.Module):
    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, first_token: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(first_token))


class MosaicBertPredictionHead(nn.Module):
    """MLM head: dense, GELU, LayerNorm, then the vocabulary projection (weight tied to the word embeddings)."""

    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.LayerNorm(self.act(self.dense(hidden))))


# --------------------------------------------------------------------------- models


@dataclass
class MosaicBertModelOutput(ModelOutput):
    """last_hidden_state: `[batch, seq, hidden]`, or `[rows, hidden]` for the rows of `subset_mask`
    (row-major order) when one was given. pooler_output: `[batch, hidden]` when the model has a pooler.
    hidden_states: with `output_hidden_states`, the embeddings' and each layer's output, `[batch, seq, hidden]`."""

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class MosaicBertMaskedLMOutput(MaskedLMOutput):
    """With labels, `logits` holds only the masked tokens, `[num_masked, vocab]`, and `labels`
    their targets in the same order; without labels, `logits` is `[batch, seq, vocab]`."""

    labels: torch.Tensor | None = None


class MosaicBertPreTrainedModel(PreTrainedModel):
    config_class = MosaicBertConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = False
    # transformers' Trainer passes `num_items_in_batch` to models whose forward takes **kwargs unless
    # this says no; the losses here are means over each batch's own labelled items.
    accepts_loss_kwargs = False

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        if self._auto_class is not None:
            # Registered for remote code: config.json names every Auto class, whichever head is saved,
            # so a pretrained MLM folder also opens with AutoModelForSequenceClassification for
            # fine-tuning (the original MosaicBERT release's auto_map lacked it).
            modeling, configuration = __name__.rsplit(".", 1)[-1], MosaicBertConfig.__module__.rsplit(".", 1)[-1]
            self.config.auto_map = {
                "AutoConfig": f"{configuration}.MosaicBertConfig",
                "AutoModel": f"{modeling}.MosaicBertModel",
                "AutoModelForMaskedLM": f"{modeling}.MosaicBertForMaskedLM",
                "AutoModelForSequenceClassification": f"{modeling}.MosaicBertForSequenceClassification",
                "AutoModelForTokenClassification": f"{modeling}.MosaicBertForTokenClassification",
            }
        super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()


def _defaults(input_ids, attention_mask, token_type_ids):
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    return attention_mask, token_type_ids


def _check_unsupported(output_attentions: bool | None, kwargs: dict[str, Any]) -> None:
    """transformers' Trainer and pipelines pass these; say plainly what this model cannot do."""
    if output_attentions:
        raise ValueError("MosaicBERT does not return attention weights (output_attentions=True): its attention "
                         "kernels (FlashAttention, SDPA, FlexAttention) never materialise them.")
    if kwargs:
        raise TypeError(f"unexpected keyword argument(s) {sorted(kwargs)}")


def _output(model: PreTrainedModel, output: ModelOutput, return_dict: bool | None):
    return_dict = return_dict if return_dict is not None else model.config.use_return_dict
    return output if return_dict else output.to_tuple()


class MosaicBertModel(MosaicBertPreTrainedModel):
    def __init__(self, config: MosaicBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = MosaicBertEmbeddings(config)
        self.encoder = MosaicBertEncoder(config)
        self.pooler = MosaicBertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        subset_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        unpadded: Unpadded | None = None,
        **kwargs,
    ) -> MosaicBertModelOutput | tuple:
        """`subset_mask` (`[batch, seq]` bool) limits the last layer after attention to those tokens;
        with a pooler, the first token of every sequence must be among them. `unpadded` is
        `unpad(attention_mask, subset_mask)` when a head has computed it already (it needs the indices too)."""
        _check_unsupported(output_attentions, kwargs)
        output_hidden_states = bool(output_hidden_states if output_hidden_states is not None
                                    else self.config.output_hidden_states)
        attention_mask, token_type_ids = _defaults(input_ids, attention_mask, token_type_ids)
        batch, seq = input_ids.shape
        # Every index is worked out here, before the first layer is launched, with one host sync.
        if unpadded is None:
            unpadded = unpad(attention_mask, subset_mask)
        unpadded.backend = choose_attention_backend(self.config.attention_backend, input_ids.device,
                                                    compute_dtype(self.encoder.layer[0].attention.Wqkv),
                                                    self.config.head_dim)
        subset_idx, first_token_rows = unpadded.subset_idx, None
        if subset_idx is not None and self.pooler is not None:
            if not unpadded.subset_has_every_first_token:
                raise ValueError("every sequence needs its first token ([CLS]) unmasked and in subset_mask for the pooler")
            first_token_rows = _first_token_rows(subset_mask, attention_mask)
        hidden = self.embeddings(
            input_ids.flatten().index_select(0, unpadded.indices),
            token_type_ids.flatten().index_select(0, unpadded.indices),
        )
        hidden, states = self.encoder(hidden, unpadded, subset_idx, output_hidden_states)

        def padded(rows: torch.Tensor) -> torch.Tensor:
            return pad(rows, unpadded.indices, batch * seq).view(batch, seq, -1)

        if subset_idx is None:
            sequence_output = padded(hidden)
            first_tokens = sequence_output[:, 0]
        else:
            sequence_output = hidden
            first_tokens = hidden.index_select(0, first_token_rows) if first_token_rows is not None else None
        pooled = self.pooler(first_tokens) if self.pooler is not None else None
        hidden_states = tuple(padded(state) for state in states) if states is not None else None
        output = MosaicBertModelOutput(last_hidden_state=sequence_output, pooler_output=pooled, hidden_states=hidden_states)
        return _output(self, output, return_dict)


def _first_token_rows(subset_mask: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Rows of the subset output that hold each row's first token (`unpad` has checked that they are in it)."""
    kept = subset_mask.bool() & attention_mask.bool()
    row_of_position = torch.cumsum(kept.flatten().long(), dim=0) - 1
    first_positions = torch.arange(kept.shape[0], device=kept.device) * kept.shape[1]
    return row_of_position[first_positions]


class MosaicBertForMaskedLM(MosaicBertPreTrainedModel):
    _tied_weights_keys = ["cls.decoder.weight"]

    def __init__(self, config: MosaicBertConfig):
        super().__init__(config)
        self.bert = MosaicBertModel(config, add_pooling_layer=False)
        self.cls = MosaicBertPredictionHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.cls.decoder = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MosaicBertMaskedLMOutput | tuple:
        """With `labels` (-100 where not masked), the last layer after attention and the head run on the
        masked tokens only, and the loss is the mean cross-entropy over masked tokens."""
        _check_unsupported(output_attentions, kwargs)
        attention_mask, token_type_ids = _defaults(input_ids, attention_mask, token_type_ids)
        if labels is None:
            out = self.bert(input_ids, attention_mask, token_type_ids, output_hidden_states=output_hidden_states,
                            return_dict=True)
            output = MosaicBertMaskedLMOutput(logits=self.cls(out.last_hidden_state), hidden_states=out.hidden_states)
            return _output(self, output, return_dict)

        is_masked = labels != IGNORE_INDEX
        unpadded = unpad(attention_mask, is_masked)
        # Targets in the order the subset rows come out (row-major), from the same indices, before the encoder runs.
        targets = labels.flatten().index_select(0, unpadded.indices.index_select(0, unpadded.subset_idx))
        out = self.bert(input_ids, attention_mask, token_type_ids, subset_mask=is_masked,
                        output_hidden_states=output_hidden_states, return_dict=True, unpadded=unpadded)
        logits = self.cls(out.last_hidden_state)
        # Sum / count rather than mean, so a batch without masked tokens gives 0, not NaN.
        loss = F.cross_entropy(logits.float(), targets, reduction="sum") / targets.numel() if targets.numel() else logits.sum() * 0.0
        output = MosaicBertMaskedLMOutput(loss=loss, logits=logits, labels=targets, hidden_states=out.hidden_states)
        return _output(self, output, return_dict)


class MosaicBertForSequenceClassification(MosaicBertPreTrainedModel):
    """Pooled first token -> dropout -> linear. Loss by `config.problem_type`, as in transformers:
    MSE for regression (num_labels == 1, e.g. STS-B), cross-entropy for single-label, BCE for multi-label."""

    def __init__(self, config: MosaicBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = MosaicBertModel(config, add_pooling_layer=True)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput | tuple:
        _check_unsupported(output_attentions, kwargs)
        attention_mask, token_type_ids = _defaults(input_ids, attention_mask, token_type_ids)
        first_tokens = torch.zeros_like(attention_mask, dtype=torch.bool)
        first_tokens[:, 0] = True  # the classifier reads only [CLS]: the last layer computes nothing else
        out = self.bert(input_ids, attention_mask, token_type_ids, subset_mask=first_tokens,
                        output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(out.pooler_output))
        loss = None
        if labels is not None:
            loss = self._loss(logits, labels)
        output = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
        return _output(self, output, return_dict)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1))
        if self.config.problem_type == "single_label_classification":
            return F.cross_entropy(logits.float().view(-1, self.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


class MosaicBertForTokenClassification(MosaicBertPreTrainedModel):
    """Every real token -> dropout -> linear (NER, tagging). The encoder and the classifier see real tokens only;
    `logits` are re-padded to `[batch, seq, num_labels]` (zeros at padding) for the caller. The loss is the mean
    cross-entropy over tokens whose label is not -100 (for words split into several subwords, the usual choice
    labels the first and sets -100 on the rest)."""

    def __init__(self, config: MosaicBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = MosaicBertModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> TokenClassifierOutput | tuple:
        _check_unsupported(output_attentions, kwargs)
        attention_mask, token_type_ids = _defaults(input_ids, attention_mask, token_type_ids)
        real = attention_mask != 0
        # Every real token is in the subset, so the encoder's output stays `[num_real_tokens, hidden]`.
        unpadded = unpad(attention_mask, real)
        out = self.bert(input_ids, attention_mask, token_type_ids, subset_mask=real,
                        output_hidden_states=output_hidden_states, return_dict=True, unpadded=unpadded)
        rows = self.classifier(self.dropout(out.last_hidden_state))
        batch, seq = input_ids.shape
        logits = pad(rows, unpadded.indices, batch * seq).view(batch, seq, -1)
        loss = None
        if labels is not None:
            targets = labels.flatten().index_select(0, unpadded.indices)
            # Sum / count of labelled tokens, so a batch without any gives 0, not NaN.
            losses = F.cross_entropy(rows.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
            loss = losses / (targets != IGNORE_INDEX).sum().clamp_min(1)
        output = TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
        return _output(self, output, return_dict)
