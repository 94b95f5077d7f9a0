"""What the report shows: the run's results (:class:`ReportContext`, one :class:`PatientCall` per
patient), the page's fixed sections and words, and how one value is written on it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lymphomil.evaluation.crossval import format_metric

if TYPE_CHECKING:  # pragma: no cover
    from lymphomil.evaluation.crossval import CVResult

#: (id, title) of every top-level section, in page order (tests check that each one exists)
SECTIONS = (
    ("summary", "Summary"),
    ("model-card", "Model card"),
    ("data", "Data"),
    ("cross-validation", "Cross-validation"),
    ("roc", "ROC & confusion"),
    ("hard-subset", "Hard subset"),
    ("calibration", "Calibration"),
    ("patients", "Patients"),
    ("errors", "Errors to learn from"),
    ("skipped", "Skipped inputs"),
    ("appendix", "Appendix"),
)
FAMILY_ORDER = ("attributes", "images", "fusion", "selection")
FAMILY_TITLES = {"attributes": "Attributes only (age, count, gender)",
                 "images": "Cell images", "fusion": "Attributes + images (fusion)",
                 "selection": "Nested selection (the choice among candidates, cross-validated)"}
LABEL_WORDS = {0: "reactive", 1: "malignant", -1: "unknown"}
TABLE_METRICS = (("balanced_accuracy", "Balanced accuracy"),
                 ("hard_balanced_accuracy", "Hard subset"),
                 ("roc_auc", "ROC AUC"), ("accuracy", "Accuracy"), ("f1", "F1"))
THUMB_CROP, THUMB_QUALITY = 112, 80  # 80: 200 patients × 16 cells stay under 15 MB
EXPLORE_FIGURES = (("hist_lymph_count.png", "Lymphocyte count by label"),
                   ("hist_age.png", "Age by label"))


@dataclass
class PatientCall:
    """One patient's call and what the page needs to let a haematologist check it."""

    id: str
    proba: float
    predicted: int
    true_label: int  # -1 when unknown
    age: float
    gender: str
    lymph_count: float
    n_images: int
    image_paths: list[Path]
    #: one score per image, higher = more suspicious; None for attribute-only models
    instance_scores: np.ndarray | None
    part_probas: dict[str, float] | None = None  # e.g. {"attributes": 0.8, "images": 0.3}
    #: (low, high) spread of P(malignant) (lymphomil.evaluation.uncertainty); None when not measured
    interval: tuple[float, float] | None = None
    #: out-of-fold cases: (repeats in which the call was wrong, repeats)
    oof_wrong: tuple[int, int] | None = None
    #: the referral rule's decision: "malignant", "reactive" or "refer"; None when no rule was
    #: applied (the page then shows the forced call alone, as ``predicted`` says)
    decision: str | None = None
    #: why, in words a person reads (e.g. "P(malignant) 0.58 is inside the uncertain band ...")
    reasons: tuple[str, ...] = ()


@dataclass
class ReportContext:
    """Everything a report shows; built by the run, rendered by :func:`render_report`."""

    title: str
    data_root: str
    model_name: str  # the chosen model
    model_description: str
    cv_results: list[CVResult]  # every candidate
    explore: dict | list | None  # from lymphomil.report.explore.explore(); None skips the table
    calls: list[PatientCall]
    skipped: list[dict]  # {patient_id, file, row, problem, fix}
    config: dict
    versions: dict
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)
    #: model name -> group (else its registered model's family decides)
    families: dict[str, str] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)  # patient ID -> count, for the scatter
    #: set when the data is a generated cohort (``lymphomil synth`` or the demo): what made it
    #: (e.g. {"seed": 0, "n_patients": 60}); the page then says so on top, in a banner
    synthetic: dict | None = None
    #: the date at which ages were computed (YYYY-MM-DD), stated wherever ages are shown
    reference_date: str | None = None
    #: files of the run the page links to: (href relative to the report, what the file holds)
    files: list[tuple[str, str]] = field(default_factory=list)
    #: how the patients' intervals were made, in words (None: no interval was measured)
    interval_method: str | None = None
    threshold: float = 0.5  # P(malignant) at and above which a patient is called malignant
    #: what one cell score is, from the model that made the scores (its ``instance_score_units``)
    score_units: str | None = None
    #: labelled patients the chosen model gets wrong out of fold (see :func:`oof_errors`):
    #: ``proba`` is the mean out-of-fold probability, ``interval`` its range over the repeats,
    #: the cells are ranked by the final model (which was trained with these patients)
    errors: list[PatientCall] = field(default_factory=list)
    #: the trained model's card (lymphomil.report.model_card), as written to model/model_card.json
    model_card: dict | None = None
    #: the model whose cell scores rank the galleries (None: the chosen model itself)
    cell_scorer: str | None = None
    #: auto-call balanced accuracy against coverage, per model (margin ranking):
    #: {name: {"coverage": [...], "balanced_accuracy": [...], optional "ci_low"/"ci_high": [...],
    #: optional "rule": {"coverage": c, "balanced_accuracy": b} (the nested rule's point)}}
    risk_coverage: Mapping[str, Mapping[str, Any]] | None = None


def infer_family(name: str, families: Mapping[str, str] | None = None) -> str:
    """A model's group in the CV table: given in ``families``, else its registered model's own
    family (:attr:`~lymphomil.models.base.PatientModel.family`, the one place a family is
    decided): ``attributes``, ``fusion``, ``selection`` (a ``select:`` model, whatever its
    candidates read), or ``images`` for every family that reads images."""
    if families and name in families:
        return families[name]
    # deferred for start-up: the model registry imports scikit-learn; a page whose families
    # are given never needs it
    from lymphomil.models.base import create_model

    family = create_model(name).family
    if family == "select":
        return "selection"
    return family if family in ("attributes", "fusion") else "images"


def finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(float(value))


def fmt(value: Any, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if finite(value) else "–"


def metric_cell(stats: Mapping[str, float]) -> dict[str, Any]:
    """A table cell: the mean ± std on top, the 95 % interval below, the raw text as a tooltip."""
    if not finite(stats.get("mean")):
        return {"main": "n/a", "ci": "", "text": "n/a", "mean": None}
    return {"main": f"{stats['mean']:.3f} ± {stats['std']:.3f}",
            "ci": f"[{stats['ci_low']:.3f}, {stats['ci_high']:.3f}]",
            "text": format_metric(dict(stats)), "mean": float(stats["mean"])}
