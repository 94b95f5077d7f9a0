"""The referral rule measured as a user meets it (nested CV): in each outer fold the threshold
comes from an inner CV of that fold's training part and is applied to its test patients (the
harness's plan, seeds and outer fits: the same out-of-fold probabilities as ``cv``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from lymphomil.evaluation.crossval import (
    CVResult,
    FoldTask,
    bootstrap_summary,
    derive_seed,
    fold_tasks,
    hard_mask,
    with_seed,
)
from lymphomil.evaluation.metrics import balanced_accuracy
from lymphomil.referral.fit import inner_oof, part_probas_of, rule_from_oof
from lymphomil.referral.rule import DEFAULT_SIGNAL, INNER_FOLDS, ReferralRule
from lymphomil.runtime.engine import LocalEngine


@dataclass
class NestedReferral:
    """Per outer (repeat, fold): the test patients' probabilities and experts, and the inner CV
    of that fold's training part (everything a rule needs; thresholds are chosen later)."""

    model_name: str
    y: np.ndarray
    folds: np.ndarray  # (R, n)
    hard: np.ndarray  # (R, n)
    proba: np.ndarray  # (R, n) outer out-of-fold P(malignant)
    parts: dict[str, np.ndarray]  # name -> (R, n)
    #: per task: repeat, train, test, proba, parts, folds (the inner CV), and optionally
    #: ``referred_anyway`` (its training patients referred for other reasons, e.g. OOD)
    inner: list[dict] = field(default_factory=list)
    seed: int = 0

    def referred(self, signal: str = DEFAULT_SIGNAL, max_referral: float | None = None,
                 target_accuracy: float | None = None) -> tuple[np.ndarray, list[ReferralRule]]:
        """(R, n) True where each fold's rule (fitted on its inner CV) refers the patient."""
        refer = np.zeros(self.proba.shape, dtype=bool)
        rules = []
        for item in self.inner:
            r, test = item["repeat"], item["test"]
            rule = rule_from_oof(item["proba"], self.y[item["train"]], item["parts"],
                                 signal=signal, max_referral=max_referral,
                                 target_accuracy=target_accuracy, folds=item["folds"],
                                 referred_anyway=item.get("referred_anyway"))
            parts = {k: v[r, test] for k, v in self.parts.items()}
            decided = rule.decide(self.proba[r, test], parts if rule.parts else None)
            refer[r, test] = [d.decision == "refer" for d in decided]
            rules.append(rule)
        return refer, rules

    def evaluate(self, signal: str = DEFAULT_SIGNAL, max_referral: float | None = None,
                 target_accuracy: float | None = None, n_bootstrap: int = 1000,
                 also_refer: np.ndarray | None = None) -> dict:
        """Fraction referred and the auto-calls' balanced accuracy (all, hard subset) of the
        nested rule: mean ± std over repeats, 95 % patient-bootstrap interval. ``also_refer``
        (R, n): patients referred for other reasons too (e.g. each fold's OOD checks)."""
        refer, rules = self.referred(signal, max_referral, target_accuracy)
        if also_refer is not None:
            refer = refer | np.asarray(also_refer, dtype=bool)
        pred = self.proba >= 0.5
        y = self.y

        def values(index: np.ndarray | None, r: int) -> dict[str, np.ndarray]:
            sel = (slice(None) if index is None else index)
            yy, rr, pp, hh = y[sel], refer[r][sel], pred[r][sel], self.hard[r][sel]
            return {"referred": rr.mean(-1),
                    "auto_balanced_accuracy": balanced_accuracy(pp, yy, ~rr),
                    "hard_referred": (rr & hh).sum(-1) / np.maximum(hh.sum(-1), 1),
                    "hard_auto_balanced_accuracy": balanced_accuracy(pp, yy, ~rr & hh),
                    "balanced_accuracy": balanced_accuracy(pp, yy)}

        out = bootstrap_summary(values, self.proba.shape[0], len(y), n_bootstrap,
                                derive_seed(self.seed, "bootstrap-referral", self.model_name))
        targets = [r.max_referral if r.max_referral is not None else r.target_accuracy
                   for r in rules]
        out["rule"] = {"signal": signal, "max_referral": max_referral,
                       "target_accuracy": target_accuracy,
                       "reached_in_folds": sum(r.reached for r in rules), "folds": len(rules),
                       "threshold_mean": float(np.mean([r.threshold for r in rules])),
                       "threshold_range": [float(min(r.threshold for r in rules)),
                                           float(max(r.threshold for r in rules))],
                       "target": targets[0] if targets else None}
        return out


