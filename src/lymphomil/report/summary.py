"""The page's summary on top (the chosen model, its figures, a synthetic-data banner), the model
card with its referral rule, and the appendix (configuration, versions, timings)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from lymphomil.outputs import strict
from lymphomil.report.context import TABLE_METRICS, ReportContext, finite, fmt, metric_cell
from lymphomil.report.data_view import reactive_range


def summary_view(ctx: ReportContext, summaries: Mapping[str, dict],
             patients: Sequence[dict]) -> dict[str, Any]:
    chosen = summaries.get(ctx.model_name)
    unknown = [p for p in patients if p["truth"] is None] or list(patients)
    n_cv = next((len(r.y) for r in ctx.cv_results if r.model_name == ctx.model_name), None)
    reactive = reactive_range(ctx)
    auto = [p for p in unknown if not p["referred"]]
    return {
        "n_referred": len(unknown) - len(auto),
        "n_auto_malignant": sum(p["call"] == "malignant" for p in auto),
        "n_auto_reactive": sum(p["call"] == "reactive" for p in auto),
        "ba": metric_cell(chosen["balanced_accuracy"]) if chosen else None,
        "hard": metric_cell(chosen["hard_balanced_accuracy"]) if chosen else None,
        "auc": metric_cell(chosen["roc_auc"]) if chosen else None,
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


def synthetic_banner(synthetic: Mapping[str, Any] | None) -> str | None:
    """The banner's one line about what made the cohort; None for real data."""
    if synthetic is None:
        return None
    made = ", ".join(part for part in (
        f"{synthetic['n_patients']} patients" if "n_patients" in synthetic else "",
        f"seed {synthetic['seed']}" if "seed" in synthetic else "") if part)
    return ("lymphomil's generated cohort" + (f" ({made})" if made else "")
            + ": drawn images and attributes with a built-in signal. No figure on this page says "
              "anything about real patients or real performance.")


def card_view(card: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The model card as the page shows it (the JSON file holds the same, in full)."""
    if not card:
        return None
    cv = card.get("cross_validation") or {}
    titles = dict(TABLE_METRICS)
    metrics = [{"title": titles.get(name, name), **metric_cell(stats)}
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
        if not finite(value.get("mean")):
            return None
        text = fmt(value["mean"]) if not percent else f"{100 * float(value['mean']):.0f} %"
        if finite(value.get("std")):
            text += f" ± {fmt(value['std'])}" if not percent else \
                f" ± {100 * float(value['std']):.0f}"
        if finite(value.get("ci_low")) and finite(value.get("ci_high")):
            text += (f" [{fmt(value['ci_low'])}, {fmt(value['ci_high'])}]" if not percent else
                     f" [{100 * float(value['ci_low']):.0f}, {100 * float(value['ci_high']):.0f}]")
        return text
    if not finite(value):
        return None
    return f"{100 * float(value):.0f} %" if percent else fmt(value)


def _referral_view(referral: Any) -> dict[str, Any] | None:
    """The referral rule as the model card states it; every key is optional."""
    if not isinstance(referral, Mapping) or not referral:
        return None
    target = []
    if finite(referral.get("max_referral")):
        target.append(f"refer at most {100 * float(referral['max_referral']):.0f} % of patients")
    if finite(referral.get("target_accuracy")):
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
    return json.dumps(strict(value), indent=2, sort_keys=True, default=str, ensure_ascii=False,
                      allow_nan=False)


def appendix_view(ctx: ReportContext) -> dict[str, Any]:
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
