"""Which calls to trust: a referral rule that auto-calls the firm patients and refers the rest.

A fitted model gives P(malignant); the rule turns it into ``malignant``, ``reactive`` or
``refer`` (a haematologist looks), each with reasons a person reads. The rule ranks patients by a
*firmness score* and refers those below a threshold:

* ``margin``: |P − 0.5|, the distance of the model's probability from the decision threshold;
* ``agreement``: the smallest margin, in the direction of the call, of the probability and of
  each expert the model fuses (a fusion's attribute and image sides, ``part_probas``); negative
  when an expert contradicts the call.

The threshold is fitted **on the training patients only**: an inner stratified K-fold CV gives
each training patient an out-of-fold probability, and the threshold is chosen on those to the
user's target, either ``max_referral`` (refer at most this fraction) or ``target_accuracy`` (the
smallest referral rate whose auto-call balanced accuracy reaches it, capped at
:data:`MAX_ALLOWED_REFERRAL`). The rule is a small pydantic model saved as JSON beside the model.

:func:`nested_referral` measures the rule as a user would meet it: in each outer CV fold the
threshold comes from an inner CV of that fold's training part, and is applied to its test
patients (:mod:`lymphomil.crossval`'s plan and seeds; the outer fits are the harness's own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lymphomil.crossval import (
    CVResult,
    FoldTask,
    bootstrap_summary,
    derive_seed,
    fold_tasks,
    hard_mask,
    with_seed,
)
from lymphomil.errors import LymphomilError
from lymphomil.metrics import balanced_accuracy

SIGNALS = ("margin", "agreement")
#: the default signal: measured in the nested protocol against ``agreement`` (docs/results.md)
DEFAULT_SIGNAL = "margin"
#: the default target: refer at most a fifth of the patients (a lab can review one in five)
DEFAULT_MAX_REFERRAL = 0.2
#: ``target_accuracy`` never refers more than this fraction (a tool that refers most patients
#: is no tool): when the target is not reached below it, the rule refers this fraction and says so
MAX_ALLOWED_REFERRAL = 0.5
INNER_FOLDS = 5
REFERRAL_JSON = "referral.json"
FIX = "re-create the model folder with `lymphomil train` (never edit it by hand)"
DECISIONS = ("malignant", "reactive", "refer")


# --------------------------------------------------------------------------- scores


def firmness(proba: np.ndarray, parts: dict[str, np.ndarray] | None = None,
             signal: str = DEFAULT_SIGNAL) -> np.ndarray:
    """Per patient, how firm the call is (higher = firmer); the rule refers the lowest."""
    proba = np.asarray(proba, dtype=float)
    margin = np.abs(proba - 0.5)
    if signal == "margin" or not parts:
        return margin
    if signal != "agreement":
        raise LymphomilError(f"unknown referral signal {signal!r}",
                             fix=f"use one of {', '.join(SIGNALS)}")
    direction = np.where(proba >= 0.5, 1.0, -1.0)
    sided = [(np.asarray(p, dtype=float) - 0.5) * direction for p in parts.values()]
    return np.minimum(margin, np.min(sided, axis=0))


def _auto_accuracy(y: np.ndarray, proba: np.ndarray, auto: np.ndarray) -> float:
    return float(balanced_accuracy(proba >= 0.5, y, auto))


def choose_threshold(score: np.ndarray, y: np.ndarray, proba: np.ndarray, *,
                     max_referral: float | None = None,
                     target_accuracy: float | None = None) -> tuple[float, bool]:
    """(threshold, reached) on fixed out-of-fold ``score``/``proba``: refer where score < threshold.

    Candidate thresholds lie midway between consecutive distinct scores (never on a patient), so
    each refers the patients below it. ``max_referral``: the largest threshold that refers at
    most that fraction. ``target_accuracy``: the smallest threshold whose auto-calls reach that
    balanced accuracy, referring at most :data:`MAX_ALLOWED_REFERRAL`; ``reached`` is False when
    none does (then the threshold of the largest allowed rate).
    """
    if (max_referral is None) == (target_accuracy is None):
        raise LymphomilError("give exactly one of max_referral and target_accuracy",
                             fix="e.g. max_referral=0.2 or target_accuracy=0.97")
    score = np.asarray(score, dtype=float)
    n = len(score)
    distinct = np.unique(score)
    # the first candidate refers nobody: 0 for a margin (never negative), else below the least
    nobody = min(0.0, float(distinct[0]) - 1e-6)
    candidates = np.concatenate([[nobody], (distinct[:-1] + distinct[1:]) / 2])
    referred = np.searchsorted(np.sort(score), candidates, side="left")  # count below each
    cap = max_referral if max_referral is not None else MAX_ALLOWED_REFERRAL
    allowed = referred <= math.floor(cap * n + 1e-9)
    best = int(np.flatnonzero(allowed).max())
    if max_referral is not None:
        return float(candidates[best]), True
    for j in np.flatnonzero(allowed):
        if _auto_accuracy(y, proba, score >= candidates[j]) >= target_accuracy - 1e-12:
            return float(candidates[j]), True
    return float(candidates[best]), False


# --------------------------------------------------------------------------- the rule


@dataclass(frozen=True)
class Decision:
    """One patient's decision and the reasons for a referral (empty for an auto-call)."""

    decision: str
    reasons: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


