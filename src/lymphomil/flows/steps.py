"""The steps every command is made of: load patients, get features, cross-validate, train, predict.

The CLI commands and ``lymphomil run`` call these; each writes its outputs atomically.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from lymphomil.data.cohort import Cohort, Patient, as_patient_array, labels_of, load_cohort
from lymphomil.evaluation import cvcache
from lymphomil.evaluation.crossval import (
    CVResult,
    cross_validate_many,
    derive_seed,
    format_metric,
    with_seed,
)
from lymphomil.evaluation.metrics import balanced_accuracy, roc_auc
from lymphomil.features import attach_store
from lymphomil.features.cache import feature_root, shared_cache
from lymphomil.flows.options import check_folds_against
from lymphomil.models.base import PatientModel, create_model, load_model
from lymphomil.models.schema import FIX
from lymphomil.ood import OOD_JSON, OODCheck, fit_ood_checks, held_out_flags, load_ood_checks
from lymphomil.outputs import atomic_write_json, atomic_write_text, cv_cache
from lymphomil.referral import can_fit, fit_referral, load_rule, model_decisions, save_rule
from lymphomil.referral.coverage import trust_markdown
from lymphomil.runtime.engine import Engine
from lymphomil.runtime.engines import get_engine  # noqa: F401 (re-exported)
from lymphomil.runtime.errors import LymphomilError


def configure_model(name: str, features: str | None = None, **overrides: object) -> PatientModel:
    """A registered model, with every image part's features overridden when asked."""
    model = create_model(name, **overrides)
    if features:
        _override_features(model, features)
    return model


def _override_features(model: PatientModel, features: str) -> None:
    params = model.get_params(deep=False)
    if "features" in params:
        model.set_params(features=features)
    for value in params.values():
        for part in (value if isinstance(value, (tuple, list)) else (value,)):
            if isinstance(part, PatientModel):  # a nested model, or one of an ensemble's members
                _override_features(part, features)


def feature_store(cache_dir: Path | None = None):
    """One FeatureCache per cache folder in a process, so the stages of a run (features, CV,
    train, predict) share its in-memory arrays instead of re-reading every file."""
    return shared_cache(feature_root(cache_dir))


def attach_features(patients: Sequence[Patient], models: Iterable[PatientModel],
                    cache_dir: Path | None = None, engine: Engine | None = None
                    ) -> np.ndarray:
    """Patients with the feature cache attached, everything the models need already computed."""
    needed = []
    for model in models:
        for item in model.required_features():
            if item not in needed:
                needed.append(item)
    if not needed:
        return as_patient_array(patients)
    store = feature_store(cache_dir)
    by_spec: dict = {}
    for spec, kind in needed:
        by_spec.setdefault(spec, []).append(kind)
    for spec, kinds in by_spec.items():
        store.ensure(patients, spec, kinds=tuple(kinds), engine=engine)
    return attach_store(patients, store)


@dataclass
class LabelledSet:
    cohort: Cohort | None  # None: patients given without their folder (the Python API)
    patients: np.ndarray  # 1-D object array of labelled patients
    y: np.ndarray


def labelled_patients(cohort: Cohort) -> LabelledSet:
    labelled = cohort.labelled
    if not labelled:
        raise LymphomilError("no labelled patients (LABEL 0 or 1) in the data", file=cohort.root,
                             fix="cross-validation and training need labelled patients")
    y = labels_of(labelled)
    if len(np.unique(y)) < 2:
        raise LymphomilError("the labelled patients are all of one class", file=cohort.root,
                             fix="training needs reactive (0) and malignant (1) patients")
    return LabelledSet(cohort, as_patient_array(labelled), y)


