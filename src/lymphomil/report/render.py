"""``report.html``: one self-contained page a haematologist can open offline and check calls with.

Everything the page shows is inside the file: CSS inline, figures and cell thumbnails as base64
data URIs, no fonts, scripts or styles fetched from anywhere. The page is built from a
:class:`ReportContext` (the results of a run) by a Jinja2 template with autoescaping on, and
written atomically. The same context always gives the same bytes: no timestamps, figures saved
without metadata, thumbnails encoded deterministically, models and patients in a fixed order.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lymphomil.outputs import atomic_write_text
from lymphomil.report import plots

if TYPE_CHECKING:  # pragma: no cover
    from lymphomil.crossval import CVResult

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
    #: (low, high) spread of P(malignant) (lymphomil.uncertainty); None when not measured
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
    explore: dict | list | None  # from lymphomil.explore.explore(); None skips the table
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
    #: the trained model's card (lymphomil.model_card), as written to model/model_card.json
    model_card: dict | None = None
    #: the model whose cell scores rank the galleries (None: the chosen model itself)
    cell_scorer: str | None = None
    #: auto-call balanced accuracy against coverage, per model (margin ranking):
    #: {name: {"coverage": [...], "balanced_accuracy": [...], optional "ci_low"/"ci_high": [...],
    #: optional "rule": {"coverage": c, "balanced_accuracy": b} (the nested rule's point)}}
    risk_coverage: Mapping[str, Mapping[str, Any]] | None = None


# --------------------------------------------------------------------------- small helpers


def infer_family(name: str, families: Mapping[str, str] | None = None) -> str:
    """A model's group in the CV table: given in ``families``, else its registered model's own
    family (:attr:`~lymphomil.models.base.PatientModel.family`, the one place a family is
    decided): ``attributes``, ``fusion``, ``selection`` (a ``select:`` model, whatever its
    candidates read), or ``images`` for every family that reads images."""
    if families and name in families:
        return families[name]
    from lymphomil.models.base import create_model  # lazy: the report module stays light

    family = create_model(name).family
    if family == "select":
        return "selection"
    return family if family in ("attributes", "fusion") else "images"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(float(value))


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if _finite(value) else "–"


def _metric_cell(stats: Mapping[str, float]) -> dict[str, Any]:
    """A table cell: the mean ± std on top, the 95 % interval below, the raw text as a tooltip."""
    from lymphomil.crossval import (
        format_metric,  # lazy: the report module stays light to import
    )

    if not _finite(stats.get("mean")):
        return {"main": "n/a", "ci": "", "text": "n/a", "mean": None}
    return {"main": f"{stats['mean']:.3f} ± {stats['std']:.3f}",
            "ci": f"[{stats['ci_low']:.3f}, {stats['ci_high']:.3f}]",
            "text": format_metric(dict(stats)), "mean": float(stats["mean"])}


# --------------------------------------------------------------------------- cross-validation


def _cv_rows(results: Sequence[CVResult], summaries: Mapping[str, dict], chosen: str,
             families: Mapping[str, str]) -> list[dict[str, Any]]:
    """Models grouped by family (attributes, images, fusion, other), best first inside a family."""
    rows = []
    for result in results:
        summary = summaries[result.model_name]
        n = len(result.y)
        hard = summary["hard_subset_size"]["mean"]
        rows.append({
            "name": result.model_name,
            "family": infer_family(result.model_name, families),
            "chosen": result.model_name == chosen,
            "cells": [_metric_cell(summary[m]) for m, _ in TABLE_METRICS],
            "hard_size": f"{hard:.0f} ({hard / max(n, 1):.0%})",
            "minutes": f"{summary['fit_seconds']['total'] / 60:.1f}",
            "design": f"{int(result.folds.max()) + 1}×{result.proba.shape[0]}",
        })
    order = {family: i for i, family in enumerate(FAMILY_ORDER)}
    rows.sort(key=lambda r: (order.get(r["family"], len(order)), r["family"],
                             -(r["cells"][0]["mean"] if r["cells"][0]["mean"] is not None else -1),
                             r["name"]))
    return rows


def _cv_groups(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for row in rows:
        if not groups or groups[-1]["family"] != row["family"]:
            groups.append({"family": row["family"],
                           "title": FAMILY_TITLES.get(row["family"], row["family"].capitalize()),
                           "rows": []})
        groups[-1]["rows"].append(row)
    return groups


CALIBRATION_BINS = 10


def calibration_stats(result: CVResult, n_bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Calibration of a model's out-of-fold probabilities, every (patient, repeat) pair pooled:
    each is a genuine prediction of a model that never saw the patient. The reliability curve is
    scikit-learn's ``calibration_curve`` (uniform bins), the Brier score ``brier_score_loss``;
    also the Brier score of each repeat and of always predicting the malignant share."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss

    proba = np.asarray(result.proba, dtype=float)
    y = np.broadcast_to(np.asarray(result.y, dtype=int), proba.shape)
    keep = np.isfinite(proba)
    p, t = proba[keep], y[keep]
    prob_true, prob_pred = calibration_curve(t, p, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # binned as calibration_curve bins (an edge value goes to the lower bin)
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=n_bins)
    per_repeat = [brier_score_loss(y[r][keep[r]], proba[r][keep[r]])
                  for r in range(proba.shape[0]) if keep[r].any()]
    prevalence = float(np.mean(result.y))
    return {"prob_true": prob_true.tolist(), "prob_pred": prob_pred.tolist(),
            "bin_edges": edges.tolist(), "bin_counts": counts.tolist(),
            "brier": float(brier_score_loss(t, p)),
            "brier_per_repeat": [float(b) for b in per_repeat],
            "brier_reference": prevalence * (1 - prevalence), "n_predictions": int(p.size),
            "n_patients": int(len(result.y)), "n_repeats": int(proba.shape[0])}


def _calibration(ctx: ReportContext, chosen: CVResult | None) -> dict[str, Any] | None:
    """The chosen model's reliability diagram and every candidate's Brier score."""
    if chosen is None:
        return None
    stats = calibration_stats(chosen)
    per = np.asarray(stats["brier_per_repeat"])
    rows = []
    for result in ctx.cv_results:
        other = stats if result is chosen else calibration_stats(result)
        rows.append({"name": result.model_name, "chosen": result is chosen,
                     "brier": f"{other['brier']:.3f}"})
    rows.sort(key=lambda r: (r["brier"], r["name"]))
    return {
        "figure": plots.data_uri(plots.calibration_figure(stats, chosen.model_name)),
        "brier": f"{stats['brier']:.3f}",
        "brier_repeats": (f"{per.mean():.3f} ± {per.std(ddof=1):.3f}" if per.size > 1
                          else f"{per.mean():.3f}" if per.size else "n/a"),
        "reference": f"{stats['brier_reference']:.3f}",
        "n_predictions": stats["n_predictions"], "n_patients": stats["n_patients"],
        "n_repeats": stats["n_repeats"], "bins": len(stats["bin_edges"]) - 1,
        "bins_table": _bins_table(stats),
        "rows": rows,
    }


def _bins_table(stats: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per bin: its range, how many predictions, their mean and the observed share
    (calibration_curve drops empty bins: the points go with the non-empty ones, in order)."""
    points = iter(zip(stats["prob_pred"], stats["prob_true"]))
    rows = []
    edges = stats["bin_edges"]
    for lo, hi, n in zip(edges[:-1], edges[1:], stats["bin_counts"]):
        pred, true = next(points) if n else (None, None)
        rows.append({"range": f"{lo:.1f}–{hi:.1f}", "n": str(int(n)),
                     "pred": _fmt(pred), "true": _fmt(true)})
    return rows