class ReferralRule(BaseModel):
    """The fitted rule: a signal, its threshold, the target it was fitted to and what the inner
    CV measured (the JSON saved in a model folder)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: Literal[1] = 1
    signal: Literal["margin", "agreement"]
    threshold: float = Field(ge=-1, le=1, allow_inf_nan=False)
    max_referral: float | None = Field(None, gt=0, lt=1)
    target_accuracy: float | None = Field(None, gt=0.5, le=1)
    reached: bool
    inner_folds: int = Field(ge=2)
    n_patients: int = Field(ge=2)
    #: fraction of the inner out-of-fold patients the threshold refers
    inner_referred: float = Field(ge=0, le=1)
    #: balanced accuracy of the inner out-of-fold auto-calls (None: a class absent)
    inner_auto_balanced_accuracy: float | None = None
    #: balanced accuracy of every inner out-of-fold call (the forced call)
    inner_balanced_accuracy: float | None = None
    #: the experts the ``agreement`` signal reads (names of ``part_probas``), in order
    parts: list[str] = Field(default_factory=list)

    @property
    def band(self) -> tuple[float, float]:
        """The P(malignant) interval whose patients the margin alone refers."""
        t = max(0.0, min(0.5, self.threshold))
        return 0.5 - t, 0.5 + t

    def target_text(self) -> str:
        if self.max_referral is not None:
            return f"refer at most {self.max_referral:.0%} of the patients"
        text = f"auto-call balanced accuracy ≥ {self.target_accuracy:.3f}"
        if not self.reached:
            text += (f" (not reached in the inner CV with up to {MAX_ALLOWED_REFERRAL:.0%} "
                     "referred: the rule refers that maximum)")
        return text

    def describe(self) -> str:
        low, high = self.band
        what = ("|P − 0.5|" if self.signal == "margin" else
                "the smallest margin of the call and of its experts (" + ", ".join(self.parts)
                + ")")
        auto = self.inner_auto_balanced_accuracy
        return (f"refers patients whose {what} is below {self.threshold:.3f} (P band "
                f"{low:.2f}–{high:.2f}); target: {self.target_text()}; fitted by "
                f"{self.inner_folds}-fold inner CV on {self.n_patients} training patients: "
                f"{self.inner_referred:.0%} referred, auto-call balanced accuracy "
                + ("n/a" if auto is None else f"{auto:.3f}"))

    def decide(self, proba: Sequence[float], parts: dict[str, Sequence[float]] | None = None,
               extra_reasons: Sequence[Sequence[str]] | None = None) -> list[Decision]:
        """One :class:`Decision` per patient. ``parts``: the model's ``part_probas`` (read by
        the ``agreement`` signal); ``extra_reasons``: per patient, reasons found elsewhere (e.g.
        out-of-distribution checks): a patient with any is referred with them."""
        proba = np.asarray(proba, dtype=float)
        used = self._parts(parts)
        score = firmness(proba, used, self.signal)
        low, high = self.band
        out = []
        for i, p in enumerate(proba):
            reasons = []
            if abs(p - 0.5) < self.threshold:
                reasons.append(f"P(malignant) {p:.2f} is within the uncertain band "
                               f"{low:.2f}–{high:.2f} fitted on the training patients")
            if used and score[i] < self.threshold:
                reasons += self._part_reasons(p, {k: float(v[i]) for k, v in used.items()})
            if extra_reasons is not None:
                reasons += [str(r) for r in extra_reasons[i]]
            call = "malignant" if p >= 0.5 else "reactive"
            out.append(Decision("refer", tuple(reasons)) if reasons else Decision(call))
        return out

    def _parts(self, parts: dict[str, Sequence[float]] | None) -> dict[str, np.ndarray] | None:
        if self.signal != "agreement":
            return None
        missing = [name for name in self.parts if not parts or name not in parts]
        if missing:
            raise LymphomilError(f"the referral rule reads the model's {', '.join(missing)} "
                                 "probabilities, which it does not give",
                                 fix="use the rule with the model it was fitted with")
        return {name: np.asarray(parts[name], dtype=float) for name in self.parts}

    def _part_reasons(self, p: float, sides: dict[str, float]) -> list[str]:
        names = list(sides)
        calls = {name: v >= 0.5 for name, v in sides.items()}
        if len(set(calls.values())) > 1:
            return [f"the {' and '.join(names)} sides disagree ("
                    + " vs ".join(f"{sides[n]:.2f}" for n in names) + ")"]
        reasons = []
        for name, v in sides.items():
            if calls[name] != (p >= 0.5):
                reasons.append(f"the {name} side ({v:.2f}) contradicts the call ({p:.2f})")
            elif abs(v - 0.5) < self.threshold:
                reasons.append(f"the {name} side's P(malignant) {v:.2f} is itself uncertain")
        return reasons


def decisions_table(decisions: Sequence[Decision]) -> dict[str, Any]:
    """Counts of each decision (for metrics.json and the console)."""
    n = len(decisions)
    counts = {d: sum(x.decision == d for x in decisions) for d in DECISIONS}
    return {"n": n, **counts, "referred_fraction": counts["refer"] / n if n else 0.0}


def referral_card(rule: ReferralRule, nested: dict | None = None) -> dict[str, Any]:
    """The rule as the model card and metrics.json state it: what it does, the target, the
    inner-CV figure (its threshold was chosen on those same inner out-of-fold probabilities)
    and, when measured, the nested figure (thresholds from each outer training part only)."""
    return {
        "rule": rule.describe(), "signal": rule.signal, "threshold": rule.threshold,
        "band": list(rule.band), "target": rule.target_text(), "target_reached": rule.reached,
        "inner_cv": {"folds": rule.inner_folds, "n_patients": rule.n_patients,
                     "referred_fraction": rule.inner_referred,
                     "auto_call_balanced_accuracy": rule.inner_auto_balanced_accuracy,
                     "forced_call_balanced_accuracy": rule.inner_balanced_accuracy,
                     "note": "the threshold was chosen on these inner out-of-fold probabilities; "
                             "the honest figure of the rule is the nested one of `lymphomil cv` "
                             "(thresholds from each outer training part only)"},
        "nested_cv": nested,
    }


# --------------------------------------------------------------------------- fitting


def check_target(max_referral: float | None, target_accuracy: float | None,
                 names: tuple[str, str] = ("--max-referral", "--target-accuracy")
                 ) -> tuple[float | None, float | None]:
    """The target (``max_referral`` by default), checked; a clear error names the option."""
    if max_referral is not None and target_accuracy is not None:
        raise LymphomilError(f"{names[0]} and {names[1]} exclude each other",
                             fix="give one target for the referral rule")
    if max_referral is None and target_accuracy is None:
        return DEFAULT_MAX_REFERRAL, None
    if max_referral is not None and not 0 < max_referral < 1:
        raise LymphomilError(f"{names[0]} {max_referral} is not a fraction in (0, 1)",
                             fix=f"e.g. {names[0]} {DEFAULT_MAX_REFERRAL}")
    if target_accuracy is not None and not 0.5 < target_accuracy <= 1:
        raise LymphomilError(f"{names[1]} {target_accuracy} is not a balanced accuracy in "
                             "(0.5, 1]", fix=f"e.g. {names[1]} 0.97")
    return max_referral, target_accuracy


#: what predictions say when no rule could be fitted (too few patients of a class)
TOO_FEW = ("no referral rule: its inner CV needs at least 2 labelled patients of each class; "
           "every call is a forced call")


def can_fit(y: np.ndarray) -> bool:
    """Enough patients of each class for the rule's inner CV (2 folds at least)."""
    return int(np.bincount(np.asarray(y, dtype=int), minlength=2).min()) >= 2