def load_labelled(data: Path, *, reference_date: date, on_error: str = "raise",
                  cache_dir: Path | None = None, folds: int | None = None,
                  folds_option: str = "--folds") -> LabelledSet:
    """The labelled patients of the folder ``data`` (their cohort in ``.cohort``); with
    ``folds``, checked against the smallest class before any feature is computed."""
    cohort = load_cohort(data, reference_date=reference_date, on_error=on_error,
                         cache_dir=cache_dir)
    labelled = labelled_patients(cohort)
    if folds is not None:
        check_folds_against(folds, labelled.y, folds_option)
    return labelled


def run_cv(models: Sequence[str | tuple[str, PatientModel]], patients: np.ndarray,
           y: np.ndarray, *, folds: int, repeats: int, seed: int, features: str | None = None,
           cache_dir: Path | None = None, on_fit: Callable[..., None] | None = None,
           use_cv_cache: bool = False, store_fits: bool = True,
           engine: Engine | None = None) -> list[CVResult]:
    """Repeated CV of each model (a registered name, or a ``(name, model)`` pair): the one CV
    loop of ``cv``, ``run`` and :func:`lymphomil.cross_validate`. With ``use_cv_cache`` an
    unchanged model/data/plan is read back from the CV-result cache instead of refitted (see
    :mod:`lymphomil.evaluation.cvcache`); with ``store_fits`` each fit is kept as it ends, so a
    re-run after an interrupt does only the missing ones. ``engine`` runs the features and the fits
    (:mod:`lymphomil.runtime.engine`; default: here)."""
    pairs = [(m, configure_model(m, features)) if isinstance(m, str) else m for m in models]
    model_names = [name for name, _ in pairs]
    attached = attach_features(patients, [model for _, model in pairs], cache_dir, engine=engine)
    root = cv_cache(cache_dir)
    results: dict[str, CVResult] = {}
    keys: dict[str, str] = {}
    if use_cv_cache or store_fits:
        for name, model in pairs:
            keys[name] = cvcache.cv_key(model, name, attached, folds, repeats, seed)
    for name, model in pairs:
        cached = cvcache.load_cached(root, keys[name]) if use_cv_cache else None
        if cached is not None:
            if on_fit is not None:
                on_fit(folds * repeats, rate="cached")
            results[name] = cached
    todo = [(name, model) for name, model in pairs if name not in results]
    if todo:
        store = cvcache.FitStore(root, keys) if store_fits else None
        for result in cross_validate_many(todo, attached, y, folds=folds, repeats=repeats,
                                          seed=seed, on_fit=on_fit, engine=engine,
                                          fit_store=store):
            if use_cv_cache:
                cvcache.store(root, keys[result.model_name], result)
            results[result.model_name] = result
        if store is not None and store.reused:
            total = len(todo) * folds * repeats
            logging.getLogger("lymphomil").warning(
                "cross-validation: reused %d of %d fits stored by an earlier run; computed %d",
                store.reused, total, total - store.reused)
    return [results[name] for name in model_names]


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


def fit_rule(model: PatientModel, labelled: LabelledSet, *, name: str, seed: int = 0,
             max_referral: float | None = None, target_accuracy: float | None = None,
             cache_dir: Path | None = None, ood: bool = True) -> Any:
    """The referral rule of ``model`` (unfitted: only clones are fitted) by inner CV on the
    labelled patients, to the target (its inner out-of-fold probabilities kept in the CV cache
    for a rerun); None when a class has fewer than 2 patients (the calls are then forced).
    ``ood``: the model is saved with its OOD checks (whose referrals share the target)."""
    if not can_fit(labelled.y):
        return None
    patients = attach_features(labelled.patients, [model], cache_dir)
    # the OOD checks' referrals among held-out training patients come out of the budget
    anyway = held_out_flags(model, patients, cache_dir, name=name) if ood else None
    return fit_referral(model, patients, labelled.y, max_referral=max_referral,
                        target_accuracy=target_accuracy, seed=seed, name=name,
                        cache=cv_cache(cache_dir), referred_anyway=anyway)


