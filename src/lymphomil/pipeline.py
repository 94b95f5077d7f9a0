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
from typing import Callable, Iterator

import numpy as np

from lymphomil.config import RunConfig, to_toml
from lymphomil.coverage import risk_coverage
from lymphomil.crossval import CVResult, best_index
from lymphomil.data.cohort import load_cohort
from lymphomil.outputs import atomic_write_json, atomic_write_text, default_cache_root, staged_dir
from lymphomil.uncertainty import N_REFITS


def synthetic_default(patients: int, seed: int) -> Path:
    """The built-in default cohort: generated once into the cache, then reused."""
    from lymphomil.data.synth import write_synthetic_cohort

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
    """The candidate :func:`lymphomil.crossval.best_index` picks (the rule ``select:`` uses)."""
    return results[best_index(results)]


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 2)


def run_pipeline(config: RunConfig, out: Path,
                 stage: Callable[[str], None] = lambda name: None,
                 on_fit: Callable[..., None] | None = None,
                 cv_total: Callable[[int], None] | None = None) -> RunResult:
    """Run every stage; ``stage(name)`` announces each one, ``on_fit`` ticks CV progress.
    Features and CV fits run on ``config.engine``; training and prediction are single fits."""
    from lymphomil.runtime import set_threads
    from lymphomil.steps import get_engine

    set_threads(config.threads)
    engine = get_engine(config.engine, fit_threads=config.threads)
    try:
        return _run_stages(config, out, engine, stage, on_fit, cv_total)
    finally:
        engine.close()


def _run_stages(config: RunConfig, out: Path, engine: object, stage: Callable[[str], None],
                on_fit: Callable[..., None] | None,
                cv_total: Callable[[int], None] | None) -> RunResult:
    from lymphomil.models.base import selection_name
    from lymphomil.ood import load_ood_checks
    from lymphomil.runcache import cached_explore, train_cached
    from lymphomil.steps import (
        attach_features,
        configure_model,
        decide_patients,
        labelled_patients,
        predict_patients,
        run_cv,
        write_cv_outputs,
        write_predictions,
    )

    timings: dict[str, float] = {}
    data = config.data
    if data is None:
        stage("synthetic cohort")
        with _timed(timings, "synthetic cohort"):
            data = synthetic_default(config.synthetic_patients, config.synthetic_seed)
    with staged_dir(out, "run") as staging:
        stage("validate and explore")
        with _timed(timings, "validate + explore"):
            cohort = load_cohort(data, reference_date=config.reference_date,
                                 on_error=config.on_error, cache_dir=config.cache_dir)
            labelled = labelled_patients(cohort)
            from lymphomil.options import check_folds_against

            check_folds_against(config.folds, labelled.y, "folds")  # before any feature
            summary = cached_explore(cohort, staging / "explore", config.cache_dir)
        candidates = list(dict.fromkeys(config.candidates
                                        + ([config.model] if config.model else [])))
        selection = (selection_name(candidates)
                     if config.nested_selection and len(candidates) > 1 else None)
        evaluated = candidates + ([selection] if selection else [])
        stage("features")
        with _timed(timings, "features"):
            models = [configure_model(name, config.features) for name in candidates]
            attach_features(cohort.patients, models, config.cache_dir, engine=engine)
        stage("cross-validation")
        if cv_total is not None:
            cv_total(len(evaluated) * config.folds * config.repeats)
        with _timed(timings, "cross-validation"):
            results = run_cv(evaluated, labelled.patients, labelled.y, folds=config.folds,
                             repeats=config.repeats, seed=config.seed, features=config.features,
                             cache_dir=config.cache_dir, on_fit=on_fit, use_cv_cache=True,
                             engine=engine)
            write_cv_outputs(results, staging / "cv")
        chosen = (next(r for r in results if r.model_name == config.model) if config.model
                  else choose_model([r for r in results if r.model_name != selection]))
        stage("referral rule (inner CV)")
        with _timed(timings, "referral rule"):
            rule = fit_run_rule(chosen.model_name, config, labelled)
        stage(f"train {chosen.model_name}")
        with _timed(timings, "train"):
            model = configure_model(chosen.model_name, config.features)
            model = train_cached(model, labelled, staging / "model", name=chosen.model_name,
                                 reference_date=config.reference_date, cache_dir=config.cache_dir,
                                 seed=config.seed, extra={"cv": chosen.to_dict()["summary"]},
                                 referral=rule)
        stage("predict")
        with _timed(timings, "predict"):
            targets = cohort.unlabelled
            pred = predict_patients(model, targets, cohort, cache_dir=config.cache_dir)
            if targets:
                checks = load_ood_checks(staging / "model", config.cache_dir)
                pred.decisions = decide_patients(rule, checks, model, pred)
                write_predictions(pred, staging / "predictions.csv")
                write_predictions(pred, staging / "submission.csv", kaggle=True)
            else:
                atomic_write_text(staging / "submission.csv", "Id,Predicted\n")
        spread = None
        if len(pred.ids):
            stage(f"uncertainty ({N_REFITS} refits)")
            with _timed(timings, "uncertainty"):
                spread = _refit_spread(chosen.model_name, config, labelled, pred, engine)
        stage("report")
        with _timed(timings, "report"):
            card = write_run_model_card(staging / "model", model, config, chosen, results,
                                        spread, rule)
            scorer = gallery_scorer(model, config, labelled, config.cache_dir)
            _write_report(staging / "report.html", config, data, chosen, results, summary,
                          pred, cohort, labelled.patients, timings,
                          files=run_files(staging, chosen.model_name), spread=spread, card=card,
                          scorer=scorer)
        skipped = cohort.skipped_table()
        if skipped:
            atomic_write_json(staging / "skipped.json", skipped)
        atomic_write_text(staging / "config.toml",
                          to_toml(config.model_copy(update={"data": data})))
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
    return RunResult(out, chosen.model_name, results, len(pred.ids), len(cohort.skipped_ids),
                     timings)


