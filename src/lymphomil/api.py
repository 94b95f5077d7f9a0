"""The Python API: the few things a user scripts with (re-exported by ``import lymphomil``).

    import lymphomil

    cohort = lymphomil.load_cohort("data/dlmi-lymphocytosis")
    cv = lymphomil.cross_validate("fusion-mean", cohort, folds=3, repeats=1)
    model = lymphomil.create_model("fusion-mean")
    train = lymphomil.with_features(cohort.labelled, model)
    model.fit(train, lymphomil.labels_of(train))
    rule = lymphomil.fit_referral("fusion-mean", train, max_referral=0.2)
    decisions = lymphomil.decide(model, rule, lymphomil.with_features(cohort.unlabelled, model))

A patient array from :func:`with_features` carries its feature store explicitly (each patient's
``features``), so an image model reads its instance features from it; nothing is attached behind
the caller's back. The command line runs these same functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from lymphomil.data.cohort import Cohort, labels_of, load_cohort  # noqa: F401 (the API)
from lymphomil.models.base import PatientModel, create_model, list_models, load_model  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    from lymphomil.crossval import CVResult
    from lymphomil.pipeline import RunResult
    from lymphomil.referral import Decision, ReferralRule


def _model(model: "PatientModel | str") -> PatientModel:
    return create_model(model) if isinstance(model, str) else model


def with_features(patients: Iterable[Any], *models: "PatientModel | str",
                  cache_dir: str | Path | None = None) -> np.ndarray:
    """The patients as a 1-D array, each carrying the feature store that ``models`` read (their
    features computed into the on-disk cache first where missing); unchanged for models that
    read no image features."""
    from lymphomil.steps import attach_features

    return attach_features(list(patients), [_model(m) for m in models],
                           Path(cache_dir) if cache_dir is not None else None)


def cross_validate(model: "PatientModel | str", cohort: "Cohort | Sequence[Any]", *,
                   folds: int = 5, repeats: int = 5, seed: int = 0,
                   cache_dir: str | Path | None = None) -> "CVResult":
    """Repeated, stratified, patient-level CV of ``model`` (a registered name or a model) on the
    labelled patients of ``cohort`` (a :class:`Cohort`, or labelled patients); out-of-fold
    probabilities, metrics and intervals in the returned ``CVResult`` (``.summary()``)."""
    from lymphomil.crossval import cross_validate as harness
    from lymphomil.steps import labelled_patients

    if isinstance(cohort, Cohort):
        labelled = labelled_patients(cohort)
        patients, y = labelled.patients, labelled.y
    else:
        patients = list(cohort)
        y = labels_of(patients)
    name = model if isinstance(model, str) else None
    model = _model(model)
    patients = with_features(patients, model, cache_dir=cache_dir)
    return harness(model, patients, y, folds=folds, repeats=repeats, seed=seed, model_name=name)


def fit_referral(model: "PatientModel | str", patients: Iterable[Any], *,
                 max_referral: float | None = None, target_accuracy: float | None = None,
                 seed: int = 0, cache_dir: str | Path | None = None) -> "ReferralRule":
    """The referral rule of ``model`` fitted by a 5-fold inner CV on the labelled ``patients``
    (refer at most ``max_referral``, default 0.2, or the fewest whose auto-calls reach
    ``target_accuracy``); ``rule.describe()`` says what it does, ``rule.model_dump()`` is its
    JSON."""
    from lymphomil.referral import check_target
    from lymphomil.referral import fit_referral as fit

    max_referral, target_accuracy = check_target(max_referral, target_accuracy,
                                                 ("max_referral", "target_accuracy"))
    name = model if isinstance(model, str) else type(model).__name__
    model = _model(model)
    patients = with_features(patients, model, cache_dir=cache_dir)
    return fit(model, patients, labels_of(patients), max_referral=max_referral,
               target_accuracy=target_accuracy, seed=seed, name=name)


def decide(model: PatientModel, rule: "ReferralRule", patients: Iterable[Any],
           extra_reasons: Sequence[Sequence[str]] | None = None) -> "list[Decision]":
    """The rule's decision for each patient (``.decision``: malignant, reactive or refer;
    ``.reasons``: why a patient is referred) from the fitted ``model``'s calls; patients with
    features attached (:func:`with_features`)."""
    from lymphomil.referral import model_decisions

    return model_decisions(rule, model, np.asarray(list(patients), dtype=object),
                           extra_reasons=extra_reasons)


def run(data: str | Path | None = None, out: str | Path = "lymphomil-run",
        **options: Any) -> "RunResult":
    """What ``lymphomil run`` does: validate and explore, CV the candidates, train the best,
    predict the unlabelled patients, write the report, into ``out``. ``data=None``: a synthetic
    cohort. ``options``: any field of :class:`lymphomil.config.RunConfig` (``candidates``,
    ``folds``, ``repeats``, ``seed``, ``cache_dir``, ...)."""
    from lymphomil.config import RunConfig
    from lymphomil.pipeline import run_pipeline

    config = RunConfig(data=Path(data) if data is not None else None, **options)
    return run_pipeline(config, Path(out))
