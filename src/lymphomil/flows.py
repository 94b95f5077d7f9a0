"""One function per flow of the command line: cross-validate, train, predict.

The ``cv``, ``train`` and ``predict`` commands parse their options, call one of these and print
what it returns; the Python API (:mod:`lymphomil.api`) and ``lymphomil run``
(:mod:`lymphomil.pipeline`) call the same functions, so there is one way through each flow.
The building blocks they string together are in :mod:`lymphomil.steps`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable, Sequence

from lymphomil import progress_protocol
from lymphomil.coverage import cv_trust
from lymphomil.crossval import CVResult, format_metric
from lymphomil.data.cohort import load_cohort
from lymphomil.engine import Engine
from lymphomil.engines import get_engine
from lymphomil.errors import LymphomilError
from lymphomil.model_card import build_model_card, write_model_card
from lymphomil.models.base import (
    PatientModel,
    describe_model,
    selection_candidates,
    selection_name,
)
from lymphomil.options import check_folds_against, check_model_names
from lymphomil.outputs import (
    atomic_write_json,
    dumps_json,
    read_json,
    remove_owned_file,
    staged_dir,
    write_owned_file,
)
from lymphomil.referral import INNER_FOLDS, check_target, nested_referral, referral_card
from lymphomil.runcache import train_cached
from lymphomil.steps import (
    LabelledSet,
    Predictions,
    attach_features,
    configure_model,
    fit_rule,
    labelled_patients,
    predict_folder,
    run_cv,
    train_model,
    write_cv_outputs,
    write_predictions,
)


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


def cv_models(names: Sequence[str], select: str | None = None) -> list[str]:
    """``--model``'s names, checked, and the row ``select:A,B,C`` of ``--select``'s candidates
    (the choice among them made by inner CV inside each outer training part)."""
    if select is not None:
        names = [*names, selection_name(check_model_names(select.split(","), "--select"))]
    check_model_names(names)
    return list(names)


def summary_rows(results: Sequence[CVResult]) -> list[tuple[str, ...]]:
    """Each model's name, balanced accuracy, hard-subset balanced accuracy, ROC AUC (mean ± std
    [95% CI]) and minutes of fitting, as the command line's table shows them."""
    rows = []
    for r in results:
        s = r.summary()
        rows.append((r.model_name, format_metric(s["balanced_accuracy"]),
                     format_metric(s["hard_balanced_accuracy"]), format_metric(s["roc_auc"]),
                     f"{s['fit_seconds']['total'] / 60:.2f}"))
    return rows


@dataclass
class CVRun:
    results: list[CVResult]
    #: each model's risk–coverage and nested referral figure (lymphomil.coverage.cv_trust)
    trust: dict | None = None
    #: what was left out, in a line each, for the caller to show
    notes: list[str] = field(default_factory=list)


def cross_validate(models: Sequence[str | tuple[str, PatientModel]], labelled: LabelledSet, *,
                   folds: int, repeats: int, seed: int, features: str | None = None,
                   cache_dir: Path | None = None, engine: Engine | str | None = None,
                   threads: int = 1, on_fit: Callable[..., None] | None = None,
                   use_cv_cache: bool = False, store_fits: bool = True, trust: bool = False,
                   referral: bool = False, max_referral: float | None = None,
                   target_accuracy: float | None = None, out: Path | None = None) -> CVRun:
    """Repeated CV of ``models`` (names or ``(name, model)`` pairs) on the labelled patients
    (:func:`lymphomil.steps.run_cv`); with ``trust`` each model's risk–coverage figure, and with
    ``referral`` its referral rule measured nested too; with ``out`` the folder of
    metrics.json, oof_<model>.csv and results.md, staged (a finished one has checksums.json).
    ``engine``: an engine, or its name (started here and closed at the end)."""
    runner = get_engine(engine, fit_threads=threads) if isinstance(engine, str) else engine
    try:
        with _fits("cross-validation fits", len(models) * folds * repeats, on_fit) as advance:
            results = run_cv(models, labelled.patients, labelled.y, folds=folds,
                             repeats=repeats, seed=seed, features=features,
                             cache_dir=cache_dir, on_fit=advance, use_cv_cache=use_cv_cache,
                             store_fits=store_fits, engine=runner)
        run = CVRun(results)
        nested = (_nested_referral(models, labelled, run, folds, repeats, seed, features,
                                   cache_dir, runner) if referral else {})
    finally:
        if isinstance(engine, str):
            runner.close()
    if trust or referral:
        run.trust = cv_trust(results, nested, max_referral=max_referral,
                             target_accuracy=target_accuracy)
    if out is not None:
        cohort = labelled.cohort
        with staged_dir(out, "cv") as staging:
            write_cv_outputs(results, staging, run.trust)
            if cohort is not None and cohort.issues:
                atomic_write_json(staging / "skipped.json", cohort.skipped_table())
    return run


def _fits(description: str, total: int,
          on_fit: Callable[..., None] | None) -> AbstractContextManager[Callable[..., None]]:
    """``on_fit`` when the caller counts the fits, else a task of the installed progress."""
    if on_fit is not None:
        return nullcontext(on_fit)
    return _Progress(description, total, "fits")


class _Progress:
    """A progress task whose advance takes ``rate=`` as :func:`lymphomil.steps.run_cv` gives it."""

    def __init__(self, description: str, total: int, unit: str):
        self.task = progress_protocol.task(description, total, unit)

    def __enter__(self) -> Callable[..., None]:
        advance = self.task.__enter__()
        return lambda step=1, rate="": advance(step, rate)

    def __exit__(self, *exc: object) -> None:
        self.task.__exit__(*exc)


