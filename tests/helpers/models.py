"""A tiny MosaicBERT, a heavily padded batch, and a padded reference written from the formulas."""

from __future__ import annotations

import math

import torch

from mosaicbert.model import MosaicBertConfig, MosaicBertModel

VOCAB = 96


def tiny_config(**overrides) -> MosaicBertConfig:
    values = dict(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                  intermediate_size=80, hidden_dropout_prob=0.0, attention_backend="sdpa")
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
