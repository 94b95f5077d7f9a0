"""The building blocks several model families share, one definition each (issue 23 item 3).

* :func:`top_k_mean` / :func:`top_k_indices`: top-k pooling of cell scores (Campanella et al.
  2019) for ``instance``, ``cell-topk`` and ``topk-trunk``; ``k <= 0`` or ``k >= n`` means all.
* :func:`attribute_start` and :func:`start_linear_from_attributes`: a classifier that starts as
  the logistic regression on the attributes, image weights 0 (``abmil-attr``, ``topk-trunk``).
* :func:`fit_platt` / :func:`apply_platt`: Platt calibration, a balanced logistic regression of
  the labels on one score (``instance``, ``cell-topk``) or on several (the fusion's stacker).
* :func:`freeze_batchnorm` and :func:`two_group_adam`: a pretrained network fine-tuned with its
  batch norms in eval mode, its head and body at two learning rates (``mil-e2e``, the trunk
  models).

The attribute vector itself is :func:`lymphomil.models.attributes.attribute_matrix`.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np


def _k(k: int, n: int) -> int:
    """The number of cells top-k pooling takes from a bag of ``n``: all of them when ``k`` is 0
    or exceeds the bag."""
    k = int(k)
    return n if k <= 0 or k >= n else k


def top_k_mean(scores: Any, k: int) -> Any:
    """Mean of the ``k`` largest ``scores`` of one bag: a float for a numpy array, a 0-d tensor
    (differentiable) for a torch tensor."""
    n = int(scores.shape[0])
    k = _k(k, n)
    if isinstance(scores, np.ndarray):
        return float((scores if k == n else np.partition(scores, n - k)[n - k:]).mean())
    return scores.topk(k).values.mean()


def top_k_indices(scores: Any, k: int) -> Any:
    """Indices (ascending) of the ``k`` largest cell scores of one bag (a torch tensor)."""
    return scores.topk(_k(k, int(scores.shape[0]))).indices.sort().values


def _logistic(C: float = 1.0, balanced: bool = True):
    from sklearn.linear_model import LogisticRegression  # loads on first fit: `--help` stays fast

    return LogisticRegression(C=C, class_weight="balanced" if balanced else None)


def fit_platt(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """(slopes (k,), intercept) of a class-balanced logistic regression (C = 1) of ``y`` on the
    scores ``z`` ((n,) or (n, k)): the map from scores to P(malignant)."""
    z = np.asarray(z, dtype=np.float64)
    lr = _logistic().fit(z.reshape(len(z), -1), y)
    return lr.coef_[0].astype(np.float64), float(lr.intercept_[0])


def apply_platt(z: np.ndarray, slopes: np.ndarray, intercept: float) -> np.ndarray:
    """The calibrated logit of scores ``z`` ((n,) or (n, k)) under a :func:`fit_platt` map."""
    z = np.asarray(z, dtype=np.float64)
    slopes = np.asarray(slopes, dtype=np.float64)
    if z.ndim == 1:
        return slopes[0] * z + intercept
    out = intercept
    for j in range(z.shape[1]):  # left to right: the order the fitted numbers were checked in
        out = out + z[:, j] * slopes[j]
    return out


def attribute_start(A: np.ndarray, y: np.ndarray, balance: str) -> tuple[np.ndarray, float]:
    """A logistic regression (C = 1) on the standardised attributes ``A`` (n, a): a
    classifier's starting point, (weights (a,) float32, intercept)."""
    lr = _logistic(balanced=balance != "none").fit(A, y)
    return lr.coef_[0].astype(np.float32), float(lr.intercept_[0])


def start_linear_from_attributes(layer: Any, coef: Any, intercept: float) -> None:
    """``layer`` (a ``torch.nn.Linear`` with one output whose *last* inputs are the attributes)
    starts as the attributes' logistic regression: image weights 0, attribute weights ``coef``.
    The images then learn what the attributes miss instead of drowning them."""
    import torch

    coef = torch.as_tensor(coef)
    with torch.no_grad():
        d = layer.in_features - coef.shape[0]
        layer.weight[0, :d] = 0.0
        layer.weight[0, d:] = coef.to(layer.weight.dtype)
        layer.bias.fill_(float(intercept))


def freeze_batchnorm(module: Any) -> None:
    """Every batch norm of ``module`` in eval mode (its pretrained statistics, no update): a
    cell's output then depends on that cell alone."""
    from torch import nn

    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def two_group_adam(head: Iterable, body: Any, lr: float, body_lr: float | None,
                   weight_decay: float):
    """Adam over the head's parameters at ``lr`` and the pretrained ``body`` module's at
    ``body_lr`` (``None``: ``lr``; 0: the body frozen)."""
    import torch

    body_lr = lr if body_lr is None else body_lr
    groups = [{"params": head, "lr": lr}]
    if body_lr > 0:
        groups.append({"params": body.parameters(), "lr": body_lr})
    else:
        body.requires_grad_(False)
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
