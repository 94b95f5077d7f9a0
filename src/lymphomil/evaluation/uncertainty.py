"""How firm is one patient's call? A spread of P(malignant) per patient, and a borderline flag.

Two sources, each the cheapest honest one for the patients it covers:

* **labelled patients** (cross-validated): the out-of-fold probabilities of the repeated CV the
  run already made, one per repeat, each from a model that never saw the patient. The spread is
  their range (min–max over the repeats; the report's out-of-fold errors show it,
  :func:`lymphomil.report.patients.oof_errors`).
* **unlabelled patients** (the ones the run predicts): the chosen model refitted
  :data:`N_REFITS` times, each time on a random stratified :data:`SUBSAMPLE` of the labelled
  patients (the size of a CV training part), each refit predicting every unlabelled patient.
  The spread is the 10th–90th percentile of these probabilities.

Both show how much a call depends on which patients trained the model. Neither is a calibrated
confidence interval of the patient's true probability. A call is **borderline** when its spread
straddles the decision threshold: some of the models behind it call the patient malignant and
others reactive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from lymphomil.evaluation.crossval import FoldTask, derive_seed, run_fold_task
from lymphomil.runtime.engine import LocalEngine

N_REFITS = 20
SUBSAMPLE = 0.8
PERCENTILES = (10.0, 90.0)
THRESHOLD = 0.5


@dataclass(frozen=True)
class Spread:
    """Per patient: the interval's ends and how it was made (said in words on the report)."""

    low: np.ndarray
    high: np.ndarray
    method: str

    def borderline(self, threshold: float = THRESHOLD) -> np.ndarray:
        return borderline(self.low, self.high, threshold)


def borderline(low: np.ndarray, high: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """True where the interval straddles ``threshold``: a call is malignant at p ≥ threshold,
    so the models behind the interval disagree when low < threshold ≤ high."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    return (low < threshold) & (high >= threshold)


def subsample_plan(y: np.ndarray, n_refits: int, fraction: float, seed: int) -> list[np.ndarray]:
    """``n_refits`` stratified random subsets of the labelled patients (indices, sorted)."""
    from sklearn.model_selection import StratifiedShuffleSplit

    y = np.asarray(y, dtype=int)
    splitter = StratifiedShuffleSplit(n_splits=n_refits, train_size=fraction,
                                      random_state=derive_seed(seed, "uncertainty"))
    return [np.sort(train) for train, _ in splitter.split(np.zeros(len(y)), y)]


def can_refit(y: np.ndarray, need: int, n_refits: int = N_REFITS,
              fraction: float = SUBSAMPLE, seed: int = 0) -> bool:
    """Every subsample of :func:`subsample_plan` holds ``need`` patients of each class (the
    model's ``minimum_per_class``): too small a cohort gets no refit spread, never a failed
    refit."""
    y = np.asarray(y, dtype=int)
    try:
        plan = subsample_plan(y, n_refits, fraction, seed)
    except ValueError:  # too few patients to draw a stratified subsample at all
        return False
    return all(int(np.bincount(y[train], minlength=2).min()) >= need for train in plan)


def refit_probas(model: Any, labelled: Sequence, y: np.ndarray, targets: Sequence, *,
                 seed: int = 0, name: str = "model", n_refits: int = N_REFITS,
                 fraction: float = SUBSAMPLE, engine: Any = None,
                 on_fit: Callable[..., None] | None = None) -> np.ndarray:
    """(n_refits, n_targets) P(malignant) of ``targets`` from refits of ``model`` (cloned and
    seeded per refit) on stratified subsamples of the labelled patients. Runs on ``engine``
    (default: here), so the refits spread over a Ray cluster like CV fits."""
    labelled = np.asarray(labelled, dtype=object)
    targets = np.asarray(targets, dtype=object)
    if not len(targets):
        return np.zeros((n_refits, 0))
    patients = np.concatenate([labelled, targets])
    y_all = np.concatenate([np.asarray(y, dtype=int), np.full(len(targets), -1)])
    test = np.arange(len(labelled), len(patients))
    plan = subsample_plan(y, n_refits, fraction, seed)
    tasks = [FoldTask(0, r, 0, derive_seed(seed, name, "refit", r), train, test)
             for r, train in enumerate(plan)]
    engine = engine or LocalEngine()
    outputs = engine.run_fits(run_fold_task, tasks,
                              on_done=(lambda i, _r: on_fit(1)) if on_fit else None,
                              shared={"models": [model], "patients": patients, "y": y_all})
    return np.stack([np.asarray(proba, dtype=float) for proba, _seconds in outputs])


def cached_refit_probas(root: Any, model: Any, labelled: Sequence, y: np.ndarray,
                        targets: Sequence, *, seed: int = 0, name: str = "model",
                        n_refits: int = N_REFITS, fraction: float = SUBSAMPLE,
                        engine: Any = None) -> np.ndarray:
    """:func:`refit_probas`, read back from the CV-result cache under ``root`` when the model,
    every patient (labelled and target), the plan and the seed are unchanged (a warm run)."""
    # deferred for start-up: cvcache imports models.base (scikit-learn), which a caller that
    # never caches (and the report, which imports this module) does not need
    from lymphomil.evaluation import cvcache

    def compute() -> tuple[np.ndarray, dict]:
        return refit_probas(model, labelled, y, targets, seed=seed, name=name,
                            n_refits=n_refits, fraction=fraction, engine=engine), {}

    key = cvcache.cv_key(model, f"{name}#refits@{fraction}", [*labelled, *targets],
                         folds=n_refits, repeats=0, seed=seed)
    rows, _ = cvcache.cached_rows(root, key, f"{name}#refits", [p.id for p in targets], compute,
                                  lambda rows, _params: len(rows) == n_refits, seed=seed)
    return rows


def refit_spread(probas: np.ndarray, percentiles: tuple[float, float] = PERCENTILES,
                 fraction: float = SUBSAMPLE) -> Spread:
    """The ``percentiles`` of each patient's refit probabilities."""
    n = probas.shape[0]
    low, high = np.percentile(probas, percentiles, axis=0)
    return Spread(low, high,
                  f"{percentiles[0]:g}th–{percentiles[1]:g}th percentile of {n} refits of the "
                  f"chosen model, each on a random stratified {fraction:.0%} of the labelled "
                  "patients")
