"""The cross-validation flow: what ``lymphomil cv``, :func:`lymphomil.cross_validate` and the CV
stage of ``lymphomil run`` do.

Read top to bottom: the options checked, the labelled patients (read from their folder when a
command gives one), the repeated CV of every model (:func:`run_cv`: the one CV loop, read back
from the CV-result cache when unchanged), each model's trust figures (risk–coverage, the
referral rule measured nested), and the folder of metrics.json, oof_<model>.csv and results.md.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from lymphomil.data.cohort import LabelledSet
from lymphomil.evaluation import cvcache
from lymphomil.evaluation.crossval import (
    CVResult,
    cross_validate_many,
    format_metric,
)
from lymphomil.flows import options
from lymphomil.flows.caches import attach_features, cv_results
from lymphomil.flows.patients import check_can_fit, configure_model, load_labelled
from lymphomil.models.base import PatientModel, selection_candidates, selection_name
from lymphomil.outputs import atomic_write_json, atomic_write_text, staged_dir
from lymphomil.referral import INNER_FOLDS, check_target, nested_referral, rule_minimum
from lymphomil.referral.coverage import cv_trust, trust_markdown
from lymphomil.runtime import progress_protocol
from lymphomil.runtime.engine import Engine
from lymphomil.runtime.engines import get_engine
from lymphomil.runtime.environment import set_threads
from lymphomil.runtime.errors import LymphomilError

#: a model to cross-validate: a registered name, or a ``(name, model)`` pair
Candidate = str | tuple[str, PatientModel]


@dataclass
class CVRun:
    results: list[CVResult]
    labelled: LabelledSet
    #: each model's risk–coverage and nested referral figure (lymphomil.referral.coverage.cv_trust)
    trust: dict | None = None
    #: what was left out, in a line each, for the caller to show
    notes: list[str] = field(default_factory=list)

    def trust_markdown(self) -> str:
        """Each model's risk–coverage and nested referral figure, as a markdown table."""
        return trust_markdown(self.trust) if self.trust else ""


def cross_validate(models: Sequence[Candidate], labelled: LabelledSet | Path, *, folds: int,
                   repeats: int, seed: int, select: str | None = None,
                   reference_date: date | None = None, on_error: str = "raise",
                   features: str | None = None, cache_dir: Path | None = None,
                   engine: Engine | str | None = None, threads: int | None = None,
                   on_fit: Callable[..., None] | None = None, use_cv_cache: bool = False,
                   store_fits: bool = True, trust: bool = False, referral: bool = False,
                   max_referral: float | None = None, target_accuracy: float | None = None,
                   out: Path | None = None) -> CVRun:
    """Repeated CV of ``models`` on the labelled patients (or on those of the folder
    ``labelled``, read at ``reference_date``; ``select``: the row ``select:A,B,C`` added, the
    choice among A, B, C made by inner CV in each outer training part); with ``trust`` each
    model's risk–coverage figure, and with ``referral`` its referral rule measured nested too;
    with ``out`` the folder of metrics.json, oof_<model>.csv and results.md, staged (a finished
    one has checksums.json). ``engine``: an engine, or its name (started here, closed at the
    end); ``threads``: fitting threads, fixed for reproducibility (None: as they are). Every
    option is checked before any work."""
    models = cv_models(models, select)
    max_referral, target_accuracy = check_target(max_referral, target_accuracy)
    options.check_folds(folds)
    options.check_repeats(repeats)
    features = options.features_option(features)
    if threads is not None:
        set_threads(options.check_threads(threads))
    if isinstance(labelled, Path):
        labelled = load_labelled(labelled, reference_date=reference_date, on_error=on_error,
                                 cache_dir=cache_dir, folds=folds)
    models = [(m, configure_model(m, features)) if isinstance(m, str) else m for m in models]
    for name, model in models:  # too few patients: the minimum, before any feature or fit
        check_can_fit(model, name, labelled.y, folds)
    runner = (get_engine(engine, fit_threads=threads or 1) if isinstance(engine, str)
              else engine)
    try:
        results = run_cv(models, labelled.patients, labelled.y, folds=folds, repeats=repeats,
                         seed=seed, features=features, cache_dir=cache_dir, on_fit=on_fit,
                         use_cv_cache=use_cv_cache, store_fits=store_fits, engine=runner)
        run = CVRun(results, labelled)
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


def cv_models(names: Sequence[Candidate], select: str | None = None) -> list[Candidate]:
    """The models' names checked (pairs given from Python pass as they are), and the row
    ``select:A,B,C`` of ``--select``'s candidates (the choice among them made by inner CV
    inside each outer training part)."""
    if select is not None:
        names = [*names, selection_name(options.check_model_names(select.split(","),
                                                                  "--select"))]
    if all(isinstance(name, str) for name in names):
        options.check_model_names(names)
    return list(names)


