"""The cross-validation flow: what ``lymphomil cv``, :func:`lymphomil.cross_validate` and the
CV stage of ``lymphomil run`` do (repeated CV of each model, its trust figures, the cv/ folder).

The building blocks are in :mod:`lymphomil.flows.steps`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from lymphomil.evaluation.crossval import CVResult, format_metric
from lymphomil.flows.options import check_model_names
from lymphomil.flows.steps import (
    LabelledSet,
    attach_features,
    check_can_fit,
    configure_model,
    run_cv,
    write_cv_outputs,
)
from lymphomil.models.base import PatientModel, selection_candidates, selection_name
from lymphomil.outputs import atomic_write_json, staged_dir
from lymphomil.referral import INNER_FOLDS, nested_referral, rule_minimum
from lymphomil.referral.coverage import cv_trust
from lymphomil.runtime import progress_protocol
from lymphomil.runtime.engine import Engine
from lymphomil.runtime.engines import get_engine
from lymphomil.runtime.errors import LymphomilError


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
    #: each model's risk–coverage and nested referral figure (lymphomil.referral.coverage.cv_trust)
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
    (:func:`lymphomil.flows.steps.run_cv`); with ``trust`` each model's risk–coverage figure, and
    with ``referral`` its referral rule measured nested too; with ``out`` the folder of
    metrics.json, oof_<model>.csv and results.md, staged (a finished one has checksums.json).
    ``engine``: an engine, or its name (started here and closed at the end)."""
    pairs = [(m, configure_model(m, features)) if isinstance(m, str) else m for m in models]
    for name, model in pairs:  # too few patients: the minimum, before any feature or fit
        check_can_fit(model, name, labelled.y, folds)
    runner = get_engine(engine, fit_threads=threads) if isinstance(engine, str) else engine
    try:
        with _fits("cross-validation fits", len(pairs) * folds * repeats, on_fit) as advance:
            results = run_cv(pairs, labelled.patients, labelled.y, folds=folds,
                             repeats=repeats, seed=seed, features=features,
                             cache_dir=cache_dir, on_fit=advance, use_cv_cache=use_cv_cache,
                             store_fits=store_fits, engine=runner)
        run = CVRun(results)
        nested = (_nested_referral(pairs, labelled, run, folds, repeats, seed, cache_dir,
                                   runner) if referral else {})
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
    """A progress task whose advance takes ``rate=`` as :func:`lymphomil.flows.steps.run_cv` gives
    it."""

    def __init__(self, description: str, total: int, unit: str):
        self.task = progress_protocol.task(description, total, unit)

    def __enter__(self) -> Callable[..., None]:
        advance = self.task.__enter__()
        return lambda step=1, rate="": advance(step, rate)

    def __exit__(self, *exc: object) -> None:
        self.task.__exit__(*exc)


def _nested_referral(pairs: Sequence[tuple[str, PatientModel]], labelled: LabelledSet,
                     run: CVRun, folds: int, repeats: int, seed: int, cache_dir: Path | None,
                     engine: Engine | None) -> dict:
    """Each model's nested referral pass (lymphomil.referral.nested_referral); the nested
    selection rows are left out (an inner CV inside their inner CV: too slow), and so is a
    model whose rule the outer training parts are too small to fit (said in ``run.notes``)."""
    counts = np.bincount(np.asarray(labelled.y, dtype=int), minlength=2)
    part = int((counts - np.ceil(counts / folds)).min())  # the fewest of a class in a part
    for name, model in pairs:
        if not selection_candidates(name) and part < rule_minimum(model):
            run.notes.append(f"the referral rule's nested figure of {name} is left out: an outer "
                             f"training part holds {part} patients of a class, and the rule's "
                             f"inner CV of this model needs {rule_minimum(model)} (the CV "
                             "figures above stand)")
    pairs = [(name, model) for name, model in pairs
             if not selection_candidates(name) and part >= rule_minimum(model)]
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