def fit_run_rule(name: str, config: RunConfig, labelled):
    """The referral rule of model ``name`` (:func:`lymphomil.steps.fit_rule`) to the config's
    target; None when a class has fewer than 2 patients."""
    from lymphomil.referral import check_target
    from lymphomil.steps import configure_model, fit_rule

    max_referral, target = check_target(config.max_referral, config.target_accuracy,
                                        ("max_referral", "target_accuracy"))
    return fit_rule(configure_model(name, config.features), labelled, name=name,
                    seed=config.seed, max_referral=max_referral, target_accuracy=target,
                    cache_dir=config.cache_dir)


def referral_metrics(rule, decisions) -> dict:
    """The rule and what it decided, for metrics.json and the model card."""
    from lymphomil.referral import decisions_table, referral_card

    return {**referral_card(rule),
            "predicted": decisions_table(decisions) if decisions is not None else None}


def _refit_spread(name: str, config: RunConfig, labelled, pred, engine: object):
    """The spread of each predicted patient's probability over refits of the chosen model."""
    from lymphomil.outputs import cv_cache
    from lymphomil.steps import attach_features, configure_model
    from lymphomil.uncertainty import cached_refit_probas, refit_spread

    model = configure_model(name, config.features)
    patients = attach_features(labelled.patients, [model], config.cache_dir)
    probas = cached_refit_probas(cv_cache(config.cache_dir), model, patients,
                                 labelled.y, pred.patients, seed=config.seed, name=name,
                                 engine=engine)
    return refit_spread(probas)


def score_units(model) -> str | None:
    """What the model's cell scores are (see :func:`lymphomil.model_card.score_units`)."""
    from lymphomil.model_card import score_units as units

    return units(model)


#: the model that scores cells for the galleries when the chosen model has no cell classifier
GALLERY_SCORER = "cell-topk"


def gallery_scorer(model, config: RunConfig, labelled, cache_dir: Path | None = None):
    """The model whose cell scores rank the galleries: the chosen model when its cell scores come
    from a cell classifier, else ``cell-topk`` fitted on the labelled patients (issue 15 item 2:
    a mean-pooled linear model's per-cell "logit shares" are not evidence about single cells)."""
    from lymphomil.models.base import create_model
    from lymphomil.runcache import cached_fit
    from lymphomil.steps import attach_features, configure_model

    cell_units = create_model(GALLERY_SCORER).instance_score_units
    if score_units(model) == cell_units:
        return model
    # the cells' log-odds come from the final cell classifier alone; k and the Platt map (what
    # the inner CV of cell-topk tunes) change the patient's score, never the cells' order
    scorer = configure_model(GALLERY_SCORER, config.features, ks=(0,), calibrate=False)
    patients = attach_features(labelled.patients, [scorer], cache_dir)
    return cached_fit(scorer, patients, labelled.y, tag="gallery-scorer", cache_dir=cache_dir,
                      fit=lambda: scorer.fit(patients, labelled.y))[0]


def _cell_scores(scorer, patients, cache_dir: Path | None = None):
    from lymphomil.steps import attach_features

    return scorer.instance_scores(attach_features(patients, [scorer], cache_dir))


