"""The MosaicBERT encoder classes, registered with transformers' Auto classes.

The Composer wrappers (composer.py) are registered for `model: {name: ...}` in YAML
by builders.py, with every other registry entry.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from mosaicbert.model.configuration_mosaicbert import MosaicBertConfig
from mosaicbert.model.modeling_mosaicbert import (
    MosaicBertForMaskedLM,
    MosaicBertForSequenceClassification,
    MosaicBertForTokenClassification,
    MosaicBertModel,
)

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
    "MosaicBertConfig",
    "MosaicBertForMaskedLM",
    "MosaicBertForSequenceClassification",
    "MosaicBertForTokenClassification",
    "MosaicBertModel",
]
