"""Hugging Face export: a trained model as a folder that loads with plain transformers (writer.py), checked for
logit parity in a process without this package (parity.py, isolated_load.py), with a model card (model_card.py)."""

from mosaicbert.export.parity import ParityReport, check_parity
from mosaicbert.export.writer import export_model

__all__ = ["ParityReport", "check_parity", "export_model"]