def patient_calls(pred, spread=None, scorer=None, cache_dir: Path | None = None) -> list:
    """One report entry per predicted patient: call, probability, its spread (if measured), the
    cells behind it (ranked by ``scorer``, default the model that made the calls), and the
    referral rule's decision and reasons when ``pred`` carries them (``pred.decisions``: one
    :class:`lymphomil.referral.Decision` per patient)."""
    from lymphomil.report.render import PatientCall

    if not len(pred.ids):
        return []
    scores = (pred.model.instance_scores(pred.patients) if scorer is None
              else _cell_scores(scorer, pred.patients, cache_dir))
    parts = pred.model.part_probas(pred.patients) if hasattr(pred.model, "part_probas") else None
    decisions = getattr(pred, "decisions", None)
    return [PatientCall(
        id=patient.id, proba=float(pred.proba[i]), predicted=int(pred.labels[i]),
        true_label=int(patient.label), age=float(patient.age), gender=patient.gender,
        lymph_count=float(patient.lymph_count), n_images=patient.n_images,
        image_paths=list(patient.image_paths),
        instance_scores=None if scores is None else np.asarray(scores[i]),
        part_probas=None if parts is None else {k: float(v[i]) for k, v in parts.items()},
        interval=None if spread is None else (float(spread.low[i]), float(spread.high[i])),
        decision=None if decisions is None else decisions[i].decision,
        reasons=() if decisions is None else tuple(decisions[i].reasons))
        for i, patient in enumerate(pred.patients)]


def synthetic_origin(data: Path | None) -> dict | None:
    """What generated the cohort at ``data`` (None: the built-in demo cohort), or None when it is
    not a synthetic cohort. ``lymphomil synth`` leaves its marker file in every cohort it writes."""
    from lymphomil.data.synth import MARKER
    from lymphomil.errors import LymphomilError
    from lymphomil.outputs import read_json

    if data is None:
        return {}
    marker = Path(data) / MARKER
    if not marker.is_file():
        return None
    try:
        origin = read_json(marker)
    except LymphomilError:  # a damaged marker still marks the folder as generated
        return {}
    return origin if isinstance(origin, dict) else {}


#: what each file of a run folder holds, in the order the report lists them
RUN_FILES = (("predictions.csv", "ID, LABEL and P(malignant) of every predicted patient"),
             ("submission.csv", "the Kaggle submission: Id, Predicted"),
             ("cv/oof_{model}.csv", "the chosen model's out-of-fold probability of every labelled "
                                    "patient in every repeat"),
             ("cv/results.md", "the cross-validation table of every candidate"),
             ("metrics.json", "every candidate's CV metrics, the choice, the timings"),
             ("model/model_card.json", "the model card (what the model is, how it was checked)"),
             ("config.toml", "the resolved configuration: repeat the run with --config"))


def run_files(folder: Path, model_name: str) -> list[tuple[str, str]]:
    """(relative path, what it holds) of the files written so far into a run folder; the report
    links to them. The config and metrics.json are always written, after the report."""
    files = []
    for name, what in RUN_FILES:
        name = name.format(model=model_name)
        if name in ("config.toml", "metrics.json") or (folder / name).is_file():
            files.append((name, what))
    return files


def error_calls(chosen: CVResult, model, labelled, cache_dir: Path | None = None) -> list:
    """Report entries of the labelled patients ``chosen`` gets wrong out of fold: their mean
    out-of-fold probability and its range, and their cells ranked by the final ``model``."""
    from lymphomil.report.render import PatientCall, oof_errors
    from lymphomil.steps import attach_features

    errors = oof_errors(chosen)
    if not errors:
        return []
    by_id = {p.id: p for p in labelled}
    patients = attach_features([by_id[e["id"]] for e in errors], [model], cache_dir)
    scores = _cell_scores(model, patients, cache_dir)
    return [PatientCall(
        id=e["id"], proba=e["mean"], predicted=int(e["mean"] >= 0.5), true_label=e["label"],
        age=float(p.age), gender=p.gender, lymph_count=float(p.lymph_count),
        n_images=p.n_images, image_paths=list(p.image_paths),
        instance_scores=None if scores is None else np.asarray(scores[i]),
        interval=(e["low"], e["high"]), oof_wrong=(e["wrong"], e["repeats"]))
        for i, (e, p) in enumerate(zip(errors, patients))]