def _figures(ctx: ReportContext, summaries: Mapping[str, dict], rows: Sequence[dict],
             chosen: CVResult | None) -> dict[str, str | None]:
    """All result figures as data URIs (None where there is nothing to draw)."""
    results = ctx.cv_results
    if not results:
        return {"roc": None, "confusion": None, "hard": None, "scatter": None}
    families = {row["name"]: row["family"] for row in rows}  # decided once, in _cv_rows
    hard_rows = [{"name": row["name"], "overall": summaries[row["name"]]["balanced_accuracy"],
                  "hard": summaries[row["name"]]["hard_balanced_accuracy"]} for row in rows]
    ordered = [next(r for r in results if r.model_name == row["name"]) for row in rows]
    scatter = plots.count_scatter_figure(chosen, ctx.counts) if chosen is not None else None
    return {
        "roc": plots.data_uri(plots.roc_figure(results, ctx.model_name, families)),
        "confusion": plots.data_uri(plots.confusion_figure(ordered, ctx.model_name)),
        "hard": plots.data_uri(plots.hard_subset_figure(hard_rows, ctx.model_name)),
        "scatter": plots.data_uri(scatter) if scatter is not None else None,
    }


def _risk_coverage(curves: Mapping[str, Mapping[str, Any]] | None,
                   chosen: str) -> dict[str, Any] | None:
    """The risk-coverage figure and the chosen model's rule point, when the run measured them."""
    if not curves:
        return None
    figure = plots.risk_coverage_figure(curves, chosen)
    if figure is None:
        return None
    rule = (curves.get(chosen) or {}).get("rule") or {}
    return {"figure": plots.data_uri(figure),
            "rule": ({"coverage": f"{100 * float(rule['coverage']):.0f} %",
                      "ba": _fmt(rule["balanced_accuracy"])}
                     if _finite(rule.get("coverage")) and _finite(rule.get("balanced_accuracy"))
                     else None)}


