"""Encoder models and their Composer wrappers, registered by name for `model: {name: ...}` in YAML."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from mosaicbert import registry
from mosaicbert.model.configuration_mosaicbert import MosaicBertConfig
from mosaicbert.model.hf_bert import build_hf_bert
from mosaicbert.model.modeling_mosaicbert import (
    MosaicBertForMaskedLM,
    MosaicBertForSequenceClassification,
    MosaicBertForTokenClassification,
    MosaicBertModel,
)
from mosaicbert.model.mosaic_bert import ComposerMosaicBert, build_mosaic_bert

registry.models.register("hf_bert", build_hf_bert, provided=("tokenizer",))
registry.models.register("mosaic_bert", build_mosaic_bert, provided=("tokenizer",))

# transformers' Auto classes by the class each one builds for a MosaicBERT folder.
AUTO_CLASSES = {
    AutoModel: MosaicBertModel,
    AutoModelForMaskedLM: MosaicBertForMaskedLM,
    AutoModelForSequenceClassification: MosaicBertForSequenceClassification,
    AutoModelForTokenClassification: MosaicBertForTokenClassification,
}
# With the package imported, `AutoModelForMaskedLM.from_pretrained(folder)` finds these classes by
# `model_type` (no remote code runs) ...
AutoConfig.register(MosaicBertConfig.model_type, MosaicBertConfig, exist_ok=True)
for _auto_class, _model_class in AUTO_CLASSES.items():
    _auto_class.register(MosaicBertConfig, _model_class, exist_ok=True)
# ... and `save_pretrained` copies modeling_mosaicbert.py and configuration_mosaicbert.py beside the
# weights and names them in config.json's `auto_map`, so the folder also loads without the package.
MosaicBertConfig.register_for_auto_class()
for _auto_class, _model_class in AUTO_CLASSES.items():
    _model_class.register_for_auto_class(_auto_class.__name__)

__all__ = [
    "AUTO_CLASSES",
    "ComposerMosaicBert",
    "MosaicBertConfig",
    "MosaicBertForMaskedLM",
    "MosaicBertForSequenceClassification",
    "MosaicBertForTokenClassification",
    "MosaicBertModel",
    "build_hf_bert",
    "build_mosaic_bert",
]
