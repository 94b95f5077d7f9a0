"""Fitting the referral rule on the training patients only: an inner stratified K-fold CV gives
each an out-of-fold probability (kept in the CV-result cache for a warm run), and the threshold
is chosen on those to the user's target."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lymphomil.evaluation.crossval import derive_seed, inner_folds, out_of_fold, with_seed
from lymphomil.models.checks import cv_minimum
from lymphomil.referral.rule import (
    DEFAULT_SIGNAL,
    INNER_FOLDS,
    SIGNALS,
    Decision,
    ReferralRule,
    auto_accuracy,
    check_target,
    choose_threshold,
    firmness,
)
from lymphomil.runtime.errors import LymphomilError

#: what a model folder without a rule says (too few patients of a class when it was trained;
#: :func:`no_rule_note` gives the numbers where the patients and the model are known)
TOO_FEW = ("no referral rule: too few labelled patients of a class for its inner CV when the "
           "model was trained; every call is a forced call")


def rule_minimum(model: Any = None) -> int:
    """The fewest patients of each class the rule's inner CV needs: 2 folds at least, each
    training part holding what ``model`` needs to be fitted (``minimum_per_class``)."""
    need = 1 if model is None else model.minimum_per_class()
    return cv_minimum(need, INNER_FOLDS)


def can_fit(y: np.ndarray, model: Any = None) -> bool:
    """Enough patients of each class for the rule's inner CV of ``model``."""
    return int(np.bincount(np.asarray(y, dtype=int), minlength=2).min()) >= rule_minimum(model)


def no_rule_note(y: np.ndarray, model: Any = None) -> str:
    """Why a model was trained without a referral rule, in the words `train` and `run` print."""
    counts = np.bincount(np.asarray(y, dtype=int), minlength=2)
    return (f"no referral rule: its {INNER_FOLDS}-fold inner CV of this model needs at least "
            f"{rule_minimum(model)} labelled patients of each class, and the data holds "
            f"{counts[0]} reactive and {counts[1]} malignant; every call is a forced call")


def part_probas_of(model: Any, patients: np.ndarray) -> dict[str, np.ndarray]:
    if not hasattr(model, "part_probas"):
        return {}
    return {k: np.asarray(v, dtype=float) for k, v in model.part_probas(patients).items()}