# --------------------------------------------------------------------------- data (Table 1)


def _explore_rows(explore: dict | list | None) -> tuple[list[dict], list[dict], dict]:
    """(attribute rows, gender rows, files) from explore()'s dict or a bare list of rows."""
    if explore is None:
        return [], [], {}
    if isinstance(explore, list):
        return explore, [], {}
    return (list(explore.get("attributes_by_label", [])), list(explore.get("gender_by_label", [])),
            dict(explore.get("files", {})))


def _group_name(row: Mapping[str, Any]) -> str:
    if row.get("group"):
        return str(row["group"])
    label = row.get("label")
    try:
        return LABEL_WORDS.get(int(label), str(label))
    except (TypeError, ValueError):
        return str(label)


def _table_one(explore: dict | list | None) -> dict[str, Any] | None:
    """Table-1 layout: a column per label, a row per attribute (mean ± sd, median [IQR], range)."""
    attributes, genders, files = _explore_rows(explore)
    if not attributes and not genders:
        return None
    groups: list[str] = []
    for row in [*attributes, *genders]:
        if _group_name(row) not in groups:
            groups.append(_group_name(row))
    sizes = {_group_name(r): int(r["total"]) for r in genders if "total" in r}
    table: dict[str, dict[str, dict[str, str]]] = {}
    for row in attributes:
        sizes.setdefault(_group_name(row), int(row.get("count", 0) or 0))
        table.setdefault(str(row["attribute"]), {})[_group_name(row)] = {
            "main": f"{_fmt(row.get('mean'), 1)} ± {_fmt(row.get('std'), 1)}",
            "median": (f"{_fmt(row.get('50%'), 1)} "
                       f"[{_fmt(row.get('25%'), 1)}–{_fmt(row.get('75%'), 1)}]"),
            "range": f"{_fmt(row.get('min'), 2)}–{_fmt(row.get('max'), 2)}",
        }
    gender_cells = {_group_name(r): f"{r.get('F', 0)} F / {r.get('M', 0)} M" for r in genders}
    return {"groups": [{"name": g, "n": sizes.get(g)} for g in groups],
            "rows": [{"attribute": a, "cells": [cells.get(g) for g in groups]}
                     for a, cells in table.items()],
            "gender": [gender_cells.get(g, "–") for g in groups] if genders else None,
            "figures": _explore_figures(files)}