def train_model(model: PatientModel, labelled: LabelledSet, out: Path, *, name: str,
                reference_date: date, cache_dir: Path | None = None, seed: int = 0,
                extra: dict | None = None, referral: Any = None, ood: bool = True,
                finish: Callable[[Path], None] | None = None) -> PatientModel:
    """Fit on every labelled patient and save a self-describing model folder: with the
    referral rule ``referral`` (lymphomil.referral) and, with ``ood``, the out-of-distribution
    checks fitted on the same patients (lymphomil.ood; for a model that reads pooled image
    features) beside the model; ``finish(folder)`` adds files before it is renamed into place."""
    patients = attach_features(labelled.patients, [model], cache_dir)
    with_seed(model, derive_seed(seed, name, "final"))
    model.fit(patients, labelled.y)
    checks = fit_ood_checks(model, patients, cache_dir) if ood else None
    training = {"n_patients": int(len(labelled.y)), "n_malignant": int(labelled.y.sum()),
                "n_reactive": int((labelled.y == 0).sum()),
                "patient_ids": [p.id for p in labelled.patients]}

    def add_files(folder: Path) -> None:
        if referral is not None:
            save_rule(folder, referral)
        if checks is not None:
            checks.save(folder / OOD_JSON)
        if finish is not None:
            finish(folder)

    model.save(out, name=name, reference_date=reference_date, seed=seed, training=training,
               extra=extra, finish=add_files)
    return model


@dataclass
class Predictions:
    ids: list[str]
    proba: np.ndarray
    labels: np.ndarray
    skipped: list[dict]
    patients: np.ndarray
    model: PatientModel
    not_predicted: list[str] = field(default_factory=list)  # labelled, left out by the rule
    metrics: dict | None = None  # against the labels some predicted patients carry
    #: the referral rule's decision per patient (lymphomil.referral.Decision); None: no rule
    decisions: list | None = None


#: which patients of a folder `predict` predicts (--patients); the rest are listed, never dropped
PATIENT_RULES = {
    "new": "every patient without a label (LABEL -1) and every patient whose images are under "
           "testset/; labelled training patients are listed, not predicted",
    "all": "every patient of the folder",
}


def select_targets(cohort: Cohort, rule: str = "new") -> tuple[list[Patient], list[Patient]]:
    """The patients ``rule`` predicts and the (labelled) ones it leaves out, in CSV order."""
    if rule not in PATIENT_RULES:
        raise LymphomilError(f"--patients {rule!r} is not one of {', '.join(PATIENT_RULES)}",
                             fix="use --patients new (the default) or --patients all")
    if rule == "all":
        return list(cohort.patients), []
    chosen = [p for p in cohort.patients if not p.is_labelled or p.split == "test"]
    kept = {id(p) for p in chosen}
    return chosen, [p for p in cohort.patients if id(p) not in kept]


def label_metrics(pred: "Predictions") -> dict | None:
    """Balanced accuracy, accuracy and ROC AUC over the predicted patients that carry a label."""
    y = np.array([p.label for p in pred.patients], dtype=int)
    mask = np.isin(y, (0, 1))
    if not mask.any():
        return None
    y, proba, calls = y[mask], pred.proba[mask], pred.labels[mask]
    auc = float(roc_auc(proba, y))  # nan where one class is absent
    bacc = float(balanced_accuracy(calls.astype(bool), y))
    return {"n_labelled": int(mask.sum()), "n_malignant": int(y.sum()),
            "balanced_accuracy": None if np.isnan(bacc) else bacc,
            "accuracy": float((calls == y).mean()), "roc_auc": None if np.isnan(auc) else auc,
            "ids": [p.id for p, m in zip(pred.patients, mask) if m]}


