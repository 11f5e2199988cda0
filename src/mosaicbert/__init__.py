"""Fast BERT-style encoder pretraining recipes (MosaicBERT, EarlyBERT) on Composer.

The model classes follow transformers' conventions and register with its Auto classes:

    from mosaicbert import MosaicBertConfig, MosaicBertForMaskedLM, MosaicBertForSequenceClassification
"""

__version__ = "0.1.0"

from mosaicbert.model.configuration_mosaicbert import MosaicBertConfig  # noqa: E402
from mosaicbert.model.modeling_mosaicbert import (  # noqa: E402
    MosaicBertForMaskedLM,
    MosaicBertForSequenceClassification,
    MosaicBertModel,
)

__all__ = ["MosaicBertConfig", "MosaicBertForMaskedLM", "MosaicBertForSequenceClassification", "MosaicBertModel"]
