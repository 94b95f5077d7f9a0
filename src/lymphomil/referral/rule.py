"""The referral rule: a firmness score per patient (``margin`` or ``agreement``), the threshold
below which a patient is referred, the rule as a validated pydantic model saved as JSON beside the
model, and its decisions with the reasons a person reads."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lymphomil.evaluation.metrics import balanced_accuracy
from lymphomil.outputs import atomic_write_json, read_json
from lymphomil.runtime.errors import LymphomilError, format_problem

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


def auto_accuracy(y: np.ndarray, proba: np.ndarray, auto: np.ndarray) -> float:
    return float(balanced_accuracy(proba >= 0.5, y, auto))


def choose_threshold(score: np.ndarray, y: np.ndarray, proba: np.ndarray, *,
                     max_referral: float | None = None,
                     target_accuracy: float | None = None,
                     referred_anyway: np.ndarray | None = None) -> tuple[float, bool]:
    """(threshold, reached) on fixed out-of-fold ``score``/``proba``: refer where score < threshold.

    Candidate thresholds lie midway between consecutive distinct scores (never on a patient), so
    each refers the patients below it. ``max_referral``: the largest threshold that refers at
    most that fraction. ``target_accuracy``: the smallest threshold whose auto-calls reach that
    balanced accuracy, referring at most :data:`MAX_ALLOWED_REFERRAL`; ``reached`` is False when
    none does (then the threshold of the largest allowed rate). ``referred_anyway``: patients
    referred for other reasons (the OOD checks, held out): they count in the referred fraction
    and are never auto-called, so the threshold spends only what they leave of the budget.
    """
    if (max_referral is None) == (target_accuracy is None):
        raise LymphomilError("give exactly one of max_referral and target_accuracy",
                             fix="e.g. max_referral=0.2 or target_accuracy=0.97")
    score = np.asarray(score, dtype=float)
    n = len(score)
    anyway = (np.zeros(n, dtype=bool) if referred_anyway is None
              else np.asarray(referred_anyway, dtype=bool))
    distinct = np.unique(score)
    # the first candidate refers nobody: 0 for a margin (never negative), else below the least
    nobody = min(0.0, float(distinct[0]) - 1e-6)
    candidates = np.concatenate([[nobody], (distinct[:-1] + distinct[1:]) / 2])
    # count referred at each candidate: those below it, and those referred anyway above it
    below = np.searchsorted(np.sort(score), candidates, side="left")
    above_anyway = len(score[anyway]) - np.searchsorted(np.sort(score[anyway]), candidates,
                                                        side="left")
    referred = below + above_anyway
    cap = max_referral if max_referral is not None else MAX_ALLOWED_REFERRAL
    allowed = referred <= math.floor(cap * n + 1e-9)
    allowed[0] = True  # refer nobody for the score: the budget may be spent by the others
    best = int(np.flatnonzero(allowed).max())
    if max_referral is not None:
        return float(candidates[best]), True
    for j in np.flatnonzero(allowed):
        if auto_accuracy(y, proba, (score >= candidates[j]) & ~anyway) \
                >= target_accuracy - 1e-12:
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
    #: fraction of the inner out-of-fold patients the rule refers (for either reason)
    inner_referred: float = Field(ge=0, le=1)
    #: fraction of them referred for other reasons (the OOD checks, held out), out of the budget
    inner_referred_other: float = Field(0.0, ge=0, le=1)
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
                f"{self.inner_referred:.0%} referred"
                + (f" ({self.inner_referred_other:.0%} by the OOD checks, held out)"
                   if self.inner_referred_other else "")
                + ", auto-call balanced accuracy " + ("n/a" if auto is None else f"{auto:.3f}"))

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
                     "referred_by_ood_fraction": rule.inner_referred_other,
                     "auto_call_balanced_accuracy": rule.inner_auto_balanced_accuracy,
                     "forced_call_balanced_accuracy": rule.inner_balanced_accuracy,
                     "note": "the threshold was chosen on these inner out-of-fold probabilities; "
                             "the honest figure of the rule is the nested one of `lymphomil cv` "
                             "(thresholds from each outer training part only)"},
        "nested_cv": nested,
    }


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


def save_rule(folder: str | Path, rule: ReferralRule) -> Path:
    return atomic_write_json(Path(folder) / REFERRAL_JSON, rule.model_dump(mode="json"))


def load_rule(folder: str | Path) -> ReferralRule | None:
    """The rule saved in a model folder (None when the folder has none: trained before rules);
    a damaged or edited file is a clear error."""
    path = Path(folder) / REFERRAL_JSON
    if not path.is_file():
        return None
    data = read_json(path)
    supported = ReferralRule.model_fields["format"].default
    problem = (format_problem(data.get("format"), supported, "model folder")
               if isinstance(data, dict) else None)
    if problem:
        raise LymphomilError(f"the referral rule {problem[0]}", file=path, fix=problem[1])
    try:
        return ReferralRule.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'the file'}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise LymphomilError(f"the file does not describe a valid referral rule ({problems})",
                             file=path, fix=FIX) from None
