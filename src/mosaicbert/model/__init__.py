"""Encoder models and their Composer wrappers, registered by name for `model: {name: ...}` in YAML."""

from mosaicbert import registry
from mosaicbert.model.hf_bert import build_hf_bert

registry.models.register("hf_bert", build_hf_bert, provided=("tokenizer",))

__all__ = ["build_hf_bert"]
