"""Fast BERT-style encoder pretraining recipes (MosaicBERT, EarlyBERT) on Composer.

The model classes follow transformers' conventions and register with its Auto classes:

    from mosaicbert import MosaicBertConfig, MosaicBertForMaskedLM, MosaicBertForSequenceClassification
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Imported on first use (PEP 562): `import mosaicbert.config` and the command-line entries stay
# fast, since transformers and torch load only when a model class is asked for.
_LAZY = {
    "MosaicBertConfig": "mosaicbert.model.configuration_mosaicbert",
    "MosaicBertModel": "mosaicbert.model.modeling_mosaicbert",
    "MosaicBertForMaskedLM": "mosaicbert.model.modeling_mosaicbert",
    "MosaicBertForSequenceClassification": "mosaicbert.model.modeling_mosaicbert",
    "MosaicBertForTokenClassification": "mosaicbert.model.modeling_mosaicbert",
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mosaicbert' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
