"""`lymphomil run`: folder in → honest CV numbers, the best model, predictions and a report out.

:func:`run_pipeline` reads top to bottom as docs/design.md §5 names the stages: validate and
explore → features → cross-validate the candidates (:mod:`lymphomil.flows.cv`) → choose the
best → referral rule and training (:mod:`lymphomil.flows.train`) → predict the unlabelled
patients with the model in memory (:mod:`lymphomil.flows.predict`) → uncertainty refits → the
galleries' cell scores → report and summary. Everything the report shows is computed here and
handed to it; the report only draws. The run folder is built under a temporary name and moved
into place at the end, so a killed run never leaves a folder a later run (or a person) could
mistake for a finished one.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from sklearn.base import clone

from lymphomil.data.cohort import LabelledSet
from lymphomil.data.plain import data_source
from lymphomil.data.synth import synthetic_default
from lymphomil.evaluation.crossval import CVResult, choose_model
from lymphomil.evaluation.uncertainty import (
    N_REFITS,
    SUBSAMPLE,
    cached_refit_probas,
    can_refit,
    refit_spread,
)
from lymphomil.flows.caches import (
    attach_features,
    cached_explore,
    cached_fit,
    cv_results,
    figures,
)
from lymphomil.flows.config import RunConfig, to_toml
from lymphomil.flows.cv import run_cv, write_cv_outputs
from lymphomil.flows.patients import check_can_fit, configure_model, load_labelled
from lymphomil.flows.predict import (
    Predictions,
    predict_patients,
    write_prediction_files,
)
from lymphomil.flows.train import Trained, fit_rule, train_cached
from lymphomil.models.base import PatientModel, create_model, selection_name
from lymphomil.outputs import atomic_write_json, atomic_write_text, staged_dir
from lymphomil.referral.coverage import risk_coverage
from lymphomil.report.model_card import score_units
from lymphomil.report.pages import (
    CellEvidence,
    referral_metrics,
    run_files,
    write_run_model_card,
    write_run_report,
)
from lymphomil.report.patients import oof_errors
from lymphomil.runtime.engines import get_engine
from lymphomil.runtime.environment import set_threads


@dataclass
class RunResult:
    out: Path
    chosen: str
    results: list[CVResult]
    n_predicted: int
    n_skipped: int
    timings: dict[str, float] = field(default_factory=dict)
    #: what was left out (the referral rule, the refit spread of a cohort too small), a line each
    notes: list[str] = field(default_factory=list)


def run_pipeline(config: RunConfig, out: Path,
                 stage: Callable[[str], None] = lambda name: None,
                 on_fit: Callable[..., None] | None = None,
                 cv_total: Callable[[int], None] | None = None) -> RunResult:
    """Run every stage; ``stage(name)`` announces each one, ``on_fit`` ticks CV progress and
    ``cv_total(n)`` says how many CV fits there are. Features and CV fits run on
    ``config.engine``; training and prediction are single fits."""
    clock = _Clock(stage)
    cache_dir = config.cache_dir
    data = config.data
    if data is None:
        with clock("synthetic cohort", "synthetic cohort"):
            data = synthetic_default(config.synthetic_patients, config.synthetic_seed)
    # a lab's own export (plain layout) is read as its columns and images say
    source = data_source(data, config.images, config.columns) if config.data is not None else data
    set_threads(config.threads)
    engine = get_engine(config.engine, fit_threads=config.threads)
    try:
        with staged_dir(out, "run") as staging:
            with clock("validate and explore", "validate + explore"):
                # the folds checked against the classes before any feature is computed
                labelled = load_labelled(source, reference_date=config.reference_date,
                                         on_error=config.on_error, cache_dir=cache_dir,
                                         folds=config.folds, folds_option="folds")
                cohort = labelled.cohort
                explored = cached_explore(cohort, staging / "explore", cache_dir)
            candidates = list(dict.fromkeys(config.candidates + ([config.model] if config.model
                                                                 else [])))
            selection = (selection_name(candidates) if config.nested_selection
                         and len(candidates) > 1 else None)
            models = {name: configure_model(name, config.features) for name in candidates}
            for name, model in [*models.items(), *([(selection, configure_model(selection))]
                                                   if selection else [])]:
                check_can_fit(model, name, labelled.y, config.folds)  # before any feature
            with clock("features", "features"):  # every patient's, the unlabelled ones too
                everyone = attach_features(cohort.patients, models.values(), cache_dir, engine)
                # the labelled patients (in load_labelled's order) and the new ones, carrying
                # the candidates' features from here on
                is_labelled = np.array([p.is_labelled for p in everyone], dtype=bool)
                training = LabelledSet(cohort, everyone[is_labelled], labelled.y)
                new = everyone[~is_labelled]
            with clock("cross-validation", "cross-validation"):
                evaluated = candidates + ([selection] if selection else [])
                if cv_total is not None:
                    cv_total(len(evaluated) * config.folds * config.repeats)
                results = run_cv(evaluated, training.patients, training.y, folds=config.folds,
                                 repeats=config.repeats, seed=config.seed,
                                 features=config.features, cache_dir=cache_dir, on_fit=on_fit,
                                 use_cv_cache=True, engine=engine)
                write_cv_outputs(results, staging / "cv")
            chosen = choose_model(results, config.model, selection)
            name = chosen.model_name
            model = models[name]  # unfitted: the rule fits clones, the training a clone
            with clock("referral rule (inner CV)", "referral rule"):  # fits clones only
                rule = fit_rule(model, training, name=name, seed=config.seed,
                                max_referral=config.max_referral,
                                target_accuracy=config.target_accuracy, cache_dir=cache_dir)
            with clock(f"train {name}", "train"):  # an earlier run's folder when nothing changed
                trained = train_cached(clone(model), training, staging / "model", name=name,
                                       reference_date=config.reference_date,
                                       cache_dir=cache_dir, seed=config.seed,
                                       extra={"cv": chosen.to_dict()["summary"]}, rule=rule)
            with clock("predict", "predict"):
                pred = predict_patients(trained.model, trained.referral, new, cohort)
                write_prediction_files(pred, staging)
            with clock("cell galleries", "cell galleries"):  # what ranks the report's cells
                evidence = gallery_evidence(trained.model, config, labelled, pred, chosen)
            notes = [trained.referral.note] if trained.referral.note else []
            spread = None
            if len(pred.ids) and not can_refit(training.y, model.minimum_per_class(),
                                               seed=config.seed):
                notes.append(f"no refit spread of the predictions: its {N_REFITS} refits, each "
                             f"on a stratified {SUBSAMPLE:.0%} of the labelled patients, need "
                             f"{model.minimum_per_class()} of each class in every one, more "
                             "than so few patients give")
            elif len(pred.ids):  # each prediction's spread over refits of the chosen model
                with clock(f"uncertainty ({N_REFITS} refits)", "uncertainty"):
                    probas = cached_refit_probas(cv_results(cache_dir), model, training.patients,
                                                 training.y, pred.patients, seed=config.seed,
                                                 name=name, engine=engine)
                    spread = refit_spread(probas)
            with clock("report", "report"):  # draws what the stages above computed
                card = write_run_model_card(staging / "model", trained.model, config, chosen,
                                            results, spread, trained.referral.rule)
                write_run_report(staging / "report.html", config, data, chosen, results,
                                 explored, pred, cohort, labelled.patients, clock.timings,
                                 files=run_files(staging, chosen.model_name), spread=spread,
                                 card=card, evidence=evidence, figure_cache=figures(cache_dir))
            write_summary(staging, config, data, chosen, results, selection, labelled, pred,
                          trained, clock.timings)
    finally:
        engine.close()
    return RunResult(out, chosen.model_name, results, len(pred.ids), len(cohort.skipped_ids),
                     clock.timings, notes)


class _Clock:
    """Announces each stage (``announce(name)``) and times it in ``timings`` under its name."""

    def __init__(self, announce: Callable[[str], None]):
        self.announce = announce
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, timing: str) -> Iterator[None]:
        self.announce(name)
        start = time.perf_counter()
        yield
        self.timings[timing] = round(time.perf_counter() - start, 2)


#: the model that scores cells for the galleries when the chosen model has no cell classifier
GALLERY_SCORER = "cell-topk"


def gallery_evidence(model: PatientModel, config: RunConfig, labelled: LabelledSet,
                     pred: Predictions, chosen: CVResult) -> CellEvidence:
    """What ranks the report's cells: the chosen model's cell scores when they come from a cell
    classifier, else those of ``cell-topk`` fitted on the labelled patients (issue 15 item 2: a
    mean-pooled linear model's per-cell "logit shares" are not evidence about single cells);
    of the predicted patients and of the labelled ones the chosen model gets wrong out of
    fold."""
    scorer, name, units = model, chosen.model_name, score_units(model)
    cell_units = create_model(GALLERY_SCORER).instance_score_units
    if units != cell_units:
        # the cells' log-odds come from the final cell classifier alone; k and the Platt map
        # (what the inner CV of cell-topk tunes) change the patient's score, never the cells'
        # order
        scorer = configure_model(GALLERY_SCORER, config.features, ks=(0,), calibrate=False)
        patients = attach_features(labelled.patients, [scorer], config.cache_dir)
        scorer = cached_fit(scorer, patients, labelled.y, tag="gallery-scorer",
                            cache_dir=config.cache_dir,
                            fit=lambda: scorer.fit(patients, labelled.y))[0]
        name, units = GALLERY_SCORER, cell_units
    by_id = {p.id: p for p in labelled.patients}
    shown = [*pred.patients, *(by_id[e["id"]] for e in oof_errors(chosen))]
    scores = (scorer.instance_scores(attach_features(shown, [scorer], config.cache_dir))
              if shown else [])
    n = len(pred.patients)
    return CellEvidence(scorer=name, units=units, predicted=None if scores is None else scores[:n],
                        wrong=None if scores is None else scores[n:])


def write_summary(staging: Path, config: RunConfig, data: Path, chosen: CVResult,
                  results: list[CVResult], selection: str | None, labelled: LabelledSet,
                  pred: Predictions, trained: Trained, timings: dict[str, float]) -> None:
    """skipped.json, config.toml (repeats the run) and metrics.json: written last."""
    cohort, rule = labelled.cohort, trained.referral.rule
    skipped = cohort.skipped_table()
    if skipped:
        atomic_write_json(staging / "skipped.json", skipped)
    atomic_write_text(staging / "config.toml", to_toml(config.model_copy(update={"data": data})))
    atomic_write_json(staging / "metrics.json", {
        "chosen_model": chosen.model_name,
        "selection": "best mean balanced accuracy over the candidates' repeated CV "
                     "(optimistic for the winner: chosen on the same folds)",
        "candidates": {r.model_name: r.summary() for r in results if r.model_name != selection},
        "nested_selection": next((r.summary() for r in results if r.model_name == selection),
                                 None),
        "n_labelled": int(len(labelled.y)), "n_predicted": len(pred.ids),
        "n_skipped_patients": len(cohort.skipped_ids), "timings_seconds": timings,
        "referral": referral_metrics(rule, pred.decisions) if rule is not None else None,
        "risk_coverage": {r.model_name: risk_coverage(r) for r in results
                          if r.model_name != selection},
    })
