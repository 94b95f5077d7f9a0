"""A model's inputs: each patient's cached instance features read and checked, standardised,
and padded into batches (:func:`pad_bags` — cells of two patients are never mixed in one row).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from lymphomil.runtime.errors import LymphomilError

if TYPE_CHECKING:  # pad_bags works on the tensors it is given: the readers need no torch
    import torch


_NDIM = {"pooled": 2, "views": 3, "map": 4, "trunk": 4}


def read_bags(patients: np.ndarray, spec: Any, kind: str,
              n_features: int | None = None) -> list[np.ndarray]:
    """Each patient's cached instance features as float32, shapes and values checked.

    ``n_features``: the feature dimension the model was trained on (checked at predict time).
    """
    bags = []
    for patient in patients:
        bag = np.asarray(patient.bag(spec, kind), dtype=np.float32)
        if bag.ndim != _NDIM[kind] or bag.shape[0] == 0:
            raise LymphomilError(
                f"{kind!r} features of patient {patient.id} have shape {bag.shape}",
                fix="rebuild the feature cache (`lymphomil cache clear`, then "
                    "`lymphomil features`)")
        if n_features is None:
            n_features = int(bag.shape[1])
        elif bag.shape[1] != n_features:
            raise LymphomilError(
                f"patient {patient.id} has {bag.shape[1]}-d features; the model expects "
                f"{n_features}-d", fix="use the same backbone as at training time")
        if not np.isfinite(bag).all():
            raise LymphomilError(f"{kind!r} features of patient {patient.id} hold NaN/inf",
                                 fix="rebuild the feature cache for this patient")
        bags.append(bag)
    return bags


def pad_bags(bags: Sequence[torch.Tensor], pad_value: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-patient bags ``(n_i, *rest)`` into ``X (B, N, *rest)`` and ``mask (B, N)``.

    Row ``b`` holds patient ``b``'s instances only, followed by padding (``mask`` False).
    """
    if not bags:
        raise ValueError("no bags to pad")
    n_max = max(int(b.shape[0]) for b in bags)
    rest = tuple(bags[0].shape[1:])
    X = bags[0].new_full((len(bags), n_max, *rest), pad_value)  # (B, N, *rest)
    mask = bags[0].new_zeros((len(bags), n_max)).bool()  # (B, N)
    for b, bag in enumerate(bags):
        n = int(bag.shape[0])
        X[b, :n] = bag  # (n, *rest)
        mask[b, :n] = True
    return X, mask


def fit_standardizer(rows: np.ndarray, axis: int | tuple[int, ...] = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale (std, 1 where constant) over ``axis``; float32."""
    rows = np.asarray(rows, dtype=np.float64)
    mean = rows.mean(axis=axis)
    scale = rows.std(axis=axis)
    scale = np.where(scale > 1e-8, scale, 1.0)
    return mean.astype(np.float32), scale.astype(np.float32)
