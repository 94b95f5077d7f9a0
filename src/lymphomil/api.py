"""The Python API: the few things a user scripts with (re-exported by ``import lymphomil``).

    import lymphomil

    cohort = lymphomil.load_cohort("data/dlmi-lymphocytosis")
    cv = lymphomil.cross_validate("fusion-mean", cohort, folds=3, repeats=1)
    model = lymphomil.create_model("fusion-mean")
    train = lymphomil.with_features(cohort.labelled, model)
    model.fit(train, lymphomil.labels_of(train))
    referral = lymphomil.fit_referral("fusion-mean", train, max_referral=0.2)
    decisions = lymphomil.decide(model, referral,
                                 lymphomil.with_features(cohort.unlabelled, model))
    lymphomil.train("fusion-mean", cohort, "my-model")       # what `lymphomil train` does
    pred = lymphomil.predict("my-model", "data/dlmi-lymphocytosis")  # `lymphomil predict`

A patient array from :func:`with_features` carries its feature store explicitly (each patient's
``features``), so an image model reads its instance features from it; nothing is attached behind
the caller's back. Each function runs the flow the command line runs (:mod:`lymphomil.flows`):
the same option checks, the same referral budget, the same OOD checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np

from lymphomil.data.cohort import (  # noqa: F401 (labels_of, load_cohort: the API)
    Cohort,
    as_patient_array,
    labelled_patients,
    labels_of,
    load_cohort,
)
from lymphomil.evaluation.crossval import CVResult
from lymphomil.flows import cv
from lymphomil.flows import predict as predicting
from lymphomil.flows import train as training
from lymphomil.flows.caches import attach_features
from lymphomil.flows.caches import with_features as with_labelled_features
from lymphomil.flows.config import RunConfig
from lymphomil.flows.patients import as_labelled, configure_model
from lymphomil.flows.predict import Predictions
from lymphomil.flows.run import RunResult, run_pipeline
from lymphomil.flows.train import Referral
from lymphomil.models.base import PatientModel, create_model, list_models, load_model  # noqa: F401
from lymphomil.referral import Decision, check_target


def _path(path: str | Path | None) -> Path | None:
    return Path(path) if path is not None else None


def _model(model: "PatientModel | str") -> PatientModel:
    """The model given, or a registered name's (as the commands configure it)."""
    return configure_model(model) if isinstance(model, str) else model


def _name(model: "PatientModel | str") -> str:
    """A registered name, or the class's name for a model built in Python (seeds derive from
    it: :func:`lymphomil.evaluation.crossval.derive_seed`)."""
    return model if isinstance(model, str) else type(model).__name__


def with_features(patients: Iterable[Any], *models: "PatientModel | str",
                  cache_dir: str | Path | None = None) -> np.ndarray:
    """The patients as a 1-D array, each carrying the feature store that ``models`` read (their
    features computed into the on-disk cache first where missing); unchanged for models that
    read no image features."""
    return attach_features(list(patients), [_model(m) for m in models], _path(cache_dir))


def cross_validate(model: "PatientModel | str", cohort: "Cohort | Iterable[Any]", *,
                   folds: int = 5, repeats: int = 5, seed: int = 0,
                   cache_dir: str | Path | None = None) -> CVResult:
    """Repeated, stratified, patient-level CV of ``model`` (a registered name or a model) on the
    labelled patients of ``cohort`` (a :class:`Cohort`, or labelled patients); out-of-fold
    probabilities, metrics and intervals in the returned ``CVResult`` (``.summary()``)."""
    # no fit is stored in the cache: a model built in Python may change between two calls
    run = cv.cross_validate([(_name(model), _model(model))], as_labelled(cohort), folds=folds,
                            repeats=repeats, seed=seed, cache_dir=_path(cache_dir),
                            store_fits=False)
    return run.results[0]


def train(model: str, cohort: Cohort, out: str | Path, *, seed: int = 0,
          features: str | None = None, max_referral: float | None = None,
          target_accuracy: float | None = None,
          cache_dir: str | Path | None = None) -> PatientModel:
    """What ``lymphomil train`` does: fit the registered ``model`` on every labelled patient of
    ``cohort`` and save its folder in ``out`` with its referral rule, OOD checks and model card
    (read back by :func:`load_model` and ``lymphomil predict``); returns the fitted model."""
    return training.train(model, labelled_patients(cohort), Path(out),
                          reference_date=cohort.reference_date, features=features, seed=seed,
                          cache_dir=_path(cache_dir), max_referral=max_referral,
                          target_accuracy=target_accuracy).model


def predict(model_dir: str | Path, data: str | Path, *, patients: str = "new",
            on_error: str = "raise", cache_dir: str | Path | None = None) -> Predictions:
    """What ``lymphomil predict`` computes, without writing: the model folder's probabilities,
    calls and referral decisions (``.ids``, ``.proba``, ``.labels``, ``.decisions``) for the
    patients of ``data`` that ``patients`` names (``"new"``: the unlabelled ones and those under
    testset/; ``"all"``)."""
    return predicting.predict_folder(Path(model_dir), Path(data), on_error=on_error,
                                     cache_dir=_path(cache_dir), patients=patients)


def fit_referral(model: "PatientModel | str", patients: "Cohort | Iterable[Any]", *,
                 max_referral: float | None = None, target_accuracy: float | None = None,
                 seed: int = 0, cache_dir: str | Path | None = None) -> Referral:
    """What ``lymphomil train`` saves beside a model to decide which calls to trust: the
    referral rule of ``model`` fitted by a 5-fold inner CV on the labelled ``patients`` (refer
    at most ``max_referral``, default 0.2, or the fewest whose auto-calls reach
    ``target_accuracy``; the training patients the OOD checks flag when held out come out of
    that budget), and the OOD checks fitted on the same patients. ``.describe()`` says what
    the rule does, ``.rule`` is the rule (its JSON: ``.rule.model_dump()``), ``.checks`` the
    checks."""
    max_referral, target_accuracy = check_target(max_referral, target_accuracy,
                                                 ("max_referral", "target_accuracy"))
    fitted = _model(model)
    labelled = with_labelled_features(as_labelled(patients), [fitted], _path(cache_dir))
    return training.fit_referral(fitted, labelled, name=_name(model), seed=seed,
                                 max_referral=max_referral, target_accuracy=target_accuracy,
                                 cache_dir=_path(cache_dir))


def decide(model: PatientModel, referral: Referral, patients: Iterable[Any]) -> list[Decision]:
    """What ``lymphomil predict`` decides for each patient (``.decision``: malignant, reactive
    or refer; ``.reasons``: why a patient is referred, the OOD checks' reasons among them) from
    the fitted ``model``'s calls; patients with features attached (:func:`with_features`)."""
    return predicting.decide(referral, model, as_patient_array(list(patients)))


def run(data: str | Path | None = None, out: str | Path = "lymphomil-run",
        **options: Any) -> "RunResult":
    """What ``lymphomil run`` does: validate and explore, CV the candidates, train the best,
    predict the unlabelled patients, write the report, into ``out``. ``data=None``: a synthetic
    cohort. ``options``: any field of :class:`lymphomil.flows.config.RunConfig` (``candidates``,
    ``folds``, ``repeats``, ``seed``, ``cache_dir``, ...)."""
    config = RunConfig(data=Path(data) if data is not None else None, **options)
    return run_pipeline(config, Path(out))
