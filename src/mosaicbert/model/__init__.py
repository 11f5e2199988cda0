"""Encoder models and their Composer wrappers, registered by name for `model: {name: ...}` in YAML."""

from mosaicbert import registry
from mosaicbert.model.configuration_mosaicbert import MosaicBertConfig
from mosaicbert.model.hf_bert import build_hf_bert
from mosaicbert.model.modeling_mosaicbert import (
    MosaicBertForMaskedLM,
    MosaicBertForSequenceClassification,
    MosaicBertModel,
)
from mosaicbert.model.mosaic_bert import ComposerMosaicBert, build_mosaic_bert

registry.models.register("hf_bert", build_hf_bert, provided=("tokenizer",))
registry.models.register("mosaic_bert", build_mosaic_bert, provided=("tokenizer",))

__all__ = [
    "ComposerMosaicBert",
    "MosaicBertConfig",
    "MosaicBertForMaskedLM",
    "MosaicBertForSequenceClassification",
    "MosaicBertModel",
    "build_hf_bert",
    "build_mosaic_bert",
]