def _explore_figures(files: Mapping[str, Any]) -> list[dict[str, str]]:
    figures = []
    for name, caption in EXPLORE_FIGURES:
        path = files.get(name)
        if path is not None and Path(path).is_file():
            figures.append({"caption": caption, "uri": plots.data_uri(Path(path).read_bytes())})
    return figures


def _reactive_range(ctx: ReportContext) -> tuple[float, float] | None:
    """[min, max] of the labelled reactive counts: inside it, the count alone cannot decide."""
    attributes, _, _ = _explore_rows(ctx.explore)
    for row in attributes:
        if (row.get("attribute") == "lymphocyte count" and _group_name(row) == "reactive"
                and _finite(row.get("min")) and _finite(row.get("max"))):
            return float(row["min"]), float(row["max"])
    if ctx.counts and ctx.cv_results:
        result = ctx.cv_results[0]
        values = [ctx.counts[p] for p, y in zip(result.patient_ids, result.y)
                  if y == 0 and p in ctx.counts]
        if values:
            return min(values), max(values)
    return None


# --------------------------------------------------------------------------- thumbnails


def thumbnail(path: Path, crop: int = THUMB_CROP, quality: int = THUMB_QUALITY) -> str | None:
    """The centre crop (where the lymphocyte is) as a small JPEG data URI; None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            width, height = image.size
            side = min(crop, width, height)
            left, top = (width - side) // 2, (height - side) // 2
            cell = image.crop((left, top, left + side, top + side))
            buffer = io.BytesIO()
            cell.save(buffer, format="JPEG", quality=quality, optimize=True)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return plots.data_uri(buffer.getvalue(), "image/jpeg")


def _thumbnails(paths: Iterable[Path], crop: int, quality: int) -> dict[Path, str | None]:
    """Encode every needed thumbnail once, in threads (PIL releases the GIL while coding)."""
    unique = list(dict.fromkeys(Path(p) for p in paths))
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        uris = list(pool.map(lambda p: thumbnail(p, crop, quality), unique))
    return dict(zip(unique, uris))


def gallery_indices(call: PatientCall, k: int) -> tuple[list[int], list[int]]:
    """(most suspicious k, least suspicious k) image indices; file order when no scores."""
    n = len(call.image_paths)
    if call.instance_scores is None:
        return list(range(min(k, n))), []
    scores = np.asarray(call.instance_scores, dtype=float).ravel()
    if scores.size != n:
        raise ValueError(f"patient {call.id}: {scores.size} instance scores for {n} images")
    high = np.where(np.isnan(scores), -np.inf, scores)
    low = np.where(np.isnan(scores), np.inf, scores)
    top = np.argsort(-high, kind="stable")[:k]
    bottom = np.argsort(low, kind="stable")[:k]
    return [int(i) for i in top], [int(i) for i in bottom]


# --------------------------------------------------------------------------- patients


def interval_view(interval: tuple[float, float] | None, threshold: float = 0.5) -> dict[str, Any]:
    """An interval as the page shows it: ends, width, percentages for the bar, borderline flag."""
    from lymphomil.uncertainty import borderline

    if interval is None or not all(_finite(v) for v in interval):
        return {"low": None, "high": None, "width": None, "borderline": False, "text": "–"}
    low, high = sorted(float(v) for v in interval)
    return {"low": low, "high": high, "width": high - low,
            "borderline": bool(borderline(low, high, threshold)),
            "low_pct": f"{100 * low:.1f}", "width_pct": f"{100 * (high - low):.1f}",
            "text": f"{low:.2f}–{high:.2f}"}


def oof_errors(result: CVResult, threshold: float = 0.5) -> list[dict[str, Any]]:
    """The labelled patients whose mean out-of-fold probability is on the wrong side of the
    threshold, most confidently wrong first: index, mean, range, wrong repeats."""
    proba = np.asarray(result.proba, dtype=float)
    mean = np.nanmean(proba, axis=0)
    y = np.asarray(result.y, dtype=int)
    wrong_each = (proba >= threshold).astype(int) != y[None, :]
    out = []
    for i in np.flatnonzero((mean >= threshold).astype(int) != y):
        out.append({"index": int(i), "id": result.patient_ids[i], "label": int(y[i]),
                    "mean": float(mean[i]), "low": float(np.nanmin(proba[:, i])),
                    "high": float(np.nanmax(proba[:, i])),
                    "wrong": int(wrong_each[:, i].sum()), "repeats": int(proba.shape[0])})
    out.sort(key=lambda e: (-abs(e["mean"] - threshold), e["id"]))
    return out


def image_href(path: Path, page_dir: Path | None) -> str:
    """A link from the page to a whole image: relative to the page's folder (it keeps working
    when the run and data folders move together), else an absolute ``file:`` URI."""
    from urllib.parse import quote

    path = Path(path).absolute()
    if page_dir is not None:
        try:
            return quote(Path(os.path.relpath(path, Path(page_dir).absolute())).as_posix())
        except ValueError:  # another drive (Windows): no relative path exists
            pass
    return path.as_uri()


def cell_ranking(ctx: ReportContext) -> str:
    """The one sentence that says which model ranks the cells and what its scores are: the
    summary, the model card and every gallery show these same words."""
    scorer = ctx.cell_scorer or ctx.model_name
    units = ctx.score_units or "cell score (units not stated by the model)"
    text = (f"Cells are ranked by {scorer}, most suspicious first within each patient; its cell "
            f"scores: {units} (higher = more suspicious of malignancy).")
    if scorer != ctx.model_name:
        text += (f" {scorer} is a cell classifier trained on the labelled patients; "
                 f"{ctx.model_name} makes the calls but does not rank single cells.")
    return text


def _patient_view(call: PatientCall, k: int, thumbs: Mapping[Path, str | None],
                  reactive: tuple[float, float] | None, threshold: float = 0.5,
                  prefix: str = "patient", page_dir: Path | None = None,
                  scorer: str | None = None) -> dict[str, Any]:
    top, bottom = gallery_indices(call, k)
    scores = call.instance_scores

    def cells(indices: Sequence[int]) -> list[dict[str, Any]]:
        return [{"uri": thumbs.get(Path(call.image_paths[i])),
                 "href": image_href(call.image_paths[i], page_dir),
                 "name": Path(call.image_paths[i]).name,
                 "score": f"{float(scores[i]):.3g}" if scores is not None else None}
                for i in indices]

    in_range = None if reactive is None else reactive[0] <= call.lymph_count <= reactive[1]
    truth = int(call.true_label)
    return {
        "id": call.id, "anchor": f"{prefix}-{call.id}",
        "model_label": "Model" if call.oof_wrong is None else "Out of fold",
        "oof_wrong": (f"{call.oof_wrong[0]} of {call.oof_wrong[1]}"
                      if call.oof_wrong is not None else None),
        "caveat": (None if call.oof_wrong is None else
                   "P(malignant) here is the mean of the out-of-fold probabilities (range over "
                   f"the repeats beside it). The cells are ranked by {scorer or 'the model'}, "
                   "which was trained with this patient: the ranking is in-sample."),
        "proba": float(call.proba), "pct": f"{100 * float(call.proba):.1f}",
        "call": LABEL_WORDS.get(int(call.predicted), "unknown"),
        "decision": call.decision, "referred": call.decision == "refer",
        "reasons": [str(r) for r in call.reasons],
        "truth": LABEL_WORDS.get(truth) if truth in (0, 1) else None,
        "correct": (truth == int(call.predicted)) if truth in (0, 1) else None,
        "age": _fmt(call.age, 0), "age_value": float(call.age) if _finite(call.age) else None,
        "gender": call.gender, "count": _fmt(call.lymph_count, 2),
        "n_images": call.n_images, "in_reactive_range": in_range,
        "count_value": float(call.lymph_count) if _finite(call.lymph_count) else None,
        "interval": interval_view(call.interval, threshold),
        "parts": [{"name": name, "proba": float(p), "pct": f"{100 * float(p):.1f}"}
                  for name, p in (call.part_probas or {}).items()],
        "scored": scores is not None,
        "top": cells(top), "bottom": cells(bottom), "overlap": len(set(top) & set(bottom)),
    }


def _patients(ctx: ReportContext, k: int, crop: int, quality: int,
              page_dir: Path | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(predicted patients, out-of-fold errors) as the page shows them."""
    needed = []
    for call in [*ctx.calls, *ctx.errors]:
        top, bottom = gallery_indices(call, k)
        needed += [call.image_paths[i] for i in (*top, *bottom)]
    thumbs = _thumbnails(needed, crop, quality)
    reactive = _reactive_range(ctx)
    scorer = ctx.cell_scorer or ctx.model_name
    return ([_patient_view(call, k, thumbs, reactive, ctx.threshold, page_dir=page_dir,
                           scorer=scorer) for call in ctx.calls],
            [_patient_view(call, k, thumbs, reactive, ctx.threshold, "error", page_dir, scorer)
             for call in ctx.errors])


