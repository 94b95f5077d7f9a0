"""The Python API: the few things a user scripts with (re-exported by ``import lymphomil``).

    import lymphomil

    cohort = lymphomil.load_cohort("data/dlmi-lymphocytosis")
    cv = lymphomil.cross_validate("fusion-mean", cohort, folds=3, repeats=1)
    model = lymphomil.create_model("fusion-mean")
    train = lymphomil.with_features(cohort.labelled, model)
    model.fit(train, lymphomil.labels_of(train))
    rule = lymphomil.fit_referral("fusion-mean", train, max_referral=0.2)
    decisions = lymphomil.decide(model, rule, lymphomil.with_features(cohort.unlabelled, model))
    lymphomil.train("fusion-mean", cohort, "my-model")       # what `lymphomil train` does
    pred = lymphomil.predict("my-model", "data/dlmi-lymphocytosis")  # `lymphomil predict`

A patient array from :func:`with_features` carries its feature store explicitly (each patient's
``features``), so an image model reads its instance features from it; nothing is attached behind
the caller's back. The command line runs these same functions (:mod:`lymphomil.flows`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from lymphomil.data.cohort import Cohort, as_patient_array, labels_of, load_cohort  # noqa: F401
from lymphomil.evaluation.crossval import CVResult
from lymphomil.flows.config import RunConfig
from lymphomil.flows.cv import cross_validate as cross_validate_flow
from lymphomil.flows.steps import (
    LabelledSet,
    Predictions,
    attach_features,
    labelled_patients,
    predict_folder,
)
from lymphomil.flows.train import train as train_flow
from lymphomil.models.base import PatientModel, create_model, list_models, load_model  # noqa: F401
from lymphomil.referral import Decision, ReferralRule, check_target, model_decisions
from lymphomil.referral import fit_referral as fit_rule

if TYPE_CHECKING:  # pragma: no cover
    from lymphomil.flows.run import RunResult


def _model(model: "PatientModel | str") -> PatientModel:
    return create_model(model) if isinstance(model, str) else model


def with_features(patients: Iterable[Any], *models: "PatientModel | str",
                  cache_dir: str | Path | None = None) -> np.ndarray:
    """The patients as a 1-D array, each carrying the feature store that ``models`` read (their
    features computed into the on-disk cache first where missing); unchanged for models that
    read no image features."""
    return attach_features(list(patients), [_model(m) for m in models], _path(cache_dir))


def cross_validate(model: "PatientModel | str", cohort: "Cohort | Sequence[Any]", *,
                   folds: int = 5, repeats: int = 5, seed: int = 0,
                   cache_dir: str | Path | None = None) -> CVResult:
    """Repeated, stratified, patient-level CV of ``model`` (a registered name or a model) on the
    labelled patients of ``cohort`` (a :class:`Cohort`, or labelled patients); out-of-fold
    probabilities, metrics and intervals in the returned ``CVResult`` (``.summary()``)."""
    if isinstance(cohort, Cohort):
        labelled = labelled_patients(cohort)
    else:
        patients = list(cohort)
        labelled = LabelledSet(None, as_patient_array(patients), labels_of(patients))
    name = model if isinstance(model, str) else type(model).__name__
    # no fit is stored in the cache: a model built in Python may change between two calls
    run = cross_validate_flow([(name, _model(model))], labelled, folds=folds, repeats=repeats,
                               seed=seed, cache_dir=_path(cache_dir), store_fits=False)
    return run.results[0]


def train(model: str, cohort: Cohort, out: str | Path, *, seed: int = 0,
          features: str | None = None, max_referral: float | None = None,
          target_accuracy: float | None = None,
          cache_dir: str | Path | None = None) -> PatientModel:
    """What ``lymphomil train`` does: fit the registered ``model`` on every labelled patient of
    ``cohort`` and save its folder in ``out`` with its referral rule and model card (read back
    by :func:`load_model` and ``lymphomil predict``); returns the fitted model."""
    return train_flow(model, labelled_patients(cohort), Path(out),
                       reference_date=cohort.reference_date, features=features, seed=seed,
                       cache_dir=_path(cache_dir), max_referral=max_referral,
                       target_accuracy=target_accuracy).model


def predict(model_dir: str | Path, data: str | Path, *, patients: str = "new",
            on_error: str = "raise", cache_dir: str | Path | None = None) -> Predictions:
    """What ``lymphomil predict`` computes, without writing: the model folder's probabilities,
    calls and referral decisions (``.ids``, ``.proba``, ``.labels``, ``.decisions``) for the
    patients of ``data`` that ``patients`` names (``"new"``: the unlabelled ones and those under
    testset/; ``"all"``)."""
    return predict_folder(Path(model_dir), Path(data), on_error=on_error,
                                cache_dir=_path(cache_dir), patients=patients)


def _path(path: str | Path | None) -> Path | None:
    return Path(path) if path is not None else None


def fit_referral(model: "PatientModel | str", patients: Iterable[Any], *,
                 max_referral: float | None = None, target_accuracy: float | None = None,
                 seed: int = 0, cache_dir: str | Path | None = None) -> ReferralRule:
    """The referral rule of ``model`` fitted by a 5-fold inner CV on the labelled ``patients``
    (refer at most ``max_referral``, default 0.2, or the fewest whose auto-calls reach
    ``target_accuracy``); ``rule.describe()`` says what it does, ``rule.model_dump()`` is its
    JSON."""
    max_referral, target_accuracy = check_target(max_referral, target_accuracy,
                                                 ("max_referral", "target_accuracy"))
    name = model if isinstance(model, str) else type(model).__name__
    model = _model(model)
    patients = with_features(patients, model, cache_dir=cache_dir)
    return fit_rule(model, patients, labels_of(patients), max_referral=max_referral,
               target_accuracy=target_accuracy, seed=seed, name=name)


def decide(model: PatientModel, rule: ReferralRule, patients: Iterable[Any],
           extra_reasons: Sequence[Sequence[str]] | None = None) -> list[Decision]:
    """The rule's decision for each patient (``.decision``: malignant, reactive or refer;
    ``.reasons``: why a patient is referred) from the fitted ``model``'s calls; patients with
    features attached (:func:`with_features`)."""
    return model_decisions(rule, model, np.asarray(list(patients), dtype=object),
                           extra_reasons=extra_reasons)


def run(data: str | Path | None = None, out: str | Path = "lymphomil-run",
        **options: Any) -> "RunResult":
    """What ``lymphomil run`` does: validate and explore, CV the candidates, train the best,
    predict the unlabelled patients, write the report, into ``out``. ``data=None``: a synthetic
    cohort. ``options``: any field of :class:`lymphomil.flows.config.RunConfig` (``candidates``,
    ``folds``, ``repeats``, ``seed``, ``cache_dir``, ...)."""
    # deferred for start-up time: the run's report (plots) only when a run is asked for
    from lymphomil.flows.run import run_pipeline

    config = RunConfig(data=Path(data) if data is not None else None, **options)
    return run_pipeline(config, Path(out))