def _nested_referral(models: Sequence[str | tuple[str, PatientModel]], labelled: LabelledSet,
                     run: CVRun, folds: int, repeats: int, seed: int, features: str | None,
                     cache_dir: Path | None, engine: Engine | None) -> dict:
    """Each model's nested referral pass (lymphomil.referral.nested_referral); the nested
    selection rows are left out (an inner CV inside their inner CV: too slow)."""
    pairs = [(m, configure_model(m, features)) if isinstance(m, str) else m for m in models]
    pairs = [(name, model) for name, model in pairs if not selection_candidates(name)]
    if not pairs:
        return {}
    patients = attach_features(labelled.patients, [model for _, model in pairs], cache_dir)
    try:
        with _Progress(f"referral rule, nested (1 + {INNER_FOLDS} fits per outer fold)",
                       len(pairs) * folds * repeats, "outer folds") as advance:
            done = nested_referral(pairs, patients, labelled.y, folds=folds, repeats=repeats,
                                   seed=seed, engine=engine, on_fit=advance)
    except LymphomilError as exc:  # e.g. an inner grid search on too few patients of a class
        run.notes.append(f"the referral rule's nested figure is left out: {exc.problem} (the CV "
                         "figures above stand; --no-referral skips this pass)")
        return {}
    return {item.model_name: item for item in done}


@dataclass
class Trained:
    model: PatientModel
    #: the referral rule saved with it (lymphomil.referral); None: too few patients of a class
    rule: object | None


def _no_stage(_name: str, _timing: str) -> AbstractContextManager[None]:
    return nullcontext()


def train(name: str, labelled: LabelledSet, out: Path, *, reference_date: date,
          features: str | None = None, seed: int = 0, cache_dir: Path | None = None,
          max_referral: float | None = None, target_accuracy: float | None = None,
          extra: dict | None = None, card: bool = True, reuse: bool = False,
          stage: Callable[[str, str], AbstractContextManager[None]] = _no_stage) -> Trained:
    """Fit the registered model ``name`` on every labelled patient and save its folder in
    ``out`` with its referral rule (fitted first, by inner CV, to the target) and, with
    ``card``, its model card (what it is and what it was trained on; ``run`` writes its own,
    with the CV); ``reuse``: the folder an earlier run trained from the same inputs
    (:func:`lymphomil.runcache.train_cached`). ``stage(announce, timing)`` wraps each of the
    two parts (``run`` announces and times them)."""
    max_referral, target_accuracy = check_target(max_referral, target_accuracy,
                                                 ("max_referral", "target_accuracy"))
    model = configure_model(name, features)
    with stage("referral rule (inner CV)", "referral rule"):
        rule = fit_rule(model, labelled, name=name, seed=seed, max_referral=max_referral,
                        target_accuracy=target_accuracy, cache_dir=cache_dir)
    with stage(f"train {name}", "train"):
        if reuse:
            model = configure_model(name, features)
            model = train_cached(model, labelled, out, name=name, reference_date=reference_date,
                                 cache_dir=cache_dir, seed=seed, extra=extra, referral=rule)
            return Trained(model, rule)

        def write_card(folder: Path) -> None:
            # no CV here: the card says what the model is and what it was trained on; written
            # into the staging folder, so the model appears whole or not at all
            write_model_card(folder, build_model_card(model, name,
                                                      read_json(folder / "metadata.json"),
                                                      description=describe_model(name),
                                                      referral=rule and referral_card(rule)))

        train_model(model, labelled, out, name=name, reference_date=reference_date,
                    cache_dir=cache_dir, seed=seed, extra=extra, referral=rule,
                    finish=write_card if card else None)
    return Trained(model, rule)


@dataclass
class PredictRun:
    pred: Predictions
    metrics_path: Path | None  # written when predicted patients carry labels
    skipped_path: Path | None  # written when inputs were skipped


def prediction_files(out: Path) -> tuple[Path, Path]:
    """The label metrics and skipped-list files written beside the predictions CSV ``out``."""
    return (out.with_name(out.stem + ".metrics.json"), out.with_name(out.stem + ".skipped.json"))


def predict(model_dir: Path, data: Path, out: Path, *, kaggle: bool = False,
            patients: str = "new", include_labelled: bool = False, on_error: str = "raise",
            cache_dir: Path | None = None, report: Path | None = None) -> PredictRun:
    """Predict the patients of ``data`` (:func:`lymphomil.steps.predict_folder`) into the CSV
    ``out``, with the label metrics and the skipped inputs beside it (an earlier run's are
    removed when there are none now) and, with ``report``, the per-patient HTML report.
    Every file is recorded as this output's own (``out`` claimed by the caller)."""
    pred = predict_folder(model_dir, data, on_error=on_error, include_labelled=include_labelled,
                          cache_dir=cache_dir, patients=patients)
    metrics_path, skipped_path = prediction_files(out)
    write_predictions(pred, out, kaggle=kaggle, write=write_owned_file)
    if pred.metrics is not None:
        write_owned_file(metrics_path, dumps_json(pred.metrics).encode(), "metrics")
    else:  # an earlier run's metrics must not outlive a re-run without labels
        remove_owned_file(metrics_path)
        metrics_path = None
    if pred.skipped:
        write_owned_file(skipped_path, dumps_json(pred.skipped).encode(), "skipped list")
    else:  # an earlier run's list must not outlive a clean re-run
        remove_owned_file(skipped_path)
        skipped_path = None
    if report is not None:
        # deferred for start-up time: the report's plotting, only when a report is asked for
        from lymphomil.run_report import write_prediction_report

        write_prediction_report(report, pred, data, model_dir, csv_path=out,
                                write=write_owned_file)
    return PredictRun(pred, metrics_path, skipped_path)