def run_referral_task(shared: dict, task: FoldTask) -> dict:
    """The engine's unit: the outer fit of ``task`` (as the harness makes it: same clone, same
    seed) and an inner CV of its training part. Only ``task.train`` patients are fitted on."""
    from sklearn.base import clone

    model = shared["models"][task.model_index]
    patients, y = shared["patients"], shared["y"]
    fitted = with_seed(clone(model), task.seed)
    fitted.fit(patients[task.train], y[task.train])
    test = patients[task.test]
    proba = np.asarray(fitted.predict_proba(test))[:, 1]
    inner = None
    if int(np.bincount(y[task.train], minlength=2).min()) >= 2:
        p, parts, folds = inner_oof(model, patients[task.train], y[task.train],
                                    folds=shared.get("inner_folds", INNER_FOLDS), seed=task.seed,
                                    name=shared["names"][task.model_index])
        inner = {"proba": p, "parts": parts, "folds": folds}
    return {"proba": proba, "parts": part_probas_of(fitted, test), "inner": inner}


def nested_referral(models: Sequence[tuple[str, Any]], patients: Sequence, y: np.ndarray, *,
                    folds: int = 5, repeats: int = 5, seed: int = 0,
                    inner_folds: int = INNER_FOLDS, engine: Any = None,
                    on_fit: Any = None) -> list[NestedReferral]:
    """For each model, the outer CV of :func:`lymphomil.evaluation.crossval.cross_validate_many`
    (same plan, same seeds: the same out-of-fold probabilities) plus an inner CV per outer training
    part. About ``1 + inner_folds`` times the fits of the plain CV."""
    patients = np.asarray(patients, dtype=object)
    y = np.asarray(y, dtype=int)
    plan, tasks = fold_tasks([name for name, _ in models], y, folds, repeats, seed)
    counts = np.array([p.lymph_count for p in patients], dtype=float)
    engine = engine or LocalEngine()
    shared = {"models": [m for _, m in models], "names": [n for n, _ in models],
              "patients": patients, "y": y, "inner_folds": inner_folds}
    outputs = engine.run_fits(run_referral_task, tasks,
                              on_done=(lambda i, _r: on_fit(1)) if on_fit else None,
                              shared=shared)
    results = []
    for i, (name, _) in enumerate(models):
        proba = np.full((repeats, len(y)), np.nan)
        hard = np.zeros((repeats, len(y)), dtype=bool)
        parts: dict[str, np.ndarray] = {}
        inner = []
        for task, out in zip(tasks, outputs):
            if task.model_index != i:
                continue
            proba[task.repeat, task.test] = out["proba"]
            hard[task.repeat, task.test] = hard_mask(counts, y, task.train, task.test)
            for key, value in out["parts"].items():
                parts.setdefault(key, np.full((repeats, len(y)), np.nan))[task.repeat,
                                                                           task.test] = value
            if out["inner"] is not None:
                inner.append({"repeat": task.repeat, "fold": task.fold, "train": task.train,
                              "test": task.test, **out["inner"]})
        results.append(NestedReferral(name, y, plan, hard, proba, parts, inner, seed))
    return results


def same_as_cv(nested: NestedReferral, result: CVResult) -> bool:
    """True when the nested pass's outer probabilities are bit-identical to the harness's."""
    return bool(np.array_equal(nested.proba, result.proba, equal_nan=True))
