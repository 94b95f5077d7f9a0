"""Every metric of lymphomil, shared by the harness and the models (numpy; scipy on first use;
the bottom layer)."""

from __future__ import annotations

import numpy as np


def balanced_accuracy(pred: np.ndarray, y: np.ndarray,
                      mask: np.ndarray | None = None) -> np.ndarray:
    """Balanced accuracy of boolean calls ``pred`` against labels ``y`` along the last axis
    (vectorised over leading rows, e.g. bootstrap draws); nan where a class is absent."""
    pred = np.asarray(pred, dtype=bool)
    if mask is None:
        mask = np.ones_like(y, dtype=bool)
    pos, neg = (y == 1) & mask, (y == 0) & mask
    n_pos, n_neg = pos.sum(-1), neg.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = (pred & pos).sum(-1) / n_pos
        tnr = (~pred & neg).sum(-1) / n_neg
    out = (tpr + tnr) / 2
    return np.where((n_pos > 0) & (n_neg > 0), out, np.nan)


def balanced_log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Class-balanced log-loss: the mean over classes of each class's mean log-loss."""
    y = np.asarray(y)
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    per_class = [-np.mean(np.log(np.where(y[y == c] == 1, p[y == c], 1 - p[y == c])))
                 for c in (0, 1) if np.any(y == c)]
    return float(np.mean(per_class))


def logit(p: np.ndarray, eps: float) -> np.ndarray:
    """log(p / (1 - p)) of ``p`` clipped to [eps, 1 - eps] (float64).

    The clip is an explicit argument because its callers' fitted numbers depend on it: the
    instance model's Platt map was fitted with 1e-4 (a ``vote`` score of exactly 0 or 1), the
    fusion's stacker with 1e-6.
    """
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p / (1 - p))


def roc_auc(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ROC AUC of scores ``proba`` against labels ``y`` along the last axis (rank formula,
    vectorised over leading rows); nan where a class is absent."""
    from scipy.stats import (
        rankdata,  # scipy and scikit-learn load on first use: `--help` stays fast
    )

    ranks = rankdata(proba, axis=-1)
    n_pos = (y == 1).sum(-1)
    n_neg = (y == 0).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * (y == 1)).sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def metrics_of(proba: np.ndarray, y: np.ndarray, hard: np.ndarray,
               threshold: float = 0.5) -> dict[str, np.ndarray]:
    """All metrics; inputs may carry leading batch axes (bootstrap), patients on the last axis."""
    pred = proba >= threshold
    positive = y == 1
    tp = (pred & positive).sum(-1)
    fp = (pred & ~positive).sum(-1)
    fn = (~pred & positive).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    return {
        "balanced_accuracy": balanced_accuracy(pred, y),
        "accuracy": (pred == positive).mean(-1),
        "f1": f1,
        "roc_auc": roc_auc(proba, y),
        "hard_balanced_accuracy": balanced_accuracy(pred, y, hard),
    }
