"""Structured pruning of MosaicBERT: attention heads and GeGLU units (EarlyBERT).

Search coefficients (one per head, one per GeGLU unit) scale a head's output and a unit's
`GELU(gate) * value`; `fold_coefficients` moves them into the following projection, exactly,
and removes them. `prune_layer` then cuts the rows and columns of removed heads and units:

- a head h of `Wqkv` is rows `t * inner + h * d ... + d` for t in q, k, v, and columns
  `h * d ... + d` of the attention output `dense`; the head keeps its original ALiBi slope;
- a GeGLU unit j is gate row j and value row I + j of `gated_layers` (always together) and
  column j of `wo`.

Every function that replaces a parameter reports `(old, new, dim, index)` so optimizer
moments can be sliced the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mosaicbert.model.modeling_mosaicbert import MosaicBertAttention, MosaicBertForMaskedLM, MosaicBertGLU


@dataclass
class Replacement:
    old: nn.Parameter
    new: nn.Parameter
    dim: int
    index: torch.Tensor
    scale: torch.Tensor | None = None  # folding: the new weight is the old one times `scale` along `dim`


def _replace(module: nn.Module, name: str, dim: int, index: torch.Tensor) -> Replacement:
    old = getattr(module, name)
    new = nn.Parameter(old.detach().index_select(dim, index.to(old.device)).clone(), requires_grad=old.requires_grad)
    setattr(module, name, new)
    return Replacement(old, new, dim, index)


def layers(model: MosaicBertForMaskedLM | nn.Module):
    bert = model.bert if hasattr(model, "bert") else model
    return bert.encoder.layer


def describe_pruning(config) -> str | None:
    """How a model with this config was structurally pruned ("heads per layer [8, 8] of 12, ..."),
    or None when every layer has all its heads and units (a ticket that pruned nothing included)."""
    layer_range = range(config.num_hidden_layers)
    heads = [len(config.layer_head_indices(i)) for i in layer_range]
    units = [config.layer_intermediate_size(i) for i in layer_range]
    if all(h == config.num_attention_heads for h in heads) and all(u == config.intermediate_size for u in units):
        return None
    return (f"heads per layer {heads} of {config.num_attention_heads}, "
            f"GeGLU units per layer {units} of {config.intermediate_size}")


# --------------------------------------------------------------------------- coefficients


def add_coefficients(model: nn.Module) -> list[nn.Parameter]:
    """One coefficient per head and per GeGLU unit, all 1.0 (the model's function is unchanged)."""
    params = []
    for layer in layers(model):
        attn, mlp = layer.attention, layer.mlp
        device = attn.Wqkv.weight.device
        attn.head_coef = nn.Parameter(torch.ones(attn.num_heads, device=device))
        mlp.unit_coef = nn.Parameter(torch.ones(mlp.intermediate_size, device=device))
        params += [attn.head_coef, mlp.unit_coef]
    return params


def coefficients(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(head coefficients per layer, unit coefficients per layer)."""
    heads, units = [], []
    for layer in layers(model):
        heads.append(layer.attention.head_coef)
        units.append(layer.mlp.unit_coef)
    return heads, units


# Each coefficient scales the input columns of the projection that follows it, in the same module.
FOLDED_INTO = {"head_coef": "dense", "unit_coef": "wo"}


def column_scale(coef: torch.Tensor, columns: int) -> torch.Tensor:
    """One coefficient per head (or unit) as one scale per input column of the projection that follows."""
    return coef.repeat_interleave(columns // coef.numel())


def fold_coefficients(model: nn.Module) -> list[Replacement]:
    """Scale the columns of `dense` (per head) and `wo` (per unit) by the coefficients, then drop them."""
    replaced = []
    for layer in layers(model):
        for module in (layer.attention, layer.mlp):
            for name, target in FOLDED_INTO.items():
                coef = getattr(module, name, None)
                if coef is not None:
                    linear = getattr(module, target)
                    replaced.append(_scale_columns(linear, column_scale(coef.detach(), linear.weight.shape[1])))
                    setattr(module, name, None)
    return replaced


def _scale_columns(linear: nn.Linear, scale: torch.Tensor) -> Replacement:
    index = torch.arange(linear.weight.shape[1])
    old = linear.weight
    linear.weight = nn.Parameter(old.detach() * scale[None, :], requires_grad=old.requires_grad)
    return Replacement(old, linear.weight, 1, index, scale)


# --------------------------------------------------------------------------- pruning


def prune_heads(attn: MosaicBertAttention, keep: Sequence[int]) -> list[Replacement]:
    """Keep heads `keep` (positions among the layer's current heads, ascending)."""
    keep = torch.as_tensor(sorted(keep), dtype=torch.long)
    if len(keep) == attn.num_heads:
        return []
    d, inner = attn.head_dim, attn.num_heads * attn.head_dim
    within = (keep[:, None] * d + torch.arange(d)[None, :]).flatten()  # rows of kept heads inside q (or k, v)
    rows = torch.cat([t * inner + within for t in range(3)])
    replaced = [_replace(attn.Wqkv, "weight", 0, rows), _replace(attn.Wqkv, "bias", 0, rows),
                _replace(attn.dense, "weight", 1, within)]
    if attn.head_coef is not None:
        replaced.append(_replace(attn, "head_coef", 0, keep))
    attn.alibi_slopes = attn.alibi_slopes[keep.to(attn.alibi_slopes.device)]
    attn.head_indices = tuple(attn.head_indices[i] for i in keep.tolist())
    attn.num_heads = len(keep)
    attn.Wqkv.out_features = 3 * len(keep) * d
    attn.dense.in_features = len(keep) * d
    return replaced


def prune_units(mlp: MosaicBertGLU, keep: Sequence[int]) -> list[Replacement]:
    """Keep GeGLU units `keep`: each unit's gate and value rows go (or stay) together."""
    keep = torch.as_tensor(sorted(keep), dtype=torch.long)
    if len(keep) == mlp.intermediate_size:
        return []
    rows = torch.cat([keep, mlp.intermediate_size + keep])
    replaced = [_replace(mlp.gated_layers, "weight", 0, rows), _replace(mlp.wo, "weight", 1, keep)]
    if mlp.unit_coef is not None:
        replaced.append(_replace(mlp, "unit_coef", 0, keep))
    mlp.intermediate_size = len(keep)
    mlp.gated_layers.out_features = 2 * len(keep)
    mlp.wo.in_features = len(keep)
    return replaced


def prune(model: MosaicBertForMaskedLM, keep_heads: Sequence[Sequence[int]], keep_units: Sequence[Sequence[int]]) -> list[Replacement]:
    """Prune every layer and record the new shape in `model.config` (original head numbers, unit counts),
    so checkpoints of the pruned model rebuild, resume and fine-tune with the right widths."""
    config = model.config
    replaced = []
    head_indices, unit_counts = [], []
    for i, layer in enumerate(layers(model)):
        original = config.layer_head_indices(i)
        replaced += prune_heads(layer.attention, keep_heads[i])
        replaced += prune_units(layer.mlp, keep_units[i])
        head_indices.append([original[h] for h in sorted(keep_heads[i])])
        unit_counts.append(layer.mlp.intermediate_size)
    config.head_indices_per_layer = head_indices
    config.intermediate_size_per_layer = unit_counts
    return replaced


def reshape_to(model: MosaicBertForMaskedLM, head_indices: list[list[int]] | None, unit_counts: list[int] | None) -> list[Replacement]:
    """Give a model the widths of a saved pruned config (its weights are about to be loaded over these)."""
    config = model.config
    keep_heads, keep_units = [], []
    for i, layer in enumerate(layers(model)):
        current = config.layer_head_indices(i)
        wanted = head_indices[i] if head_indices is not None else current
        missing = set(wanted) - set(current)
        if missing:
            raise ValueError(f"layer {i}: the saved model has heads {sorted(missing)} that this model no longer has")
        keep_heads.append([current.index(h) for h in wanted])
        count = unit_counts[i] if unit_counts is not None else layer.mlp.intermediate_size
        keep_units.append(list(range(count)))
    return prune(model, keep_heads, keep_units)


def slice_optimizer_state(optimizers: Sequence[torch.optim.Optimizer], replaced: Sequence[Replacement]) -> None:
    """Put each new parameter where the old one was and cut its Adam moments to the kept rows or columns
    (the step count stays), so training continues as if the removed units had never existed."""
    for optimizer in optimizers:
        for replacement in replaced:
            for group in optimizer.param_groups:
                for position, param in enumerate(group["params"]):
                    if param is replacement.old:
                        group["params"][position] = replacement.new
            if replacement.old in optimizer.state:
                state = optimizer.state.pop(replacement.old)
                for key, value in state.items():
                    if torch.is_tensor(value) and value.shape == replacement.old.shape:
                        value = value.index_select(replacement.dim, replacement.index.to(value.device))
                        if replacement.scale is not None:
                            value = value / _moment_scale(key, replacement, value)
                        state[key] = value
                optimizer.state[replacement.new] = state


def _moment_scale(key: str, replacement: Replacement, value: torch.Tensor) -> torch.Tensor:
    """After W' = W * c the gradient is g / c: first moments divide by c, second moments by c^2.
    A coefficient of 0 (a unit about to be pruned) leaves its moments as they are."""
    c = replacement.scale.to(value.device, value.dtype)
    c = torch.where(c == 0, torch.ones_like(c), c)
    c = c ** 2 if "sq" in key else c
    shape = [1] * value.dim()
    shape[replacement.dim] = -1
    return c.view(shape)


def drop_from_optimizer(optimizers: Sequence[torch.optim.Optimizer], params: Sequence[torch.Tensor]) -> None:
    """Remove parameters (folded coefficients) from their groups and forget their state; groups stay in place."""
    ids = {id(p) for p in params}
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        for param in params:
            optimizer.state.pop(param, None)
