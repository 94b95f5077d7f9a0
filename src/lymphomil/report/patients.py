"""The page's patients: one card per patient (its call, its interval, the referral decision) with
galleries of its most and least suspicious cells as thumbnails, and the out-of-fold errors."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

from lymphomil.evaluation.uncertainty import borderline
from lymphomil.report import plots
from lymphomil.report.context import (
    LABEL_WORDS,
    THUMB_CROP,
    THUMB_QUALITY,
    PatientCall,
    ReportContext,
    finite,
    fmt,
)
from lymphomil.report.data_view import reactive_range

if TYPE_CHECKING:  # pragma: no cover
    from lymphomil.evaluation.crossval import CVResult


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
    if interval is None or not all(finite(v) for v in interval):
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
        "age": fmt(call.age, 0), "age_value": float(call.age) if finite(call.age) else None,
        "gender": call.gender, "count": fmt(call.lymph_count, 2),
        "n_images": call.n_images, "in_reactive_range": in_range,
        "count_value": float(call.lymph_count) if finite(call.lymph_count) else None,
        "interval": interval_view(call.interval, threshold),
        "parts": [{"name": name, "proba": float(p), "pct": f"{100 * float(p):.1f}"}
                  for name, p in (call.part_probas or {}).items()],
        "scored": scores is not None,
        "top": cells(top), "bottom": cells(bottom), "overlap": len(set(top) & set(bottom)),
    }


def patients_view(ctx: ReportContext, k: int, crop: int, quality: int,
              page_dir: Path | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(predicted patients, out-of-fold errors) as the page shows them."""
    needed = []
    for call in [*ctx.calls, *ctx.errors]:
        top, bottom = gallery_indices(call, k)
        needed += [call.image_paths[i] for i in (*top, *bottom)]
    thumbs = _thumbnails(needed, crop, quality)
    reactive = reactive_range(ctx)
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


def columns_view(patients: Sequence[dict[str, Any]]) -> tuple[dict[str, bool], list[str]]:
    """Which optional columns the patient tables show, and a line for each dropped one (a column
    with one value for every patient says nothing row by row: it is stated once instead)."""
    show, constant = {}, []
    for key, header, words in OPTIONAL_COLUMNS:
        values = {p[key] for p in patients}
        show[key] = len(patients) < 2 or len(values) > 1
        if not show[key]:
            constant.append(f"{header}: {words(next(iter(values)))}")
    return show, constant
