"""`lymphomil run`: folder in → honest CV numbers, the best model, predictions and a report out.

Stages: validate + explore → features → cross-validate the candidates → pick the best by repeated
CV → fit it on every labelled patient → predict the unlabelled ones → submission, model, report.
The run folder is built under a temporary name and moved into place at the end, so a killed run
never leaves a folder a later run (or a person) could mistake for a finished one.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from lymphomil.data.cohort import Cohort
from lymphomil.data.plain import data_source
from lymphomil.data.synth import write_synthetic_cohort
from lymphomil.evaluation.crossval import CVResult, best_index
from lymphomil.evaluation.uncertainty import N_REFITS, cached_refit_probas, refit_spread
from lymphomil.flows.config import RunConfig, to_toml
from lymphomil.flows.cv import cross_validate
from lymphomil.flows.runcache import cached_explore
from lymphomil.flows.steps import (
    LabelledSet,
    Predictions,
    attach_features,
    configure_model,
    decide_patients,
    load_labelled,
    predict_patients,
    write_cv_outputs,
    write_predictions,
)
from lymphomil.flows.train import Trained, train
from lymphomil.models.base import (
    selection_name,
)
from lymphomil.ood import load_ood_checks
from lymphomil.outputs import (
    atomic_write_json,
    atomic_write_text,
    cv_cache,
    default_cache_root,
    staged_dir,
)
from lymphomil.referral.coverage import risk_coverage
from lymphomil.report.pages import (  # patient_calls, score_units, synthetic_origin: re-exported
    gallery_scorer,
    patient_calls,  # noqa: F401
    referral_metrics,
    run_files,
    score_units,  # noqa: F401
    synthetic_origin,  # noqa: F401
    write_run_model_card,
    write_run_report,
)
from lymphomil.runtime.engine import Engine
from lymphomil.runtime.engines import get_engine
from lymphomil.runtime.environment import set_threads


def synthetic_default(patients: int, seed: int) -> Path:
    """The built-in default cohort: generated once into the cache, then reused."""
    folder = default_cache_root() / "synthetic" / f"n{patients}-seed{seed}"
    if not (folder / "clinical_annotation.csv").is_file():
        write_synthetic_cohort(folder, n_patients=patients, seed=seed)
    return folder


@dataclass
class RunResult:
    out: Path
    chosen: str
    results: list[CVResult]
    n_predicted: int
    n_skipped: int
    timings: dict[str, float] = field(default_factory=dict)


def choose_model(results: list[CVResult]) -> CVResult:
    """The candidate :func:`lymphomil.evaluation.crossval.best_index` picks (the rule ``select:``
    uses)."""
    return results[best_index(results)]


def run_pipeline(config: RunConfig, out: Path,
                 stage: Callable[[str], None] = lambda name: None,
                 on_fit: Callable[..., None] | None = None,
                 cv_total: Callable[[int], None] | None = None) -> RunResult:
    """Run every stage; ``stage(name)`` announces each one, ``on_fit`` ticks CV progress.
    Features and CV fits run on ``config.engine``; training and prediction are single fits."""
    set_threads(config.threads)
    engine = get_engine(config.engine, fit_threads=config.threads)
    try:
        return _run_stages(_Run(config, out, engine, stage), on_fit, cv_total)
    finally:
        engine.close()


@dataclass
class _Run:
    """What the stages of one run hand on to the next, filled in as they go."""

    config: RunConfig
    out: Path
    engine: Engine
    announce: Callable[[str], None]
    timings: dict[str, float] = field(default_factory=dict)
    staging: Path = Path()
    data: Path = Path()
    cohort: Cohort | None = None
    labelled: LabelledSet | None = None
    summary: dict = field(default_factory=dict)  # the exploration's
    selection: str | None = None  # the nested selection row, when asked for
    results: list[CVResult] = field(default_factory=list)
    chosen: CVResult | None = None
    trained: Trained | None = None
    pred: Predictions | None = None
    spread: Any = None  # lymphomil.evaluation.uncertainty's refit spread of each prediction

    @contextmanager
    def stage(self, name: str, timing: str) -> Iterator[None]:
        """Announce the stage ``name``, and time it as ``timing``."""
        self.announce(name)
        start = time.perf_counter()
        yield
        self.timings[timing] = round(time.perf_counter() - start, 2)


def _run_stages(run: _Run, on_fit: Callable[..., None] | None,
                cv_total: Callable[[int], None] | None) -> RunResult:
    config = run.config
    run.data = config.data
    if run.data is None:
        with run.stage("synthetic cohort", "synthetic cohort"):
            run.data = synthetic_default(config.synthetic_patients, config.synthetic_seed)
    with staged_dir(run.out, "run") as staging:
        run.staging = staging
        _explore(run)
        candidates = _candidates(run)
        _features(run, candidates)
        _cross_validate(run, candidates, on_fit, cv_total)
        _train(run)
        _predict(run)
        if len(run.pred.ids):
            with run.stage(f"uncertainty ({N_REFITS} refits)", "uncertainty"):
                run.spread = _refit_spread(run.chosen.model_name, config, run.labelled,
                                           run.pred, run.engine)
        with run.stage("report", "report"):
            _report(run)
        _write_summary(run)
    return RunResult(run.out, run.chosen.model_name, run.results, len(run.pred.ids),
                     len(run.cohort.skipped_ids), run.timings)


def _explore(run: _Run) -> None:
    """Read and check the folder (the folds against its classes, before any feature), and
    explore it (Table 1 and figures, into explore/)."""
    config = run.config
    with run.stage("validate and explore", "validate + explore"):
        source = (data_source(run.data, config.images, config.columns)
                  if config.data is not None else run.data)
        run.labelled = load_labelled(source, reference_date=config.reference_date,
                                           on_error=config.on_error, cache_dir=config.cache_dir,
                                           folds=config.folds, folds_option="folds")
        run.cohort = run.labelled.cohort
        run.summary = cached_explore(run.cohort, run.staging / "explore", config.cache_dir)


def _candidates(run: _Run) -> list[str]:
    """The models compared by CV (the forced ``--model`` among them), and the nested selection
    row among them when asked for."""
    config = run.config
    candidates = list(dict.fromkeys(config.candidates + ([config.model] if config.model else [])))
    if config.nested_selection and len(candidates) > 1:
        run.selection = selection_name(candidates)
    return candidates


def _features(run: _Run, candidates: list[str]) -> None:
    """Every candidate's features of every patient (the unlabelled ones too), into the cache."""
    with run.stage("features", "features"):
        models = [configure_model(name, run.config.features) for name in candidates]
        attach_features(run.cohort.patients, models, run.config.cache_dir, engine=run.engine)