def predict_patients(model: PatientModel, targets: Sequence[Patient], cohort: Cohort,
                     cache_dir: Path | None = None) -> Predictions:
    """P(malignant) and the 0.5-threshold call for ``targets``; the cohort's skips ride along."""
    patients = attach_features(targets, [model], cache_dir)
    proba = model.predict_proba(patients)[:, 1] if len(patients) else np.zeros(0)
    return Predictions([p.id for p in targets], proba, (proba >= 0.5).astype(int),
                       [i.to_dict() for i in cohort.issues], patients, model)


def predict_folder(model_dir: Path, data: Path, *, on_error: str = "raise",
                   include_labelled: bool = False, cache_dir: Path | None = None,
                   patients: str = "new") -> Predictions:
    """Predict the patients of ``data`` that the rule ``patients`` names (:data:`PATIENT_RULES`;
    ``include_labelled`` = ``"all"``); the others are in ``not_predicted``, and the labels of
    predicted patients that carry one give ``metrics``."""
    model = load_model(model_dir)  # every file checked: models.base.load_model
    metadata = model.metadata_
    reference = date.fromisoformat(metadata["reference_date"])
    cohort = load_cohort(data, reference_date=reference, on_error=on_error, cache_dir=cache_dir)
    targets, left = select_targets(cohort, "all" if include_labelled else patients)
    if not targets:
        raise LymphomilError(f"no patients to predict (no LABEL -1 rows with images, nothing "
                             f"under testset/; {len(left)} labelled training patient(s))",
                             file=data, fix="add unlabelled patients (LABEL -1) or use "
                                            "--patients all")
    rule = load_rule(model_dir)
    checks = load_ood_checks(model_dir, cache_dir)
    try:
        pred = predict_patients(model, targets, cohort, cache_dir)
        pred.not_predicted = [p.id for p in left]
        pred.metrics = label_metrics(pred)
        pred.decisions = decide_patients(rule, checks, model, pred)
        return pred
    except (ValueError, IndexError, RuntimeError) as exc:  # stored arrays of the wrong shapes
        raise LymphomilError(f"the model's stored state does not fit its features "
                             f"({type(exc).__name__}: {exc})", file=Path(model_dir) / "model.json",
                             fix=FIX) from None


def decide_patients(rule: Any, checks: OODCheck | None, model: PatientModel,
                    pred: Predictions) -> list | None:
    """The referral rule's decision for each predicted patient (None without a rule): the
    margin of its P(malignant), and any out-of-distribution reason (``checks``) refers it too."""
    if rule is None:
        return None
    extra = None
    if checks is not None and len(pred.patients):
        extra = [r.reasons for r in checks.check(pred.patients)]
    return model_decisions(rule, model, pred.patients, pred.proba, extra)


#: REASON of predictions.csv when the model folder has no referral rule (trained before rules,
#: or on too few patients of a class to fit one)
NO_RULE = "no referral rule in the model folder: forced call"


def write_predictions(pred: Predictions, out: Path, kaggle: bool = False,
                      write: Callable[[Path, bytes, str], Path] | None = None) -> Path:
    """The CSV (ID,LABEL,PROBA,DECISION,REASON, or Kaggle's Id,Predicted: the forced call);
    ``write(path, bytes, kind)`` instead of a plain atomic write (``predict`` records the file
    as its own)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if kaggle:
        writer.writerow(["Id", "Predicted"])
        writer.writerows(zip(pred.ids, pred.labels.tolist()))
    else:
        writer.writerow(["ID", "LABEL", "PROBA", "DECISION", "REASON"])
        for k, (i, label, p) in enumerate(zip(pred.ids, pred.labels, pred.proba)):
            if pred.decisions is None:  # a model folder without a rule: the forced call
                decision, reason = ("malignant" if label else "reactive"), NO_RULE
            else:
                decision, reason = pred.decisions[k].decision, pred.decisions[k].reason
            writer.writerow([i, int(label), f"{p:.6f}", decision, reason])
    if write is not None:
        return write(out, buffer.getvalue().encode("utf-8"), "predictions")
    return atomic_write_text(out, buffer.getvalue())