def inner_oof(model: Any, patients: Sequence, y: np.ndarray, *, folds: int = INNER_FOLDS,
              seed: int = 0, name: str = "model"
              ) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """Out-of-fold P(malignant) (and each expert's) of every patient of a stratified K-fold CV
    of ``model`` on ``patients`` (clones seeded from (seed, name, fold)); and the folds used."""
    from sklearn.base import clone

    patients = np.asarray(patients, dtype=object)
    y = np.asarray(y, dtype=int)
    folds = inner_folds(y, folds)
    if folds < 2:
        raise LymphomilError("too few patients of one class to fit the referral rule (its "
                             "inner CV needs 2 of each)", fix="add labelled patients")
    names: list[str] = []  # the experts' names, as the first fold's model gives them

    def fit_predict(train: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
        fitted = with_seed(clone(model), derive_seed(seed, name, "referral", k))
        fitted.fit(patients[train], y[train])
        parts = part_probas_of(fitted, patients[test])
        names[:] = list(parts)
        proba = np.asarray(fitted.predict_proba(patients[test]))[:, 1]
        return np.column_stack([proba, *parts.values()])

    oof = out_of_fold(y, folds, derive_seed(seed, name, "referral-split"), fit_predict)
    return oof[:, 0], {key: oof[:, 1 + i] for i, key in enumerate(names)}, folds


def cached_inner_oof(root: Path, model: Any, patients: Sequence, y: np.ndarray, *,
                     folds: int = INNER_FOLDS, seed: int = 0, name: str = "model"
                     ) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """:func:`inner_oof`, read back from the CV-result cache under ``root`` when the model, the
    patients and the seed are unchanged (a warm run refits nothing)."""
    # deferred for start-up: cvcache imports models.base (scikit-learn); importing the
    # referral package (its rule, read by predict and the report) stays light
    from lymphomil.evaluation import cvcache

    key = cvcache.cv_key(model, f"{name}#referral-inner", patients, folds=folds, repeats=0,
                         seed=seed)
    def compute() -> tuple[np.ndarray, dict]:
        proba, parts, used = inner_oof(model, patients, y, folds=folds, seed=seed, name=name)
        return np.stack([proba, *parts.values()]), {"parts": list(parts), "folds": used}

    rows, params = cvcache.cached_rows(
        root, key, f"{name}#referral-inner", [p.id for p in patients], compute,
        lambda rows, params: set(params) == {"parts", "folds"}
        and len(rows) == 1 + len(params["parts"]), seed=seed)
    return rows[0], dict(zip(params["parts"], rows[1:])), int(params["folds"])


def rule_from_oof(proba: np.ndarray, y: np.ndarray, parts: dict[str, np.ndarray] | None = None,
                  *, signal: str = DEFAULT_SIGNAL, max_referral: float | None = None,
                  target_accuracy: float | None = None, folds: int = INNER_FOLDS,
                  referred_anyway: np.ndarray | None = None) -> ReferralRule:
    """The rule whose threshold meets the target on these out-of-fold probabilities;
    ``referred_anyway``: patients referred for other reasons (see :func:`choose_threshold`)."""
    max_referral, target_accuracy = check_target(max_referral, target_accuracy,
                                                 ("max_referral", "target_accuracy"))
    y = np.asarray(y, dtype=int)
    proba = np.asarray(proba, dtype=float)
    used = parts if signal == "agreement" and parts else None
    score = firmness(proba, used, signal)
    anyway = (np.zeros(len(y), dtype=bool) if referred_anyway is None
              else np.asarray(referred_anyway, dtype=bool))
    threshold, reached = choose_threshold(score, y, proba, max_referral=max_referral,
                                          target_accuracy=target_accuracy,
                                          referred_anyway=anyway)
    auto = (score >= threshold) & ~anyway
    auto_ba = auto_accuracy(y, proba, auto)
    full_ba = auto_accuracy(y, proba, np.ones(len(y), dtype=bool))
    return ReferralRule(
        signal="agreement" if used else "margin", threshold=threshold,
        max_referral=max_referral, target_accuracy=target_accuracy, reached=reached,
        inner_folds=folds, n_patients=len(y), inner_referred=float(1 - auto.mean()),
        inner_referred_other=float(anyway.mean()),
        inner_auto_balanced_accuracy=auto_ba if np.isfinite(auto_ba) else None,
        inner_balanced_accuracy=full_ba if np.isfinite(full_ba) else None,
        parts=sorted(used) if used else [])


def fit_referral(model: Any, patients: Sequence, y: np.ndarray, *,
                 max_referral: float | None = None, target_accuracy: float | None = None,
                 signal: str = DEFAULT_SIGNAL, folds: int = INNER_FOLDS, seed: int = 0,
                 name: str = "model", cache: Path | None = None,
                 referred_anyway: np.ndarray | None = None) -> ReferralRule:
    """Fit the referral rule of ``model`` (unfitted or fitted: only its clones are fitted) by an
    inner CV on ``patients`` (the training patients, with features attached); ``cache``: a
    CV-result cache folder that keeps the inner out-of-fold probabilities for a warm run;
    ``referred_anyway``: the training patients the OOD checks flag when held out
    (``OODCheck.held_out_flagged_``), whose referrals come out of the budget."""
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
                         target_accuracy=target_accuracy, folds=used_folds,
                         referred_anyway=referred_anyway)


def model_decisions(rule: ReferralRule, model: Any, patients: Sequence,
                    proba: np.ndarray | None = None,
                    extra_reasons: Sequence[Sequence[str]] | None = None) -> list[Decision]:
    """The rule applied to a fitted ``model``'s calls of ``patients`` (features attached)."""
    patients = np.asarray(patients, dtype=object)
    if proba is None:
        proba = np.asarray(model.predict_proba(patients))[:, 1]
    parts = part_probas_of(model, patients) if rule.signal == "agreement" else None
    return rule.decide(proba, parts, extra_reasons)

