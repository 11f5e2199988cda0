"""GLUE metrics on arrays of predictions and labels, computed by torchmetrics (installed with Composer,
and what the MosaicBERT reference recipes score with), in float64 for the correlations.

Two edges follow GLUE's scorer (scikit-learn / scipy) rather than torchmetrics' own choice:
- Matthews correlation with a single predicted or true class is 0 (torchmetrics substitutes a
  limit that reaches 0.41 for predictions [1, 1, 1] against labels [1, 0, 1]).
- Pearson and Spearman correlation with constant predictions or labels are NaN (torchmetrics'
  Spearman returns 0), so a regression run that collapsed to one value stands out in the report.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import binary_f1_score, binary_matthews_corrcoef
from torchmetrics.functional.regression import pearson_corrcoef, spearman_corrcoef


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of the positive class (1), as for QQP and MRPC."""
    return float(binary_f1_score(torch.as_tensor(predictions), torch.as_tensor(labels)))


def _single_valued(*values: torch.Tensor) -> bool:
    return any(v.unique().numel() < 2 for v in values)


def matthews(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation (CoLA); 0 when a class is never predicted or never present."""
    predictions, labels = torch.as_tensor(predictions), torch.as_tensor(labels)
    if _single_valued(predictions, labels):
        return 0.0
    return float(binary_matthews_corrcoef(predictions, labels))


def _correlation(function, predictions: np.ndarray, labels: np.ndarray) -> float:
    x = torch.as_tensor(np.asarray(predictions, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    if _single_valued(x, y):
        return float("nan")
    return float(function(x, y))


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    return _correlation(pearson_corrcoef, predictions, labels)


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Spearman rank correlation (STS-B), ties sharing their average rank."""
    return _correlation(spearman_corrcoef, predictions, labels)


METRICS = {"accuracy": accuracy, "f1": f1, "matthews": matthews, "pearson": pearson, "spearman": spearman}