def write_run_model_card(model_dir: Path, model, config: RunConfig, chosen: CVResult,
                         results: list[CVResult], spread=None, rule=None) -> dict:
    """The trained model's card (lymphomil.model_card), written into its folder; returned for
    the report."""
    from lymphomil.model_card import build_model_card, write_model_card
    from lymphomil.models.base import describe_model
    from lymphomil.outputs import read_json
    from lymphomil.report.render import calibration_stats

    card = build_model_card(
        model, chosen.model_name, read_json(Path(model_dir) / "metadata.json"), chosen=chosen,
        results=results, forced=bool(config.model), brier=calibration_stats(chosen)["brier"],
        uncertainty=None if spread is None else spread.method,
        description=describe_model(chosen.model_name),
        referral=None if rule is None else referral_metrics(rule, None))
    write_model_card(model_dir, card)
    return card


def _write_report(path: Path, config: RunConfig, data: Path, chosen: CVResult,
                  results: list[CVResult], summary: dict, pred, cohort, labelled,
                  timings, files: list[tuple[str, str]] | None = None, spread=None,
                  card: dict | None = None, scorer=None) -> None:
    from lymphomil.models.base import describe_model, library_versions, selection_candidates
    from lymphomil.report.render import ReportContext, render_report

    scorer = pred.model if scorer is None else scorer
    notes = ["The chosen model's CV figure is optimistic: it was picked as the best of "
             f"{len(results)} candidates on the same folds."]
    nested = [r for r in results if selection_candidates(r.model_name)]
    if nested:
        ba = nested[0].summary(n_bootstrap=10)["balanced_accuracy"]
        notes.append(f"Honest figure of the choice itself (row {nested[0].model_name}): the "
                     "choice among the candidates made inside each outer training part scores "
                     f"{ba['mean']:.3f} ± {ba['std']:.3f} balanced accuracy.")
    context = ReportContext(
        title="lymphomil report", data_root=str(data), model_name=chosen.model_name,
        model_description=describe_model(chosen.model_name), cv_results=results,
        explore=summary, calls=patient_calls(pred, spread, scorer, config.cache_dir),
        skipped=cohort.skipped_table(),
        config=config.model_dump(mode="json"), versions=library_versions(), timings=timings,
        notes=notes,
        counts={p.id: float(p.lymph_count) for p in labelled},
        synthetic=synthetic_origin(data),
        reference_date=config.reference_date.isoformat(), files=files or [],
        interval_method=spread.method if spread is not None else None,
        score_units=score_units(scorer),
        cell_scorer=chosen.model_name if scorer is pred.model else GALLERY_SCORER,
        errors=error_calls(chosen, scorer, labelled, config.cache_dir), model_card=card)
    from lymphomil.outputs import cache_root

    render_report(context, path, gallery_k=config.gallery_k,
                  figure_cache=cache_root(config.cache_dir) / "figures")


def write_prediction_report(path: Path, pred, data: Path, model_dir: Path,
                            gallery_k: int = 8, csv_path: Path | None = None,
                            write: Callable[[Path, bytes, str], Path] | None = None) -> Path:
    """The per-patient galleries for new patients (no CV: the model was trained elsewhere)."""
    from lymphomil.model_card import MODEL_CARD_JSON
    from lymphomil.models.base import library_versions
    from lymphomil.outputs import read_json
    from lymphomil.report.render import ReportContext, render_report

    metadata = read_json(Path(model_dir) / "metadata.json")
    card_path = Path(model_dir) / MODEL_CARD_JSON
    cv = metadata.get("cv")
    training = metadata.get("training") or {}  # null: a model saved from Python without it
    notes = [f"Model {metadata.get('model_name') or 'unnamed'} from {model_dir}"
             + (f", trained on {training['n_patients']} patients." if training else ".")]
    if cv:
        ba = cv["balanced_accuracy"]
        notes.append(f"Its cross-validated balanced accuracy at training time: "
                     f"{ba['mean']:.3f} ± {ba['std']:.3f}.")
    context = ReportContext(
        title="lymphomil predictions", data_root=str(data),
        model_name=str(metadata.get("model_name")), model_description="", cv_results=[],
        explore=None, calls=patient_calls(pred), skipped=pred.skipped, config={},
        versions=library_versions(), timings={}, notes=notes,
        synthetic=synthetic_origin(data), reference_date=metadata.get("reference_date"),
        score_units=score_units(pred.model),
        model_card=read_json(card_path) if card_path.is_file() else None,
        files=[] if csv_path is None else [(_relative(csv_path, Path(path).parent),
                                            "the predictions this page shows")])
    return render_report(context, path, gallery_k=gallery_k, write=write)


def _relative(target: Path, start: Path) -> str:
    import os

    return Path(os.path.relpath(Path(target).absolute(), Path(start).absolute())).as_posix()
