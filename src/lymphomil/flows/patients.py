"""What every flow starts from: the labelled patients of a folder (or given from Python), and the
registered models it runs, with their features overridden when asked (the features are attached
from the feature cache: :func:`lymphomil.flows.caches.attach_features`)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any, Iterable

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
