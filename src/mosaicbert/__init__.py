"""Fast BERT-style encoder pretraining recipes (MosaicBERT, EarlyBERT) on Composer."""

__version__ = "0.1.0"
