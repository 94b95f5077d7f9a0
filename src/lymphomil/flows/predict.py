"""The prediction flow: what ``lymphomil predict``, :func:`lymphomil.predict`,
:func:`lymphomil.decide` and the prediction stage of ``lymphomil run`` do.

Read top to bottom: a model folder read (checksums, a strict schema, the same feature weights),
the patients chosen, their P(malignant) and calls (:func:`predict_patients`: the model in
memory, as ``run`` has it), the referral rule's decisions with the OOD checks' reasons
(:func:`decide`), and the CSVs and the report beside them.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable

import numpy as np

from lymphomil.data.cohort import Cohort, Patient, load_cohort
from lymphomil.evaluation.metrics import balanced_accuracy, roc_auc
from lymphomil.flows import options
from lymphomil.flows.caches import attach_features
from lymphomil.flows.train import Referral
from lymphomil.models.base import PatientModel, load_model
from lymphomil.models.schema import FIX
from lymphomil.ood import load_ood_checks
from lymphomil.outputs import atomic_write_text, dumps_json, remove_owned_file, write_owned_file
from lymphomil.referral import Decision, load_rule, model_decisions
from lymphomil.runtime.environment import set_threads
from lymphomil.runtime.errors import LymphomilError


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
    #: each expert's P(malignant) (a fusion's attribute and image sides); None: one expert
    parts: dict[str, np.ndarray] | None = None


@dataclass
class PredictRun:
    pred: Predictions
    metrics_path: Path | None  # written when predicted patients carry labels
    skipped_path: Path | None  # written when inputs were skipped


def predict(model_dir: Path, data: Path, out: Path, *, kaggle: bool = False,
            patients: str = "new", include_labelled: bool = False, on_error: str = "raise",
            cache_dir: Path | None = None, threads: int | None = None,
            report: Path | None = None) -> PredictRun:
    """Predict the patients of ``data`` (:func:`predict_folder`) into the CSV ``out``, with the
    label metrics and the skipped inputs beside it (an earlier run's are removed when there are
    none now) and, with ``report``, the per-patient HTML report. Every file is recorded as this
    output's own (``out`` claimed by the caller)."""
    if threads is not None:
        set_threads(options.check_threads(threads))
    pred = predict_folder(model_dir, data, on_error=on_error, include_labelled=include_labelled,
                          cache_dir=cache_dir, patients=patients)
    metrics_path, skipped_path = prediction_files(out)
    write_predictions(pred, out, kaggle=kaggle, write=write_owned_file)
    if pred.metrics is not None:
        write_owned_file(metrics_path, dumps_json(pred.metrics).encode(), "metrics")
    else:  # an earlier run's metrics must not outlive a re-run without labels
        remove_owned_file(metrics_path)
        metrics_path = None
    if pred.skipped:
        write_owned_file(skipped_path, dumps_json(pred.skipped).encode(), "skipped list")
    else:  # an earlier run's list must not outlive a clean re-run
        remove_owned_file(skipped_path)
        skipped_path = None
    if report is not None:
        # deferred for start-up time: the report's plotting, only when a report is asked for
        from lymphomil.report.pages import write_prediction_report

        write_prediction_report(report, pred, data, model_dir, csv_path=out,
                                scores=pred.model.instance_scores(pred.patients),
                                write=write_owned_file)
    return PredictRun(pred, metrics_path, skipped_path)


def prediction_files(out: Path) -> tuple[Path, Path]:
    """The label metrics and skipped-list files written beside the predictions CSV ``out``."""
    return (out.with_name(out.stem + ".metrics.json"), out.with_name(out.stem + ".skipped.json"))


#: which patients of a folder `predict` predicts (--patients); the rest are listed, never dropped
PATIENT_RULES = {
    "new": "every patient without a label (LABEL -1) and every patient whose images are under "
           "testset/; labelled training patients are listed, not predicted",
    "all": "every patient of the folder",
}


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
    referral = Referral(load_rule(model_dir), load_ood_checks(model_dir, cache_dir))
    try:
        pred = predict_patients(model, referral, attach_features(targets, [model], cache_dir),
                                cohort)
    except (ValueError, IndexError, RuntimeError) as exc:  # stored arrays of the wrong shapes
        raise LymphomilError(f"the model's stored state does not fit its features "
                             f"({type(exc).__name__}: {exc})", file=Path(model_dir) / "model.json",
                             fix=FIX) from None
    pred.not_predicted = [p.id for p in left]
    pred.metrics = label_metrics(pred)
    return pred


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


def predict_patients(model: PatientModel, referral: Referral, patients: np.ndarray,
                     cohort: Cohort) -> Predictions:
    """P(malignant), the 0.5-threshold call and the referral's decision (:func:`decide`) of
    each patient (the features ``model`` reads attached) by the fitted ``model``; the cohort's
    skips ride along."""
    proba = model.predict_proba(patients)[:, 1] if len(patients) else np.zeros(0)
    pred = Predictions([p.id for p in patients], proba, (proba >= 0.5).astype(int),
                       [i.to_dict() for i in cohort.issues], patients, model)
    if len(patients):
        pred.decisions = decide(referral, model, patients, proba)
        if hasattr(model, "part_probas"):
            pred.parts = model.part_probas(patients)
    return pred


def decide(referral: Referral, model: PatientModel, patients: np.ndarray,
           proba: np.ndarray | None = None) -> list[Decision] | None:
    """The referral rule's decision for each patient (None without a rule): the margin of its
    P(malignant) (``proba``, else the model's), and any out-of-distribution reason of the
    referral's checks refers it too."""
    if referral.rule is None:
        return None
    extra = None
    if referral.checks is not None and len(patients):
        extra = [r.reasons for r in referral.checks.check(patients)]
    return model_decisions(referral.rule, model, patients, proba, extra)


def label_metrics(pred: Predictions) -> dict | None:
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


def write_prediction_files(pred: Predictions, folder: Path) -> None:
    """A run's predictions.csv and Kaggle submission.csv (a header only when none)."""
    if len(pred.ids):
        write_predictions(pred, folder / "predictions.csv")
        write_predictions(pred, folder / "submission.csv", kaggle=True)
    else:
        atomic_write_text(folder / "submission.csv", "Id,Predicted\n")


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