def _part_probas(model: Any, patients: np.ndarray) -> dict[str, np.ndarray]:
    if not hasattr(model, "part_probas"):
        return {}
    return {k: np.asarray(v, dtype=float) for k, v in model.part_probas(patients).items()}


def inner_oof(model: Any, patients: Sequence, y: np.ndarray, *, folds: int = INNER_FOLDS,
              seed: int = 0, name: str = "model"
              ) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """Out-of-fold P(malignant) (and each expert's) of every patient of a stratified K-fold CV
    of ``model`` on ``patients`` (clones seeded from (seed, name, fold)); and the folds used."""
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    patients = np.asarray(patients, dtype=object)
    y = np.asarray(y, dtype=int)
    folds = min(folds, int(np.bincount(y, minlength=2).min()))
    if folds < 2:
        raise LymphomilError("too few patients of one class to fit the referral rule (its "
                             "inner CV needs 2 of each)", fix="add labelled patients")
    splitter = StratifiedKFold(folds, shuffle=True,
                               random_state=derive_seed(seed, name, "referral-split"))
    proba = np.full(len(y), np.nan)
    parts: dict[str, np.ndarray] = {}
    for k, (train, test) in enumerate(splitter.split(np.zeros(len(y)), y)):
        fitted = with_seed(clone(model), derive_seed(seed, name, "referral", k))
        fitted.fit(patients[train], y[train])
        proba[test] = np.asarray(fitted.predict_proba(patients[test]))[:, 1]
        for key, value in _part_probas(fitted, patients[test]).items():
            parts.setdefault(key, np.full(len(y), np.nan))[test] = value
    return proba, parts, folds