#: columns of the patient tables that are dropped when every patient has the same value:
#: (key in the patient view, header, words for the one value)
OPTIONAL_COLUMNS = (("truth", "Label", lambda v: v or "to predict"),
                    ("gender", "Gender", str), ("age", "Age", str),
                    ("count", "Count", str), ("n_images", "Images", str))


def _columns(patients: Sequence[dict[str, Any]]) -> tuple[dict[str, bool], list[str]]:
    """Which optional columns the patient tables show, and a line for each dropped one (a column
    with one value for every patient says nothing row by row: it is stated once instead)."""
    show, constant = {}, []
    for key, header, words in OPTIONAL_COLUMNS:
        values = {p[key] for p in patients}
        show[key] = len(patients) < 2 or len(values) > 1
        if not show[key]:
            constant.append(f"{header}: {words(next(iter(values)))}")
    return show, constant


# --------------------------------------------------------------------------- summary & appendix


def _summary(ctx: ReportContext, summaries: Mapping[str, dict],
             patients: Sequence[dict]) -> dict[str, Any]:
    chosen = summaries.get(ctx.model_name)
    unknown = [p for p in patients if p["truth"] is None] or list(patients)
    n_cv = next((len(r.y) for r in ctx.cv_results if r.model_name == ctx.model_name), None)
    reactive = _reactive_range(ctx)
    auto = [p for p in unknown if not p["referred"]]
    return {
        "n_referred": len(unknown) - len(auto),
        "n_auto_malignant": sum(p["call"] == "malignant" for p in auto),
        "n_auto_reactive": sum(p["call"] == "reactive" for p in auto),
        "ba": _metric_cell(chosen["balanced_accuracy"]) if chosen else None,
        "hard": _metric_cell(chosen["hard_balanced_accuracy"]) if chosen else None,
        "auc": _metric_cell(chosen["roc_auc"]) if chosen else None,
        "hard_size": (f"{chosen['hard_subset_size']['mean']:.0f}" if chosen else None),
        "n_cv": n_cv,
        "n_called": len(unknown),
        "n_malignant": sum(p["call"] == "malignant" for p in unknown),
        "n_reactive": sum(p["call"] == "reactive" for p in unknown),
        "n_labelled_shown": len(patients) - len(unknown) if len(unknown) < len(patients) else 0,
        "n_borderline": sum(p["interval"]["borderline"] for p in unknown),
        "has_intervals": any(p["interval"]["low"] is not None for p in patients),
        "n_skipped": len(ctx.skipped),
        "reactive_range": (f"{reactive[0]:.2f}–{reactive[1]:.2f}" if reactive else None),
    }