def _cross_validate(run: _Run, candidates: list[str], on_fit: Callable[..., None] | None,
                    cv_total: Callable[[int], None] | None) -> None:
    """The candidates' repeated CV (read back from the CV cache when unchanged), into cv/; the
    chosen model: the forced one, else the best candidate (:func:`choose_model`)."""
    config = run.config
    evaluated = candidates + ([run.selection] if run.selection else [])
    run.announce("cross-validation")
    if cv_total is not None:
        cv_total(len(evaluated) * config.folds * config.repeats)
    start = time.perf_counter()
    run.results = cross_validate(
        evaluated, run.labelled, folds=config.folds, repeats=config.repeats, seed=config.seed,
        features=config.features, cache_dir=config.cache_dir, on_fit=on_fit,
        use_cv_cache=True, engine=run.engine).results
    write_cv_outputs(run.results, run.staging / "cv")
    run.timings["cross-validation"] = round(time.perf_counter() - start, 2)
    run.chosen = (next(r for r in run.results if r.model_name == config.model) if config.model
                  else choose_model([r for r in run.results if r.model_name != run.selection]))


def _train(run: _Run) -> None:
    """The chosen model's referral rule, then the model fitted on every labelled patient, into
    model/ (an earlier run's folder when nothing changed)."""
    config = run.config
    run.trained = train(
        run.chosen.model_name, run.labelled, run.staging / "model",
        reference_date=config.reference_date, features=config.features, seed=config.seed,
        cache_dir=config.cache_dir, max_referral=config.max_referral,
        target_accuracy=config.target_accuracy, extra={"cv": run.chosen.to_dict()["summary"]},
        card=False, reuse=True, stage=run.stage)


def _predict(run: _Run) -> None:
    """The unlabelled patients' calls and the rule's decisions: predictions.csv and the Kaggle
    submission.csv (a header only when there are none)."""
    config, staging, model = run.config, run.staging, run.trained.model
    with run.stage("predict", "predict"):
        targets = run.cohort.unlabelled
        run.pred = predict_patients(model, targets, run.cohort, cache_dir=config.cache_dir)
        if targets:
            checks = load_ood_checks(staging / "model", config.cache_dir)
            run.pred.decisions = decide_patients(run.trained.rule, checks, model, run.pred)
            write_predictions(run.pred, staging / "predictions.csv")
            write_predictions(run.pred, staging / "submission.csv", kaggle=True)
        else:
            atomic_write_text(staging / "submission.csv", "Id,Predicted\n")


def _report(run: _Run) -> None:
    """The model card (into model/) and report.html."""
    config, model = run.config, run.trained.model
    card = write_run_model_card(run.staging / "model", model, config, run.chosen, run.results,
                                run.spread, run.trained.rule)
    scorer = gallery_scorer(model, config, run.labelled, config.cache_dir)
    write_run_report(run.staging / "report.html", config, run.data, run.chosen, run.results,
                     run.summary, run.pred, run.cohort, run.labelled.patients, run.timings,
                     files=run_files(run.staging, run.chosen.model_name),
                     spread=run.spread, card=card, scorer=scorer)


def _write_summary(run: _Run) -> None:
    """skipped.json, config.toml (repeats the run) and metrics.json: written last."""
    config, staging, selection, rule = run.config, run.staging, run.selection, run.trained.rule
    skipped = run.cohort.skipped_table()
    if skipped:
        atomic_write_json(staging / "skipped.json", skipped)
    atomic_write_text(staging / "config.toml",
                      to_toml(config.model_copy(update={"data": run.data})))
    atomic_write_json(staging / "metrics.json", {
        "chosen_model": run.chosen.model_name,
        "selection": "best mean balanced accuracy over the candidates' repeated CV "
                     "(optimistic for the winner: chosen on the same folds)",
        "candidates": {r.model_name: r.summary() for r in run.results
                       if r.model_name != selection},
        "nested_selection": next((r.summary() for r in run.results
                                  if r.model_name == selection), None),
        "n_labelled": int(len(run.labelled.y)), "n_predicted": len(run.pred.ids),
        "n_skipped_patients": len(run.cohort.skipped_ids), "timings_seconds": run.timings,
        "referral": referral_metrics(rule, run.pred.decisions) if rule is not None else None,
        "risk_coverage": {r.model_name: risk_coverage(r) for r in run.results
                          if r.model_name != selection},
    })


def _refit_spread(name: str, config: RunConfig, labelled, pred, engine: object):
    """The spread of each predicted patient's probability over refits of the chosen model."""
    model = configure_model(name, config.features)
    patients = attach_features(labelled.patients, [model], config.cache_dir)
    probas = cached_refit_probas(cv_cache(config.cache_dir), model, patients,
                                 labelled.y, pred.patients, seed=config.seed, name=name,
                                 engine=engine)
    return refit_spread(probas)
