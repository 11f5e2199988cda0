"""The original MosaicBERT release (hub `mosaicml/mosaic-bert-base`, code `bert_layers.py` of mosaicml/examples)
read into this package's layout.

That release ships `config.json` with `model_type: "bert"` (transformers' own BERT type, so the config
alone does not say which architecture it is), `alibi_starting_size`, an `auto_map` into `bert_layers`,
and `pytorch_model.bin` with these parameter names (N = layer):

    bert.embeddings.{word_embeddings, token_type_embeddings, LayerNorm}
    bert.encoder.layer.N.attention.self.Wqkv            fused q, k, v with bias, rows (q|k|v, head, head_dim)
    bert.encoder.layer.N.attention.output.{dense, LayerNorm}
    bert.encoder.layer.N.mlp.gated_layers               no bias; rows [0, I) gated by GELU, [I, 2I) not
    bert.encoder.layer.N.mlp.{wo, layernorm}
    bert.pooler.dense                                   classifiers only
    cls.predictions.transform.{dense, LayerNorm}        MLM head; LayerNorm eps fixed at 1e-12 there
    cls.predictions.decoder                             weight tied to the word embeddings, own bias
    classifier                                          classifiers only

The published code computes what `modeling_mosaicbert.py` computes, so the mapping renames only: the
same Wqkv row order, GeGLU halves (GELU on the first), ALiBi slopes and post-LayerNorm placement. ALiBi
there is a plain tensor attribute (`alibi`), never in the state dict. The vocabulary keeps the rows the
checkpoint has (30528 for mosaic-bert-base, already a multiple of 64), so logits stay those of the release.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from mosaicbert.errors import UserError

RENAMES = (  # (pattern in the release, replacement here), applied in order
    (r"\.attention\.self\.Wqkv\.", ".attention.Wqkv."),
    (r"\.attention\.output\.dense\.", ".attention.dense."),
    (r"\.attention\.output\.LayerNorm\.", ".attention.LayerNorm."),
    (r"^cls\.predictions\.transform\.", "cls."),
    (r"^cls\.predictions\.decoder\.", "cls.decoder."),
)
# Buffers some versions of bert_layers.py register and this architecture rebuilds or does not have.
DROPPED = re.compile(r"(^|\.)(alibi|token_type_ids|position_ids)$")
HEAD_LAYER_NORM_EPS = 1e-12  # BertPredictionHeadTransform's LayerNorm ignores config.layer_norm_eps
# Config keys of the release with no meaning here (positions come from ALiBi; the rest is transformers' BERT).
IGNORED_CONFIG_KEYS = ("alibi_starting_size", "max_position_embeddings", "position_embedding_type", "use_cache",
                       "tokenizer_name", "gradient_checkpointing", "auto_map", "architectures", "model_type",
                       "transformers_version", "_name_or_path")


def is_original_config(config: dict[str, Any]) -> bool:
    """A config.json of the original release: transformers' BERT type plus the release's markers."""
    auto_map = config.get("auto_map") or {}
    from_bert_layers = any("bert_layers." in str(target) for target in auto_map.values())
    return config.get("model_type") == "bert" and (from_bert_layers or "alibi_starting_size" in config)


def is_original_state(state: dict[str, torch.Tensor]) -> bool:
    return any(".attention.self.Wqkv." in key for key in state)


def convert_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The release's parameter names -> this package's (`bert.` prefix kept as found)."""
    converted = {}
    for key, value in state.items():
        if DROPPED.search(key):
            continue
        for pattern, replacement in RENAMES:
            key = re.sub(pattern, replacement, key)
        converted[key] = value
    return converted


def convert_config(config: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A MosaicBertConfig dict for the release's config.json and weights."""
    eps = config.get("layer_norm_eps", HEAD_LAYER_NORM_EPS)
    if eps != HEAD_LAYER_NORM_EPS and any(key.startswith("cls.") for key in state):
        raise UserError(f"this original-MosaicBERT checkpoint has layer_norm_eps={eps}, but its MLM head used "
                        f"{HEAD_LAYER_NORM_EPS} regardless; this package's head follows layer_norm_eps, so its "
                        "logits would differ. Only checkpoints with the release's default 1e-12 convert exactly.")
    converted = {key: value for key, value in config.items() if key not in IGNORED_CONFIG_KEYS}
    embeddings = next((value for key, value in state.items() if key.endswith("embeddings.word_embeddings.weight")), None)
    if embeddings is not None:
        converted["vocab_size"] = embeddings.shape[0]
    return converted