def _synthetic_banner(synthetic: Mapping[str, Any] | None) -> str | None:
    """The banner's one line about what made the cohort; None for real data."""
    if synthetic is None:
        return None
    made = ", ".join(part for part in (
        f"{synthetic['n_patients']} patients" if "n_patients" in synthetic else "",
        f"seed {synthetic['seed']}" if "seed" in synthetic else "") if part)
    return ("lymphomil's generated cohort" + (f" ({made})" if made else "")
            + ": drawn images and attributes with a built-in signal. No figure on this page says "
              "anything about real patients or real performance.")


def _card_view(card: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The model card as the page shows it (the JSON file holds the same, in full)."""
    if not card:
        return None
    cv = card.get("cross_validation") or {}
    titles = dict(TABLE_METRICS)
    metrics = [{"title": titles.get(name, name), **_metric_cell(stats)}
               for name, stats in (cv.get("metrics") or {}).items() if stats]
    features = []
    for f in (card.get("inputs") or {}).get("image_features", []):
        source = f.get("provenance") or {}
        package = source.get("package")
        features.append({
            "backbone": f.get("backbone"), "crop": f.get("crop"), "kind": f.get("kind"),
            "precision": f.get("precision"), "tta": f.get("test_time_augmentation"),
            "source": source.get("source"),
            "package": (f"{package} {source.get('package_version') or '(not installed)'}"
                        if package else None),
            "sha256": (source.get("sha256") or "")[:16]})
    selection = card.get("selection") or {}
    scores = selection.get("candidates_balanced_accuracy") or {}
    runner = selection.get("runner_up")
    return {
        "referral": _referral_view(card.get("referral")),
        "model": card.get("model", {}), "inputs": card.get("inputs", {}), "features": features,
        "training": card.get("training", {}), "threshold": card.get("threshold", {}),
        "cv": cv, "metrics": metrics, "selection": selection,
        "runner_up": (f"{runner} ({scores[runner]:.3f})" if runner in scores else runner),
        "uncertainty": card.get("uncertainty"),
        "intended_use": card.get("intended_use") or "research software, not a medical device",
        "versions": sorted((str(k), str(v)) for k, v in (card.get("versions") or {}).items()),
    }


def _share_or_metric(value: Any, percent: bool = False) -> str | None:
    """A measured figure of the card: a number, or a metric's {mean, std, ci_low, ci_high}."""
    if isinstance(value, Mapping):
        if not _finite(value.get("mean")):
            return None
        text = _fmt(value["mean"]) if not percent else f"{100 * float(value['mean']):.0f} %"
        if _finite(value.get("std")):
            text += f" ± {_fmt(value['std'])}" if not percent else \
                f" ± {100 * float(value['std']):.0f}"
        if _finite(value.get("ci_low")) and _finite(value.get("ci_high")):
            text += (f" [{_fmt(value['ci_low'])}, {_fmt(value['ci_high'])}]" if not percent else
                     f" [{100 * float(value['ci_low']):.0f}, {100 * float(value['ci_high']):.0f}]")
        return text
    if not _finite(value):
        return None
    return f"{100 * float(value):.0f} %" if percent else _fmt(value)


def _referral_view(referral: Any) -> dict[str, Any] | None:
    """The referral rule as the model card states it; every key is optional."""
    if not isinstance(referral, Mapping) or not referral:
        return None
    target = []
    if _finite(referral.get("max_referral")):
        target.append(f"refer at most {100 * float(referral['max_referral']):.0f} % of patients")
    if _finite(referral.get("target_accuracy")):
        target.append(f"auto-call balanced accuracy {float(referral['target_accuracy']):.3f}")
    measured = [(label, _share_or_metric(referral.get(key), percent))
                for key, label, percent in (
                    ("coverage", "coverage (patients auto-called)", True),
                    ("referred", "referred", True),
                    ("auto_call_balanced_accuracy", "auto-call balanced accuracy", False),
                    ("hard_auto_call_balanced_accuracy", "hard subset auto-calls", False))]
    return {"target": " and ".join(target) or None,
            "measured": [(label, text) for label, text in measured if text is not None],
            "how": referral.get("how") or referral.get("method")}


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def _appendix(ctx: ReportContext) -> dict[str, Any]:
    total = sum(float(v) for v in ctx.timings.values())
    return {
        "config": _pretty(ctx.config),
        "versions": sorted((str(k), str(v)) for k, v in ctx.versions.items()),
        "timings": [(stage, _duration(float(s))) for stage, s in ctx.timings.items()],
        "total": _duration(total),
    }


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


# --------------------------------------------------------------------------- entry point


def _template() -> Any:
    """The Jinja2 template, autoescaped (IDs and file names come from user data)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("lymphomil", "report/templates"),
                      autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return env.get_template("report.html.j2")


#: the section that opens the page when a referral rule was applied
REVIEW_SECTION = ("review", "Patients to review")


def _page_sections(rule: bool) -> list[tuple[str, str]]:
    """Sections in page order: with a referral rule, the patients to review come first, then
    the auto-calls, then the evidence."""
    if not rule:
        return list(SECTIONS)
    first = [REVIEW_SECTION, ("patients", "Auto-calls")]
    return first + [s for s in SECTIONS if s[0] != "patients"]


def build_view(ctx: ReportContext, gallery_k: int = 8, crop: int = THUMB_CROP,
               quality: int = THUMB_QUALITY, page_dir: Path | None = None) -> dict[str, Any]:
    """Everything the template shows, as plain strings, numbers and data URIs."""
    summaries = {r.model_name: r.summary() for r in ctx.cv_results}
    chosen = next((r for r in ctx.cv_results if r.model_name == ctx.model_name), None)
    rows = _cv_rows(ctx.cv_results, summaries, ctx.model_name, ctx.families)
    patients, errors = _patients(ctx, gallery_k, crop, quality, page_dir)
    rule = any(p["decision"] is not None for p in patients)
    show, constant = _columns(patients)
    return {
        "ctx": ctx, "sections": _page_sections(rule), "k": gallery_k, "crop": crop,
        "rule": rule, "referred": [p for p in patients if p["referred"]],
        "auto": [p for p in patients if not p["referred"]],
        "show": show, "constant": constant,
        "ranking": cell_ranking(ctx) if any(p["scored"] for p in [*patients, *errors]) else None,
        "risk_coverage": _risk_coverage(ctx.risk_coverage, ctx.model_name),
        "synthetic": _synthetic_banner(ctx.synthetic), "files": list(ctx.files),
        "age_note": (f"age in years at the reference date {ctx.reference_date}"
                     if ctx.reference_date else "age in years at the cohort's reference date"),
        "summary": _summary(ctx, summaries, patients),
        "table_one": _table_one(ctx.explore),
        "cv_groups": _cv_groups(rows), "metric_titles": [t for _, t in TABLE_METRICS],
        "figures": _figures(ctx, summaries, rows, chosen),
        "calibration": _calibration(ctx, chosen),
        "card": _card_view(ctx.model_card),
        "patients": patients, "errors": errors,
        "oof_error_ids": [e["id"] for e in oof_errors(chosen, ctx.threshold)] if chosen else [],
        "n_labelled": next((len(r.y) for r in ctx.cv_results if r.model_name == ctx.model_name),
                           None),
        "appendix": _appendix(ctx),
    }


def render_report(ctx: ReportContext, out: Path, gallery_k: int = 8, *, crop: int = THUMB_CROP,
                  quality: int = THUMB_QUALITY, figure_cache: Path | None = None,
                  write: Callable[[Path, bytes, str], Path] | None = None) -> Path:
    """Render ``ctx`` to one self-contained HTML file at ``out`` (atomically; through
    ``write(path, bytes, kind)`` when given); return ``out``. ``figure_cache``: a folder where
    figures are kept by content, so unchanged ones are not drawn again (see
    :func:`lymphomil.report.plots.figure_cache`)."""
    with plots.figure_cache(figure_cache):
        view = build_view(ctx, gallery_k, crop, quality, Path(out).parent)
    html = _template().render(**view)
    if write is not None:
        return write(Path(out), html.encode("utf-8"), "report")
    return atomic_write_text(Path(out), html)