def cached_inner_oof(root: Path, model: Any, patients: Sequence, y: np.ndarray, *,
                     folds: int = INNER_FOLDS, seed: int = 0, name: str = "model"
                     ) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """:func:`inner_oof`, read back from the CV-result cache under ``root`` when the model, the
    patients and the seed are unchanged (a warm run refits nothing)."""
    from lymphomil import cvcache

    key = cvcache.cv_key(model, f"{name}#referral-inner", patients, folds=folds, repeats=0,
                         seed=seed)
    ids = [p.id for p in patients]
    cached = cvcache.load_cached(root, key)
    if cached is not None and list(cached.patient_ids) == ids \
            and set(cached.params) == {"parts", "folds"} \
            and cached.proba.shape == (1 + len(cached.params["parts"]), len(ids)):
        rows = np.asarray(cached.proba, dtype=float)
        return (rows[0], dict(zip(cached.params["parts"], rows[1:])),
                int(cached.params["folds"]))
    proba, parts, used = inner_oof(model, patients, y, folds=folds, seed=seed, name=name)
    rows = np.stack([proba, *parts.values()])
    cvcache.store(root, key, CVResult(f"{name}#referral-inner", ids, np.asarray(y, dtype=int),
                                      np.zeros(rows.shape, dtype=int), rows,
                                      np.zeros(rows.shape, dtype=bool), np.zeros((1, 1)),
                                      {"parts": list(parts), "folds": used}, seed))
    return proba, parts, used


