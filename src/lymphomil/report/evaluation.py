"""The page's evidence sections: the cross-validation table by family, ROC, confusion, the hard
subset, calibration and risk-coverage, as plain values and data URIs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lymphomil.report import plots
from lymphomil.report.context import (
    FAMILY_ORDER,
    FAMILY_TITLES,
    TABLE_METRICS,
    ReportContext,
    finite,
    fmt,
    infer_family,
    metric_cell,
)

if TYPE_CHECKING:  # pragma: no cover
    from lymphomil.evaluation.crossval import CVResult


def cv_rows(results: Sequence[CVResult], summaries: Mapping[str, dict], chosen: str,
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
            "cells": [metric_cell(summary[m]) for m, _ in TABLE_METRICS],
            "hard_size": f"{hard:.0f} ({hard / max(n, 1):.0%})",
            "minutes": f"{summary['fit_seconds']['total'] / 60:.1f}",
            "design": f"{int(result.folds.max()) + 1}×{result.proba.shape[0]}",
        })
    order = {family: i for i, family in enumerate(FAMILY_ORDER)}
    rows.sort(key=lambda r: (order.get(r["family"], len(order)), r["family"],
                             -(r["cells"][0]["mean"] if r["cells"][0]["mean"] is not None else -1),
                             r["name"]))
    return rows


def cv_groups(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
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


def calibration_view(ctx: ReportContext, chosen: CVResult | None) -> dict[str, Any] | None:
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
                     "pred": fmt(pred), "true": fmt(true)})
    return rows


def figures_view(ctx: ReportContext, summaries: Mapping[str, dict], rows: Sequence[dict],
             chosen: CVResult | None) -> dict[str, str | None]:
    """All result figures as data URIs (None where there is nothing to draw)."""
    results = ctx.cv_results
    if not results:
        return {"roc": None, "confusion": None, "hard": None, "scatter": None}
    families = {row["name"]: row["family"] for row in rows}  # decided once, in cv_rows
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


def risk_coverage_view(curves: Mapping[str, Mapping[str, Any]] | None,
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
                      "ba": fmt(rule["balanced_accuracy"])}
                     if finite(rule.get("coverage")) and finite(rule.get("balanced_accuracy"))
                     else None)}
