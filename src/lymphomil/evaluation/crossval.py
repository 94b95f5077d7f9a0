"""The honest harness: repeated, stratified, patient-level CV with intervals (docs/design.md §1).

* Folds split **patients** (a patient's cells never straddle folds), stratified by label,
  repeated with fixed seeds; each fit gets a seed derived from (seed, repeat, fold, model name),
  never from the order in which fits run.
* Whatever a model tunes (grid, early stopping, α, threshold) it tunes inside ``fit`` on the
  outer training part only: the harness hands it nothing else.
* Every metric is reported as mean ± std over repeats, with a 95 % interval from a bootstrap
  over patients (the uncertainty that matters with 130 patients), plus the *hard subset*:
  test patients whose count lies inside the reactive range of that fold's training part.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np

from lymphomil.evaluation.metrics import metrics_of
from lymphomil.runtime.engine import LocalEngine
from lymphomil.runtime.errors import LymphomilError

if TYPE_CHECKING:  # pragma: no cover
    from lymphomil.models.base import PatientModel
    from lymphomil.runtime.engine import Engine

METRICS = ("balanced_accuracy", "accuracy", "f1", "roc_auc", "hard_balanced_accuracy")
N_BOOTSTRAP = 1000


def derive_seed(seed: int, *parts: object) -> int:
    """A 31-bit seed from the run seed and a path of names (same inputs → same seed)."""
    text = ":".join([str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def with_seed(model: "PatientModel", seed: int) -> "PatientModel":
    if "random_state" in model.get_params(deep=False):
        model.set_params(random_state=seed)
    return model


def fold_plan(y: np.ndarray, folds: int, repeats: int, seed: int) -> np.ndarray:
    """(repeats, n) fold index of every patient in every repeat."""
    y = np.asarray(y)
    smallest = int(np.bincount(y, minlength=2).min())
    if smallest < folds:
        raise LymphomilError(
            f"{folds}-fold CV needs at least {folds} patients of each class; the smallest class "
            f"has {smallest}", fix=f"use --folds {max(2, smallest)} or add labelled patients")
    from sklearn.model_selection import StratifiedKFold

    plan = np.empty((repeats, len(y)), dtype=int)
    for r in range(repeats):
        splitter = StratifiedKFold(folds, shuffle=True, random_state=derive_seed(seed, "split", r))
        for k, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y)):
            plan[r, test] = k
    return plan


def inner_folds(y: np.ndarray, folds: int) -> int:
    """The folds an inner CV of the training patients ``y`` can have: at most ``folds``, and no
    more than the smallest class has patients (fewer than 2: no inner CV is possible)."""
    return min(int(folds), int(np.bincount(np.asarray(y, dtype=int), minlength=2).min()))


def out_of_fold(y: np.ndarray, folds: int, seed: int,
                fit_predict: Callable[[np.ndarray, np.ndarray, int], Any]) -> np.ndarray:
    """The inner out-of-fold loop that tunes a model inside its own training patients (a
    fusion's α or stacker, cell-topk's k, the referral rule's threshold): a stratified
    ``folds``-fold split of ``y`` shuffled with ``seed``; ``fit_predict(train, test, k)`` fits
    on the indices ``train`` and returns the values of the patients ``test`` (one row each).
    Returns every patient's out-of-fold row, in patient order."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y, dtype=int)
    oof: np.ndarray | None = None
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for k, (train, test) in enumerate(splitter.split(np.zeros(len(y)), y)):
        values = np.asarray(fit_predict(train, test, k), dtype=float)
        if oof is None:
            oof = np.full((len(y), *values.shape[1:]), np.nan)
        oof[test] = values
    return oof


def hard_mask(counts: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Test patients whose count lies in [min, max] of the training part's reactive counts."""
    reactive = counts[train][y[train] == 0]
    low, high = reactive.min(), reactive.max()
    return (counts[test] >= low) & (counts[test] <= high)


# --------------------------------------------------------------------------- results


def finite_percentile(values: np.ndarray, q: float) -> float:
    """The ``q``-th percentile of the finite values; NaN when there is none (a metric that no
    bootstrap draw could compute, e.g. a hard subset of one class), without numpy's warning on
    the user's terminal."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return float(np.percentile(finite, q)) if finite.size else float("nan")


@dataclass
class CVResult:
    """Out-of-fold predictions and metrics of one model under repeated CV."""

    model_name: str
    patient_ids: list[str]
    y: np.ndarray  # (n,)
    folds: np.ndarray  # (R, n) fold index per repeat
    proba: np.ndarray  # (R, n) out-of-fold P(malignant)
    hard: np.ndarray  # (R, n) hard-subset membership in that repeat's fold
    fit_seconds: np.ndarray  # (R, k) wall seconds of each fit + predict
    params: dict = field(default_factory=dict)
    seed: int = 0

    @property
    def per_repeat(self) -> dict[str, np.ndarray]:
        return metrics_of(self.proba, self.y[None, :], self.hard)

    def summary(self, n_bootstrap: int = N_BOOTSTRAP) -> dict[str, dict[str, float]]:
        """mean, std (over repeats) and a 95 % patient-bootstrap interval of each metric."""
        per_repeat = self.per_repeat
        rng = np.random.default_rng(derive_seed(self.seed, "bootstrap", self.model_name))
        idx = rng.integers(0, len(self.y), size=(n_bootstrap, len(self.y)))  # (B, n)
        boot = {m: np.zeros(n_bootstrap) for m in METRICS}
        for r in range(self.proba.shape[0]):
            values = metrics_of(self.proba[r][idx], self.y[idx], self.hard[r][idx])
            for m in METRICS:
                boot[m] += values[m] / self.proba.shape[0]
        out = {}
        for m in METRICS:
            values = per_repeat[m]
            out[m] = {
                "mean": float(np.nanmean(values)) if np.isfinite(values).any() else float("nan"),
                "std": float(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else 0.0,
                "ci_low": finite_percentile(boot[m], 2.5),
                "ci_high": finite_percentile(boot[m], 97.5),
            }
        out["hard_subset_size"] = {"mean": float(self.hard.sum(1).mean())}
        out["fit_seconds"] = {"mean": float(self.fit_seconds.mean()),
                              "total": float(self.fit_seconds.sum())}
        return out

    def oof_rows(self) -> list[dict]:
        """One row per (patient, repeat): the out-of-fold probabilities a report plots."""
        rows = []
        for r in range(self.proba.shape[0]):
            for i, pid in enumerate(self.patient_ids):
                rows.append({"ID": pid, "label": int(self.y[i]), "repeat": r,
                             "fold": int(self.folds[r, i]), "proba": float(self.proba[r, i]),
                             "hard": bool(self.hard[r, i])})
        return rows

    def mean_proba(self) -> np.ndarray:
        return self.proba.mean(0)

    def to_dict(self) -> dict:
        return {"model": self.model_name, "params": self.params, "seed": self.seed,
                "folds": int(self.folds.max() + 1), "repeats": int(self.proba.shape[0]),
                "n_patients": len(self.y), "summary": self.summary(),
                "per_repeat": {m: v.tolist() for m, v in self.per_repeat.items()}}


@dataclass(frozen=True)
class FoldTask:
    """One fit of the harness: model ``model_index`` on repeat ``repeat``'s fold ``fold``."""

    model_index: int
    repeat: int
    fold: int
    seed: int  # derived from (seed, model name, repeat, fold): never from run order
    train: np.ndarray  # (n_train,) patient indices
    test: np.ndarray  # (n_test,) patient indices


def fit_fold(model: "PatientModel", patients: np.ndarray, y: np.ndarray, train: np.ndarray,
             test: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """Fit a seeded clone on ``train``; (P(malignant) of ``test``, wall seconds)."""
    from sklearn.base import clone

    fitted = with_seed(clone(model), seed)
    start = time.perf_counter()
    fitted.fit(patients[train], y[train])
    proba = np.asarray(fitted.predict_proba(patients[test]))[:, 1]
    return proba, time.perf_counter() - start


def run_fold_task(shared: dict, task: FoldTask) -> tuple[np.ndarray, float]:
    """The unit an engine runs: ``shared`` holds the models, patients and labels."""
    model = shared["models"][task.model_index]
    return fit_fold(model, shared["patients"], shared["y"], task.train, task.test, task.seed)


class FitStore(Protocol):
    """Where each finished fit is kept (:class:`lymphomil.evaluation.cvcache.FitStore`): a re-run
    after an interrupt does only the fits that are missing."""

    def get(self, model_name: str, task: FoldTask) -> tuple[np.ndarray, float] | None: ...

    def put(self, model_name: str, task: FoldTask, result: tuple[np.ndarray, float]) -> None: ...


def fold_tasks(names: Sequence[str], y: np.ndarray, folds: int, repeats: int, seed: int
               ) -> tuple[np.ndarray, list[FoldTask]]:
    """The fold plan (repeats, n) and one :class:`FoldTask` per (model, repeat, fold), each
    seeded from its names: every pass over the same plan (the CV, the nested referral pass)
    fits the same clones on the same patients."""
    plan = fold_plan(y, folds, repeats, seed)
    tasks = [FoldTask(i, r, k, derive_seed(seed, name, r, k), np.flatnonzero(plan[r] != k),
                      np.flatnonzero(plan[r] == k))
             for i, name in enumerate(names) for r in range(repeats) for k in range(folds)]
    return plan, tasks


def cross_validate_many(models: Sequence[tuple[str, "PatientModel"]], patients: Sequence,
                        y: np.ndarray, *, folds: int = 5, repeats: int = 5, seed: int = 0,
                        on_fit: Callable[..., None] | None = None,
                        engine: "Engine | None" = None,
                        fit_store: FitStore | None = None) -> list[CVResult]:
    """Repeated stratified patient-level CV of several models on the same fold plan.

    Every (model, repeat, fold) fit is one independent task for ``engine`` (default: here, one
    after another); results are placed by task, so the order in which they finish is irrelevant.
    With ``fit_store``, a fit it holds is read back (the same numbers: fits are seeded by task)
    and each fit is stored as it ends.
    """
    # deferred for start-up: models.base imports scikit-learn, which reading CV results
    # (the report, coverage) never needs
    from lymphomil.models.base import encode_param

    patients = np.asarray(patients, dtype=object)
    y = np.asarray(y, dtype=int)
    plan, tasks = fold_tasks([name for name, _ in models], y, folds, repeats, seed)
    counts = np.array([p.lymph_count for p in patients], dtype=float)
    hard_masks = [hard_mask(counts, y, task.train, task.test) for task in tasks]
    params = [encode_param(model.get_params(deep=False)) for _, model in models]

    outputs: list = [None] * len(tasks)
    if fit_store is not None:
        outputs = [fit_store.get(models[t.model_index][0], t) for t in tasks]
    todo = [i for i, out in enumerate(outputs) if out is None]
    if on_fit is not None and len(todo) < len(tasks):
        on_fit(len(tasks) - len(todo), rate="reused")

    def on_done(index: int, result: tuple[np.ndarray, float]) -> None:
        task = tasks[todo[index]]
        if fit_store is not None:
            fit_store.put(models[task.model_index][0], task, result)
        if on_fit is not None:
            on_fit(1, rate=f"{models[task.model_index][0]} r{task.repeat + 1} f{task.fold + 1}")

    engine = engine or LocalEngine()
    shared = {"models": [model for _, model in models], "patients": patients, "y": y}
    if todo:
        done = engine.run_fits(run_fold_task, [tasks[i] for i in todo], on_done=on_done,
                               shared=shared)
        for i, result in zip(todo, done):
            outputs[i] = result
    results = []
    for i, (name, _) in enumerate(models):
        proba = np.full((repeats, len(y)), np.nan)
        hard = np.zeros((repeats, len(y)), dtype=bool)
        seconds = np.zeros((repeats, folds))
        for task, (task_proba, task_seconds), task_hard in zip(tasks, outputs, hard_masks):
            if task.model_index != i:
                continue
            proba[task.repeat, task.test] = task_proba
            seconds[task.repeat, task.fold] = task_seconds
            hard[task.repeat, task.test] = task_hard
        results.append(CVResult(name, [p.id for p in patients], y, plan, proba, hard, seconds,
                                params[i], seed))
    return results


def cross_validate(model: "PatientModel", patients: Sequence, y: np.ndarray, *, folds: int = 5,
                   repeats: int = 5, seed: int = 0, model_name: str | None = None,
                   on_fit: Callable[..., None] | None = None,
                   engine: "Engine | None" = None) -> CVResult:
    """Repeated stratified patient-level CV of ``model`` (cloned and re-seeded for every fit)."""
    name = model_name or type(model).__name__
    return cross_validate_many([(name, model)], patients, y, folds=folds, repeats=repeats,
                               seed=seed, on_fit=on_fit, engine=engine)[0]


#: the digits a mean is rounded to before two candidates compare: float noise (the order of a
#: sum) never decides, and no two real means of patient-level CV differ by less (130 patients,
#: 5 repeats: a step of 1 / (2 * 5 * 70 * 60) = 2.4e-5)
SELECTION_DIGITS = 6


def best_index(results: Sequence[CVResult]) -> int:
    """The one selection rule (``lymphomil run`` and ``select:`` models): the best mean
    balanced accuracy over repeats, ties broken by the hard subset's, then by list order."""
    def key(index: int) -> tuple[float, float, int]:
        per_repeat = results[index].per_repeat
        overall, hard = (per_repeat[m] for m in ("balanced_accuracy", "hard_balanced_accuracy"))
        hard_mean = float(np.nanmean(hard)) if np.isfinite(hard).any() else 0.0
        overall_mean = float(np.nanmean(overall)) if np.isfinite(overall).any() else float("nan")
        return (round(overall_mean, SELECTION_DIGITS), round(hard_mean, SELECTION_DIGITS), -index)

    return max(range(len(results)), key=key)


def choose_model(results: list[CVResult], forced: str | None = None,
                 selection: str | None = None) -> CVResult:
    """The forced model's result, else the candidate :func:`best_index` picks (the rule
    ``select:`` uses) among the candidates (the nested selection row is a figure, not a
    candidate)."""
    if forced:
        return next(r for r in results if r.model_name == forced)
    candidates = [r for r in results if r.model_name != selection]
    return candidates[best_index(candidates)]


def bootstrap_summary(values: Any, repeats: int, n: int, n_bootstrap: int, seed: int) -> dict:
    """mean, std over repeats and a 95 % patient-bootstrap interval (nan-mean over the repeats
    of each draw) of every metric ``values(index, repeat)`` returns (``index`` None: all
    patients): the intervals of the risk–coverage and nested referral figures.
    :meth:`CVResult.summary` keeps its own loop (a draw's repeats summed, not nan-averaged), so
    the published CV figures stay bit-identical."""
    import warnings

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_bootstrap, n))
    per_repeat = [values(None, r) for r in range(repeats)]
    boot = [values(idx, r) for r in range(repeats)]
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan slices give nan, as meant
        for m in per_repeat[0]:
            vals = np.array([float(v[m]) for v in per_repeat])
            draws = np.nanmean(np.stack([np.asarray(b[m], dtype=float) for b in boot]), axis=0)
            out[m] = {"mean": float(np.nanmean(vals)),
                      "std": float(np.nanstd(vals, ddof=1)) if np.isfinite(vals).sum() > 1
                      else 0.0,
                      "ci_low": float(np.nanpercentile(draws, 2.5)),
                      "ci_high": float(np.nanpercentile(draws, 97.5))}
    return out


def format_metric(stats: dict[str, float], digits: int = 3) -> str:
    if not np.isfinite(stats.get("mean", np.nan)):
        return "n/a"
    return (f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f} "
            f"[{stats['ci_low']:.{digits}f}, {stats['ci_high']:.{digits}f}]")


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
