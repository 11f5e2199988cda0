"""Fine-tuning metrics on arrays of predictions and labels, computed by torchmetrics (installed with Composer,
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
from torchmetrics.functional.classification import (binary_f1_score, binary_matthews_corrcoef, multiclass_f1_score,
                                                    multiclass_matthews_corrcoef, multilabel_accuracy,
                                                    multilabel_exact_match, multilabel_f1_score)
from torchmetrics.functional.regression import (mean_absolute_error, mean_squared_error, pearson_corrcoef,
                                                spearman_corrcoef)


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of the positive class (1), as for QQP and MRPC."""
    return float(binary_f1_score(torch.as_tensor(predictions), torch.as_tensor(labels)))


def _single_valued(*values: torch.Tensor) -> bool:
    return any(v.unique().numel() < 2 for v in values)


def matthews(predictions: np.ndarray, labels: np.ndarray, num_classes: int = 2) -> float:
    """Matthews correlation (CoLA; the multiclass generalisation beyond two classes); 0 when a single class
    is predicted or present."""
    predictions, labels = torch.as_tensor(predictions), torch.as_tensor(labels)
    if _single_valued(predictions, labels):
        return 0.0
    if num_classes > 2:
        return float(multiclass_matthews_corrcoef(predictions, labels, num_classes))
    return float(binary_matthews_corrcoef(predictions, labels))


def _f1(average: str):
    def score(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
        """F1 over the classes present in the predictions or labels (as scikit-learn's), `average`d."""
        return float(multiclass_f1_score(torch.as_tensor(predictions), torch.as_tensor(labels), num_classes,
                                         average=average))
    return score


def _multilabel(function, **options):
    def score(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
        return float(function(torch.as_tensor(predictions), torch.as_tensor(labels).long(), num_classes, **options))
    return score


def _error(function):
    def score(predictions: np.ndarray, labels: np.ndarray) -> float:
        return float(function(torch.as_tensor(np.asarray(predictions, dtype=np.float64)),
                              torch.as_tensor(np.asarray(labels, dtype=np.float64))))
    return score


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



# The metrics a sequence task of each kind may name (own tasks, `metrics: [...]`; token classification's are
# glue/tagging.py's TAGGING_METRICS), each called as
# metric(predictions, labels, num_classes) for classification kinds and metric(predictions, labels) for
# regression. Multi-label predictions and labels are 0/1 arrays [examples, classes].
KIND_METRICS = {
    "classification": {
        "accuracy": lambda p, y, n: accuracy(p, y), "f1": lambda p, y, n: f1(p, y), "matthews": matthews,
        "macro_f1": _f1("macro"), "micro_f1": _f1("micro"), "weighted_f1": _f1("weighted"),
    },
    "multilabel": {
        "exact_match": _multilabel(multilabel_exact_match),  # every label of the example right
        "hamming_accuracy": _multilabel(multilabel_accuracy, average="micro"),  # share of (example, label) right
        "micro_f1": _multilabel(multilabel_f1_score, average="micro"),
        "macro_f1": _multilabel(multilabel_f1_score, average="macro"),
    },
    "regression": {"pearson": pearson, "spearman": spearman, "mse": _error(mean_squared_error),
                   "mae": _error(mean_absolute_error)},
}
DEFAULT_METRICS = {"classification": ("accuracy", "macro_f1"), "multilabel": ("micro_f1", "macro_f1"),
                   "regression": ("pearson", "spearman"), "token_classification": ("f1",)}