def run_cv(models: Sequence[Candidate], patients: np.ndarray, y: np.ndarray, *, folds: int,
           repeats: int, seed: int, features: str | None = None,
           cache_dir: Path | None = None, on_fit: Callable[..., None] | None = None,
           use_cv_cache: bool = False, store_fits: bool = True,
           engine: Engine | None = None) -> list[CVResult]:
    """Repeated CV of each model (a registered name, or a ``(name, model)`` pair): the one CV
    loop of ``cv``, ``run`` and :func:`lymphomil.cross_validate`. With ``use_cv_cache`` an
    unchanged model/data/plan is read back from the CV-result cache instead of refitted (see
    :mod:`lymphomil.evaluation.cvcache`); with ``store_fits`` each fit is kept as it ends, so a
    re-run after an interrupt does only the missing ones. ``engine`` runs the features and the
    fits (:mod:`lymphomil.runtime.engine`; default: here); ``on_fit(n, rate=)`` counts the fits
    (default: a task of the installed progress)."""
    pairs = [(m, configure_model(m, features)) if isinstance(m, str) else m for m in models]
    attached = attach_features(patients, [model for _, model in pairs], cache_dir, engine=engine)
    root = cv_results(cache_dir)
    results: dict[str, CVResult] = {}
    keys: dict[str, str] = {}
    with progress_protocol.counting("cross-validation fits", len(models) * folds * repeats,
                                    "fits", on_fit) as advance:
        if use_cv_cache or store_fits:
            for name, model in pairs:
                keys[name] = cvcache.cv_key(model, name, attached, folds, repeats, seed)
        for name, model in pairs:
            cached = cvcache.load_cached(root, keys[name]) if use_cv_cache else None
            if cached is not None:
                advance(folds * repeats, rate="cached")
                results[name] = cached
        todo = [(name, model) for name, model in pairs if name not in results]
        if todo:
            store = cvcache.FitStore(root, keys) if store_fits else None
            for result in cross_validate_many(todo, attached, y, folds=folds, repeats=repeats,
                                              seed=seed, on_fit=advance, engine=engine,
                                              fit_store=store):
                if use_cv_cache:
                    cvcache.store(root, keys[result.model_name], result)
                results[result.model_name] = result
            if store is not None and store.reused:
                total = len(todo) * folds * repeats
                logging.getLogger("lymphomil").warning(
                    "cross-validation: reused %d of %d fits stored by an earlier run; "
                    "computed %d", store.reused, total, total - store.reused)
    return [results[name] for name, _ in pairs]


def _nested_referral(models: Sequence[Candidate], labelled: LabelledSet, run: CVRun,
                     folds: int, repeats: int, seed: int, features: str | None,
                     cache_dir: Path | None, engine: Engine | None) -> dict:
    """Each model's nested referral pass (lymphomil.referral.nested_referral); the nested
    selection rows are left out (an inner CV inside their inner CV: too slow), and so is a
    model whose rule the outer training parts are too small to fit (said in ``run.notes``)."""
    pairs = [(m, configure_model(m, features)) if isinstance(m, str) else m for m in models]
    pairs = [(name, model) for name, model in pairs if not selection_candidates(name)]
    counts = np.bincount(np.asarray(labelled.y, dtype=int), minlength=2)
    part = int((counts - np.ceil(counts / folds)).min())  # the fewest of a class in a part
    for name, model in pairs:
        if part < rule_minimum(model):
            run.notes.append(f"the referral rule's nested figure of {name} is left out: an outer "
                             f"training part holds {part} patients of a class, and the rule's "
                             f"inner CV of this model needs {rule_minimum(model)} (the CV "
                             "figures above stand)")
    pairs = [(name, model) for name, model in pairs if part >= rule_minimum(model)]
    if not pairs:
        return {}
    patients = attach_features(labelled.patients, [model for _, model in pairs], cache_dir)
    try:
        with progress_protocol.counting(
                f"referral rule, nested (1 + {INNER_FOLDS} fits per outer fold)",
                len(pairs) * folds * repeats, "outer folds") as advance:
            done = nested_referral(pairs, patients, labelled.y, folds=folds, repeats=repeats,
                                   seed=seed, engine=engine, on_fit=advance)
    except LymphomilError as exc:  # e.g. an inner grid search on too few patients of a class
        run.notes.append(f"the referral rule's nested figure is left out: {exc.problem} (the CV "
                         "figures above stand; --no-referral skips this pass)")
        return {}
    return {item.model_name: item for item in done}


def write_cv_outputs(results: Sequence[CVResult], out: Path, trust: dict | None = None) -> dict:
    """metrics.json (all models) + oof_<model>.csv + results.md in ``out``; ``trust``: each
    model's risk–coverage and nested referral figure (lymphomil.referral.coverage.cv_trust),
    added."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {r.model_name: {**r.to_dict(), **(trust or {}).get(r.model_name, {})}
               for r in results}
    for result in results:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, ["ID", "label", "repeat", "fold", "proba", "hard"])
        writer.writeheader()
        writer.writerows(result.oof_rows())
        atomic_write_text(out / f"oof_{result.model_name}.csv", buffer.getvalue())
    markdown = cv_markdown(results)
    if trust:
        markdown += trust_markdown(trust)
    atomic_write_text(out / "results.md", markdown)
    atomic_write_json(out / "metrics.json", payload)
    return payload


def cv_markdown(results: Sequence[CVResult]) -> str:
    lines = ["| model | balanced accuracy | hard-subset bal. acc. | ROC AUC | accuracy | F1 | "
             "minutes |", "|---|---|---|---|---|---|---|"]
    for r in results:
        s = r.summary()
        lines.append(" | ".join([
            f"| {r.model_name}", format_metric(s["balanced_accuracy"]),
            format_metric(s["hard_balanced_accuracy"]), format_metric(s["roc_auc"]),
            format_metric(s["accuracy"]), format_metric(s["f1"]),
            f"{s['fit_seconds']['total'] / 60:.2f} |"]))
    return "\n".join(lines) + "\n"
