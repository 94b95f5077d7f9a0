"""What every flow starts from: the labelled patients of a folder (or given from Python), and the
registered models it runs, with their features overridden when asked (the features are attached
from the feature cache: :func:`lymphomil.flows.caches.attach_features`)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from lymphomil.data.cohort import (
    Cohort,
    LabelledSet,
    as_patient_array,
    labelled_patients,
    labels_of,
    load_cohort,
)
from lymphomil.flows.options import check_folds_against
from lymphomil.models.base import PatientModel, create_model
from lymphomil.models.checks import cv_minimum
from lymphomil.runtime.errors import LymphomilError


def as_labelled(patients: Cohort | Iterable[Any]) -> LabelledSet:
    """A cohort's labelled patients, or labelled patients given as they are (the Python API)."""
    if isinstance(patients, Cohort):
        return labelled_patients(patients)
    patients = as_patient_array(list(patients))
    return LabelledSet(None, patients, labels_of(patients))


def load_labelled(data: Path, *, reference_date: date, on_error: str = "raise",
                  cache_dir: Path | None = None, folds: int | None = None,
                  folds_option: str = "--folds") -> LabelledSet:
    """The labelled patients of the folder ``data`` (their cohort in ``.cohort``); with
    ``folds``, checked against the smallest class before any feature is computed."""
    cohort = load_cohort(data, reference_date=reference_date, on_error=on_error,
                         cache_dir=cache_dir)
    labelled = labelled_patients(cohort)
    if folds is not None:
        check_folds_against(folds, labelled.y, folds_option)
    return labelled


def configure_model(name: str, features: str | None = None, **overrides: object) -> PatientModel:
    """A registered model, with every image part's features overridden when asked."""
    model = create_model(name, **overrides)
    if features:
        _override_features(model, features)
    return model


def _override_features(model: PatientModel, features: str) -> None:
    params = model.get_params(deep=False)
    if "features" in params:
        model.set_params(features=features)
    for value in params.values():
        for part in (value if isinstance(value, (tuple, list)) else (value,)):
            if isinstance(part, PatientModel):  # a nested model, or one of an ensemble's members
                _override_features(part, features)


def check_can_fit(model: PatientModel, name: str, y: np.ndarray,
                  folds: int | None = None) -> None:
    """Stop, stating the minimum, when the classes of ``y`` are too small to fit ``model``
    (``minimum_per_class``) — with ``folds``, in every training part of a CV of that many
    folds: a cohort too small is a message, never a failure inside a fit."""
    counts = np.bincount(np.asarray(y, dtype=int), minlength=2)
    need = model.minimum_per_class()
    have = (f"the labelled patients hold {counts[0]} reactive (0) and {counts[1]} malignant "
            "(1)")
    why = " (it tunes itself by inner CV)" if need > 1 else ""
    other = "or choose a model that needs fewer (`lymphomil models`)"
    if folds is None:
        if counts.min() < need:
            raise LymphomilError(f"{name} needs at least {need} labelled patients of each class "
                                 f"to be fitted{why}; {have}",
                                 fix=f"add labelled patients, {other}")
        return
    total = cv_minimum(need, folds, adaptive=False)
    if counts.min() < total:
        fewer = (f"use fewer folds (2 folds need {cv_minimum(need, 2, adaptive=False)} of "
                 "each), " if folds > 2 else "")
        raise LymphomilError(
            f"cross-validating {name} with {folds} folds needs at least {total} labelled "
            f"patients of each class: each training part must hold {need} of each to fit "
            f"it{why}; {have}", fix=f"add labelled patients, {fewer}{other}")
