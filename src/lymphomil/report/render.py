"""``report.html``: one self-contained page a haematologist can open offline and check calls with.

Everything the page shows is inside the file: CSS inline, figures and cell thumbnails as base64
data URIs, no fonts, scripts or styles fetched from anywhere. The page is built from a
:class:`ReportContext` (the results of a run) by a Jinja2 template with autoescaping on, and
written atomically. The same context always gives the same bytes: no timestamps, figures saved
without metadata, thumbnails encoded deterministically, models and patients in a fixed order.
"""


from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lymphomil.outputs import atomic_write_text
from lymphomil.report import plots
from lymphomil.report.context import (
    SECTIONS,
    TABLE_METRICS,
    THUMB_CROP,
    THUMB_QUALITY,
    PatientCall,
    ReportContext,
    infer_family,
)
from lymphomil.report.data_view import table_one
from lymphomil.report.evaluation import (
    calibration_stats,
    calibration_view,
    cv_groups,
    cv_rows,
    figures_view,
    risk_coverage_view,
)
from lymphomil.report.patients import cell_ranking, columns_view, oof_errors, patients_view
from lymphomil.report.summary import appendix_view, card_view, summary_view, synthetic_banner

#: what callers read from this module (the sections live in context, evaluation, data_view,
#: patients and summary)
__all__ = ["SECTIONS", "PatientCall", "ReportContext", "build_view", "calibration_stats",
           "cell_ranking", "infer_family", "oof_errors", "render_report"]


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
    rows = cv_rows(ctx.cv_results, summaries, ctx.model_name, ctx.families)
    patients, errors = patients_view(ctx, gallery_k, crop, quality, page_dir)
    rule = any(p["decision"] is not None for p in patients)
    show, constant = columns_view(patients)
    return {
        "ctx": ctx, "sections": _page_sections(rule), "k": gallery_k, "crop": crop,
        "rule": rule, "referred": [p for p in patients if p["referred"]],
        "auto": [p for p in patients if not p["referred"]],
        "show": show, "constant": constant,
        "ranking": cell_ranking(ctx) if any(p["scored"] for p in [*patients, *errors]) else None,
        "risk_coverage": risk_coverage_view(ctx.risk_coverage, ctx.model_name),
        "synthetic": synthetic_banner(ctx.synthetic), "files": list(ctx.files),
        "age_note": (f"age in years at the reference date {ctx.reference_date}"
                     if ctx.reference_date else "age in years at the cohort's reference date"),
        "summary": summary_view(ctx, summaries, patients),
        "table_one": table_one(ctx.explore),
        "cv_groups": cv_groups(rows), "metric_titles": [t for _, t in TABLE_METRICS],
        "figures": figures_view(ctx, summaries, rows, chosen),
        "calibration": calibration_view(ctx, chosen),
        "card": card_view(ctx.model_card),
        "patients": patients, "errors": errors,
        "oof_error_ids": [e["id"] for e in oof_errors(chosen, ctx.threshold)] if chosen else [],
        "n_labelled": next((len(r.y) for r in ctx.cv_results if r.model_name == ctx.model_name),
                           None),
        "appendix": appendix_view(ctx),
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
