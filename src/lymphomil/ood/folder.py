"""The OOD checks in a model folder: fitted beside the model on its training patients, saved
as ``ood.json``, loaded back by ``predict`` and ``run``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from lymphomil.evaluation import cvcache
from lymphomil.ood.check import OODCheck
from lymphomil.ood.state import SCHEMA_VERSION
from lymphomil.outputs import cv_cache

#: the fitted checks in a model folder (beside the referral rule)
OOD_JSON = "ood.json"


def pooled_features_of(model: Any) -> str | None:
    """The first pooled image features ``model`` reads (the cells the checks compare), or None
    for a model that reads no pooled image features (an attribute model: no checks)."""
    for spec, kind in model.required_features():
        if kind == "pooled":
            return spec.label()
    return None


def fit_ood_checks(model: Any, patients: Sequence[Any],
                   cache_dir: str | os.PathLike | None = None) -> OODCheck | None:
    """The checks fitted on a model's training ``patients`` (its features attached), on the
    cells that model reads; None when it reads no pooled image features or there are too few
    patients to fit them (then no patient is referred for being unlike the cohort)."""
    features = pooled_features_of(model)
    if features is None or len(patients) < 5:
        return None
    return OODCheck(features=features, cache_dir=cache_dir).fit(patients)


def load_ood_checks(folder: str | os.PathLike, cache_dir: str | os.PathLike | None = None
                    ) -> OODCheck | None:
    """The checks saved in a model folder, or None when it has none (trained without them)."""
    path = os.path.join(folder, OOD_JSON)
    return OODCheck.load(path, cache_dir=cache_dir) if os.path.isfile(path) else None


def held_out_flags(model: Any, patients: Sequence[Any], cache_dir: str | os.PathLike | None = None,
                   *, name: str = "model") -> np.ndarray | None:
    """Per training patient, whether the checks flag it when held out
    (``OODCheck.held_out_flagged_``): the referrals the checks will make among clean new
    patients, which the referral rule leaves out of its budget. Kept in the CV-result cache, so
    a warm run does not refit the checks; None where :func:`fit_ood_checks` gives no checks."""
    if pooled_features_of(model) is None or len(patients) < 5:
        return None
    key = cvcache.cv_key(model, f"{name}#ood-held-out-v{SCHEMA_VERSION}", patients, folds=5,
                         repeats=0, seed=0)
    rows, _ = cvcache.cached_rows(
        cv_cache(cache_dir), key, f"{name}#ood-held-out", [str(p.id) for p in patients],
        lambda: (fit_ood_checks(model, patients, cache_dir).held_out_flagged_[None, :], {}),
        lambda rows, _params: len(rows) == 1)
    return rows[0] > 0.5
