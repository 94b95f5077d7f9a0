"""The steps every command is made of: load patients, get features, cross-validate, train, predict.

The CLI commands and ``lymphomil run`` call these; each writes its outputs atomically.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from lymphomil.data.cohort import Cohort, Patient, as_patient_array, labels_of, load_cohort
from lymphomil.engine import ENGINES, RAY_INSTALL_FIX, Engine, LocalEngine
from lymphomil.errors import LymphomilError
from lymphomil.crossval import CVResult
from lymphomil.models.base import PatientModel, create_model, load_model
from lymphomil.outputs import atomic_write_json, atomic_write_text, read_json, staged_dir

METADATA_JSON = "metadata.json"


def get_engine(name: str | None, **options: Any) -> Engine:
    """The engine called ``name`` (``local`` or ``ray``); a clear error when Ray is missing."""
    name = (name or "local").lower()
    if name == "local":
        return LocalEngine()
    if name == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise LymphomilError("--engine ray needs Ray, which is not installed in this "
                                 "environment", fix=RAY_INSTALL_FIX) from None
        from lymphomil.ray_engine import RayEngine

        return RayEngine(**options)
    raise LymphomilError(f"unknown engine {name!r}", fix=f"use one of {', '.join(ENGINES)}")


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
    from lymphomil.features.cache import feature_root, shared_cache

    return shared_cache(feature_root(cache_dir))


def attach_features(patients: Sequence[Patient], models: Iterable[PatientModel],
                    cache_dir: Path | None = None, on_error: str = "raise",
                    engine: Engine | None = None) -> np.ndarray:
    """Patients with the feature cache attached, everything the models need already computed."""
    needed = []
    for model in models:
        for item in model.required_features():
            if item not in needed:
                needed.append(item)
    if not needed:
        return as_patient_array(patients)
    from lymphomil.features import attach_store

    store = feature_store(cache_dir)
    by_spec: dict = {}
    for spec, kind in needed:
        by_spec.setdefault(spec, []).append(kind)
    for spec, kinds in by_spec.items():
        store.ensure(patients, spec, kinds=tuple(kinds), engine=engine)
    return attach_store(patients, store)


@dataclass
class LabelledSet:
    cohort: Cohort
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


def run_cv(model_names: Sequence[str], patients: np.ndarray, y: np.ndarray, *, folds: int,
           repeats: int, seed: int, features: str | None = None, cache_dir: Path | None = None,
           on_fit: Callable[..., None] | None = None, use_cv_cache: bool = False,
           engine: Engine | None = None) -> list[CVResult]:
    """Repeated CV of each named model; with ``use_cv_cache`` an unchanged model/data/plan is
    read back from the CV-result cache instead of refitted (see :mod:`lymphomil.cvcache`).
    ``engine`` runs the features and the fits (:mod:`lymphomil.engine`; default: here)."""
    from lymphomil import cvcache
    from lymphomil.crossval import cross_validate_many
    from lymphomil.outputs import cache_root

    models = [configure_model(name, features) for name in model_names]
    attached = attach_features(patients, models, cache_dir, engine=engine)
    root = cache_root(cache_dir) / "cv"
    results: dict[str, CVResult] = {}
    keys: dict[str, str | None] = {}
    for name, model in zip(model_names, models):
        key = keys[name] = (cvcache.cv_key(model, name, attached, folds, repeats, seed)
                            if use_cv_cache else None)
        cached = cvcache.load_cached(root, key) if key else None
        if cached is not None:
            if on_fit is not None:
                on_fit(folds * repeats, rate="cached")
            results[name] = cached
    todo = [(name, model) for name, model in zip(model_names, models) if name not in results]
    if todo:
        for result in cross_validate_many(todo, attached, y, folds=folds, repeats=repeats,
                                          seed=seed, on_fit=on_fit, engine=engine):
            if keys[result.model_name]:
                cvcache.store(root, keys[result.model_name], result)
            results[result.model_name] = result
    return [results[name] for name in model_names]


def write_cv_outputs(results: Sequence[CVResult], out: Path, trust: dict | None = None) -> dict:
    """metrics.json (all models) + oof_<model>.csv + results.md in ``out``; ``trust``: each
    model's risk–coverage and nested referral figure (lymphomil.coverage.cv_trust), added."""
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
        from lymphomil.coverage import trust_markdown

        markdown += trust_markdown(trust)
    atomic_write_text(out / "results.md", markdown)
    atomic_write_json(out / "metrics.json", payload)
    return payload


