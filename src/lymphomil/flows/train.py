"""The training flow: what ``lymphomil train``, :func:`lymphomil.train` and the training stage of
``lymphomil run`` do.

Read top to bottom: the options checked, the labelled patients, the referral rule fitted by
inner CV (its budget net of the training patients the OOD checks flag when held out), the model
fitted on every labelled patient, the OOD checks fitted on the same patients, and the model
folder saved with both (and, for ``train``, its model card). :func:`fit_referral` is the rule
and the checks without the model folder: what :func:`lymphomil.fit_referral` returns.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Callable

from lymphomil.data.cohort import LabelledSet
from lymphomil.evaluation.crossval import derive_seed, with_seed
from lymphomil.flows import options
from lymphomil.flows.caches import cached_fit, cv_results, with_features
from lymphomil.flows.patients import check_can_fit, configure_model, load_labelled
from lymphomil.models.base import PatientModel, describe_model
from lymphomil.ood import OOD_JSON, OODCheck, fit_ood_checks, held_out_flags, load_ood_checks
from lymphomil.outputs import read_json
from lymphomil.referral import (
    TOO_FEW,
    ReferralRule,
    can_fit,
    check_target,
    no_rule_note,
    referral_card,
    save_rule,
)
from lymphomil.referral import fit_referral as fit_rule_by_inner_cv
from lymphomil.report.model_card import build_model_card, write_model_card
from lymphomil.runtime.environment import set_threads


@dataclass(frozen=True)
class Referral:
    """Which calls to trust: the referral rule (None: too few patients of a class to fit one,
    every call is then forced) and the OOD checks whose referrals share its budget (None: the
    model reads no pooled image features). Saved beside a model as referral.json and ood.json;
    :func:`lymphomil.flows.predict.decide` applies both."""

    rule: ReferralRule | None
    checks: OODCheck | None = None
    #: why there is no rule, for these patients and this model (None: there is one)
    note: str | None = None

    @property
    def threshold(self) -> float | None:
        return None if self.rule is None else self.rule.threshold

    def describe(self) -> str:
        """What the rule does, in words (without one: why, or ``TOO_FEW``)."""
        return self.rule.describe() if self.rule is not None else (self.note or TOO_FEW)


def _referral(rule: ReferralRule | None, checks: OODCheck | None, y: Any,
              model: PatientModel) -> Referral:
    return Referral(rule, checks, None if rule is not None else no_rule_note(y, model))


@dataclass
class Trained:
    model: PatientModel
    referral: Referral
    labelled: LabelledSet  # the patients it was trained on (their cohort, when read from one)


def train(name: str, labelled: LabelledSet | Path, out: Path, *, reference_date: date,
          on_error: str = "raise", features: str | None = None, seed: int = 0,
          cache_dir: Path | None = None, threads: int | None = None,
          max_referral: float | None = None, target_accuracy: float | None = None) -> Trained:
    """Fit the registered model ``name`` on every labelled patient (or on those of the folder
    ``labelled``, read at ``reference_date``) and save its folder in ``out`` with its referral
    rule, its OOD checks and its model card (what it is and what it was trained on). Every
    option is checked before any work. (``run`` strings the same parts together with its CV:
    :func:`fit_rule`, then :func:`train_cached`.)"""
    options.check_model_names([name])
    max_referral, target_accuracy = check_target(max_referral, target_accuracy)
    features = options.features_option(features)
    if threads is not None:
        set_threads(options.check_threads(threads))
    extra = None
    if isinstance(labelled, Path):
        labelled = load_labelled(labelled, reference_date=reference_date, on_error=on_error,
                                 cache_dir=cache_dir)
        extra = {"skipped": labelled.cohort.skipped_table()}
    model = configure_model(name, features)
    check_can_fit(model, name, labelled.y)  # too few patients: the minimum, before any work
    labelled = with_features(labelled, [model], cache_dir)
    rule = fit_rule(model, labelled, name=name, seed=seed, max_referral=max_referral,
                    target_accuracy=target_accuracy, cache_dir=cache_dir)

    def write_card(folder: Path, fitted: PatientModel) -> None:
        # no CV here: the card says what the model is and what it was trained on; written into
        # the staging folder, so the model appears whole or not at all
        write_model_card(folder, build_model_card(fitted, name, read_json(folder / "metadata.json"),
                                                  description=describe_model(name),
                                                  referral=rule and referral_card(rule)))

    return train_model(model, labelled, out, name=name, reference_date=reference_date,
                       cache_dir=cache_dir, seed=seed, extra=extra, rule=rule, finish=write_card)


def fit_rule(model: PatientModel, labelled: LabelledSet, *, name: str, seed: int = 0,
             max_referral: float | None = None, target_accuracy: float | None = None,
             cache_dir: Path | None = None) -> ReferralRule | None:
    """The referral rule of ``model`` (unfitted: only clones are fitted) by inner CV on the
    labelled patients (their features attached: :func:`with_features`), to the target (its
    inner out-of-fold probabilities kept in the CV cache for a rerun), its budget net of the
    training patients the OOD checks flag when held out; None when a class has too few patients
    for its inner CV of this model (:func:`lymphomil.referral.can_fit`: the calls are then
    forced, and :func:`lymphomil.referral.no_rule_note` says why)."""
    if not can_fit(labelled.y, model):
        return None
    patients = labelled.patients
    anyway = held_out_flags(model, patients, cache_dir, name=name)
    return fit_rule_by_inner_cv(model, patients, labelled.y, max_referral=max_referral,
                                target_accuracy=target_accuracy, seed=seed, name=name,
                                cache=cv_results(cache_dir), referred_anyway=anyway)


def fit_referral(model: PatientModel, labelled: LabelledSet, *, name: str, seed: int = 0,
                 max_referral: float | None = None, target_accuracy: float | None = None,
                 cache_dir: Path | None = None) -> Referral:
    """The rule (:func:`fit_rule`) and the OOD checks fitted on the same patients (their
    features attached), as :func:`train` saves them beside a model."""
    rule = fit_rule(model, labelled, name=name, seed=seed, max_referral=max_referral,
                    target_accuracy=target_accuracy, cache_dir=cache_dir)
    return _referral(rule, fit_ood_checks(model, labelled.patients, cache_dir), labelled.y, model)


def train_model(model: PatientModel, labelled: LabelledSet, out: Path, *, name: str,
                reference_date: date, cache_dir: Path | None = None, seed: int = 0,
                extra: dict | None = None, rule: ReferralRule | None = None,
                finish: Callable[[Path, PatientModel], None] | None = None) -> Trained:
    """Fit on every labelled patient (their features attached: :func:`with_features`) and save
    a self-describing model folder, with the referral rule ``rule`` and the out-of-distribution
    checks fitted on the same patients (for a model that reads pooled image features) beside
    the model; ``finish(folder, model)`` adds files before it is renamed into place."""
    patients = labelled.patients
    with_seed(model, derive_seed(seed, name, "final"))
    model.fit(patients, labelled.y)
    checks = fit_ood_checks(model, patients, cache_dir)
    training = {"n_patients": int(len(labelled.y)), "n_malignant": int(labelled.y.sum()),
                "n_reactive": int((labelled.y == 0).sum()),
                "patient_ids": [p.id for p in labelled.patients]}

    def add_files(folder: Path) -> None:
        if rule is not None:
            save_rule(folder, rule)
        if checks is not None:
            checks.save(folder / OOD_JSON)
        if finish is not None:
            finish(folder, model)

    model.save(out, name=name, reference_date=reference_date, seed=seed, training=training,
               extra=extra, finish=add_files)
    return Trained(model, _referral(rule, checks, labelled.y, model), labelled)


def train_cached(model: PatientModel, labelled: LabelledSet, out: Path, *, name: str,
                 reference_date: date, cache_dir: Path | None = None, seed: int = 0,
                 extra: dict | None = None, rule: ReferralRule | None = None) -> Trained:
    """:func:`train_model` into ``out``, or the folder an earlier run trained from the same
    inputs (the referral rule among them), copied as it was written (metadata, referral rule
    and OOD checks included)."""
    out = Path(out)
    key_extra: dict[str, Any] = {
        "name": name, "reference_date": str(reference_date), "seed": seed,
        "metadata": extra or {}, "referral": None if rule is None else rule.model_dump(mode="json")}
    trained: list[Trained] = []

    def fit() -> PatientModel:
        trained.append(train_model(model, labelled, out, name=name, reference_date=reference_date,
                                   cache_dir=cache_dir, seed=seed, extra=extra, rule=rule))
        return trained[0].model

    fitted, cached = cached_fit(model, labelled.patients, labelled.y, tag="train",
                                cache_dir=cache_dir, extra=key_extra, fit=fit,
                                save=lambda _, folder: shutil.copytree(out, folder))
    if cached is None:
        return trained[0]
    shutil.copytree(cached, out)
    return Trained(fitted, _referral(rule, load_ood_checks(out, cache_dir), labelled.y, fitted),
                   labelled)