def rule_from_oof(proba: np.ndarray, y: np.ndarray, parts: dict[str, np.ndarray] | None = None,
                  *, signal: str = DEFAULT_SIGNAL, max_referral: float | None = None,
                  target_accuracy: float | None = None, folds: int = INNER_FOLDS
                  ) -> ReferralRule:
    """The rule whose threshold meets the target on these out-of-fold probabilities."""
    max_referral, target_accuracy = check_target(max_referral, target_accuracy,
                                                 ("max_referral", "target_accuracy"))
    y = np.asarray(y, dtype=int)
    proba = np.asarray(proba, dtype=float)
    used = parts if signal == "agreement" and parts else None
    score = firmness(proba, used, signal)
    threshold, reached = choose_threshold(score, y, proba, max_referral=max_referral,
                                          target_accuracy=target_accuracy)
    auto = score >= threshold
    auto_ba = _auto_accuracy(y, proba, auto)
    full_ba = _auto_accuracy(y, proba, np.ones(len(y), dtype=bool))
    return ReferralRule(
        signal="agreement" if used else "margin", threshold=threshold,
        max_referral=max_referral, target_accuracy=target_accuracy, reached=reached,
        inner_folds=folds, n_patients=len(y), inner_referred=float(1 - auto.mean()),
        inner_auto_balanced_accuracy=auto_ba if np.isfinite(auto_ba) else None,
        inner_balanced_accuracy=full_ba if np.isfinite(full_ba) else None,
        parts=sorted(used) if used else [])


def fit_referral(model: Any, patients: Sequence, y: np.ndarray, *,
                 max_referral: float | None = None, target_accuracy: float | None = None,
                 signal: str = DEFAULT_SIGNAL, folds: int = INNER_FOLDS, seed: int = 0,
                 name: str = "model", cache: Path | None = None) -> ReferralRule:
    """Fit the referral rule of ``model`` (unfitted or fitted: only its clones are fitted) by an
    inner CV on ``patients`` (the training patients, with features attached); ``cache``: a
    CV-result cache folder that keeps the inner out-of-fold probabilities for a warm run."""
    if signal not in SIGNALS:
        raise LymphomilError(f"unknown referral signal {signal!r}",
                             fix=f"use one of {', '.join(SIGNALS)}")
    if cache is not None:
        proba, parts, used_folds = cached_inner_oof(cache, model, patients, y, folds=folds,
                                                    seed=seed, name=name)
    else:
        proba, parts, used_folds = inner_oof(model, patients, y, folds=folds, seed=seed,
                                             name=name)
    return rule_from_oof(proba, y, parts, signal=signal, max_referral=max_referral,
                         target_accuracy=target_accuracy, folds=used_folds)


def model_decisions(rule: ReferralRule, model: Any, patients: Sequence,
                    proba: np.ndarray | None = None,
                    extra_reasons: Sequence[Sequence[str]] | None = None) -> list[Decision]:
    """The rule applied to a fitted ``model``'s calls of ``patients`` (features attached)."""
    patients = np.asarray(patients, dtype=object)
    if proba is None:
        proba = np.asarray(model.predict_proba(patients))[:, 1]
    parts = _part_probas(model, patients) if rule.signal == "agreement" else None
    return rule.decide(proba, parts, extra_reasons)


# --------------------------------------------------------------------------- save / load


def save_rule(folder: str | Path, rule: ReferralRule) -> Path:
    from lymphomil.outputs import atomic_write_json

    return atomic_write_json(Path(folder) / REFERRAL_JSON, rule.model_dump(mode="json"))


def load_rule(folder: str | Path) -> ReferralRule | None:
    """The rule saved in a model folder (None when the folder has none: trained before rules);
    a damaged or edited file is a clear error."""
    from lymphomil.outputs import read_json

    path = Path(folder) / REFERRAL_JSON
    if not path.is_file():
        return None
    data = read_json(path)
    try:
        return ReferralRule.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'the file'}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise LymphomilError(f"the file does not describe a valid referral rule ({problems})",
                             file=path, fix=FIX) from None


# --------------------------------------------------------------------------- nested CV


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
    inner: list[dict] = field(default_factory=list)  # per task: repeat, train, proba, parts
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
                                 target_accuracy=target_accuracy, folds=item["folds"])
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
    return {"proba": proba, "parts": _part_probas(fitted, test), "inner": inner}


def nested_referral(models: Sequence[tuple[str, Any]], patients: Sequence, y: np.ndarray, *,
                    folds: int = 5, repeats: int = 5, seed: int = 0,
                    inner_folds: int = INNER_FOLDS, engine: Any = None,
                    on_fit: Any = None) -> list[NestedReferral]:
    """For each model, the outer CV of :func:`lymphomil.crossval.cross_validate_many` (same
    plan, same seeds: the same out-of-fold probabilities) plus an inner CV per outer training
    part. About ``1 + inner_folds`` times the fits of the plain CV."""
    from lymphomil.engine import LocalEngine

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