def cv_markdown(results: Sequence[CVResult]) -> str:
    from lymphomil.crossval import format_metric

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


def train_model(model: PatientModel, labelled: LabelledSet, out: Path, *, name: str,
                reference_date: date, cache_dir: Path | None = None, seed: int = 0,
                extra: dict | None = None, referral: Any = None) -> PatientModel:
    """Fit on every labelled patient and save a self-describing model folder (with the
    referral rule ``referral`` beside the model when given: lymphomil.referral)."""
    from lymphomil.crossval import derive_seed, with_seed
    from lymphomil.models.base import library_versions

    patients = attach_features(labelled.patients, [model], cache_dir)
    with_seed(model, derive_seed(seed, name, "final"))
    model.fit(patients, labelled.y)
    metadata = {
        "model_name": name, "reference_date": reference_date.isoformat(), "seed": seed,
        "features": [{"spec": s.to_dict(), "kind": k} for s, k in model.required_features()],
        "training": {"n_patients": int(len(labelled.y)),
                     "n_malignant": int(labelled.y.sum()),
                     "n_reactive": int((labelled.y == 0).sum()),
                     "patient_ids": [p.id for p in labelled.patients]},
        "versions": library_versions(), **(extra or {}),
    }
    with staged_dir(out) as staging:
        model._save_into(staging)
        atomic_write_json(staging / METADATA_JSON, metadata)
        if referral is not None:
            from lymphomil.referral import save_rule

            save_rule(staging, referral)
    return model


def model_reference_date(model_dir: Path) -> date:
    meta_path = Path(model_dir) / METADATA_JSON
    if not meta_path.is_file():
        raise LymphomilError("not a model folder (no metadata.json)", file=model_dir,
                             fix="give a folder written by `lymphomil train`")
    return date.fromisoformat(read_json(meta_path)["reference_date"])


@dataclass
class Predictions:
    ids: list[str]
    proba: np.ndarray
    labels: np.ndarray
    skipped: list[dict]
    patients: np.ndarray
    model: PatientModel
    #: the referral rule's decision per patient (lymphomil.referral.Decision); None: no rule
    decisions: list | None = None


def predict_patients(model: PatientModel, targets: Sequence[Patient], cohort: Cohort,
                     cache_dir: Path | None = None) -> Predictions:
    """P(malignant) and the 0.5-threshold call for ``targets``; the cohort's skips ride along."""
    patients = attach_features(targets, [model], cache_dir)
    proba = model.predict_proba(patients)[:, 1] if len(patients) else np.zeros(0)
    return Predictions([p.id for p in targets], proba, (proba >= 0.5).astype(int),
                       [i.to_dict() for i in cohort.issues], patients, model)


def predict_folder(model_dir: Path, data: Path, *, on_error: str = "raise",
                   include_labelled: bool = False, cache_dir: Path | None = None) -> Predictions:
    """Predict every unlabelled patient of ``data`` (every patient with ``include_labelled``)."""
    from lymphomil.models.schema import FIX, read_model_folder

    model, metadata = read_model_folder(model_dir)  # checksums, then a strict schema
    reference = date.fromisoformat(metadata["reference_date"])
    cohort = load_cohort(data, reference_date=reference, on_error=on_error)
    targets = cohort.patients if include_labelled else cohort.unlabelled
    if not targets:
        raise LymphomilError("no patients to predict (no LABEL -1 rows with images)", file=data,
                             fix="add unlabelled patients (LABEL -1) or use --all")
    from lymphomil.referral import load_rule, model_decisions

    rule = load_rule(model_dir)
    try:
        pred = predict_patients(model, targets, cohort, cache_dir)
        if rule is not None:
            pred.decisions = model_decisions(rule, model, pred.patients, pred.proba)
        return pred
    except (ValueError, IndexError, RuntimeError) as exc:  # stored arrays of the wrong shapes
        raise LymphomilError(f"the model's stored state does not fit its features "
                             f"({type(exc).__name__}: {exc})", file=Path(model_dir) / "model.json",
                             fix=FIX) from None


#: REASON of predictions.csv when the model folder has no referral rule (trained before rules,
#: or on too few patients of a class to fit one)
NO_RULE = "no referral rule in the model folder: forced call"


def write_predictions(pred: Predictions, out: Path, kaggle: bool = False) -> Path:
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
    return atomic_write_text(out, buffer.getvalue())
