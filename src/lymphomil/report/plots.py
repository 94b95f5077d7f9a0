"""Figures of the report, as PNG bytes or data URIs (nothing touches the screen or the network).

Every figure is drawn with matplotlib's object API on the Agg canvas under matplotlib's default
style (a user's ``matplotlibrc`` must not change the report), and saved without the
``Software`` metadata, so two renders of the same results give byte-identical PNGs. Inside
:func:`figure_cache`, a figure whose inputs were drawn before is read back instead of drawn
again (the key covers the drawing function, its inputs, this module's code and matplotlib's
version), so a warm ``run`` redraws nothing.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lymphomil.outputs import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    from lymphomil.evaluation.crossval import CVResult

DPI = 110
MALIGNANT, REACTIVE, UNKNOWN = "#c0392b", "#2166ac", "#7f7f7f"
ACCENT = "#1b1b1b"
_STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e5e5e5",
    "grid.linewidth": 0.6,
    "axes.edgecolor": "#888888",
    "axes.titlesize": 10,
    "legend.fontsize": 8,
    "svg.hashsalt": "lymphomil",
}
FAMILY_STYLE = {"attributes": "--", "images": ":", "fusion": "-"}


# --------------------------------------------------------------------------- plumbing


def _new_figure(width: float, height: float) -> Any:
    """A bare Agg figure (no pyplot: no global state, no window, thread-safe enough)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


_CACHE: ContextVar[Path | None] = ContextVar("lymphomil_figure_cache", default=None)
_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


@contextlib.contextmanager
def figure_cache(folder: str | Path | None) -> Iterator[None]:
    """Figures drawn inside this block are kept in ``folder`` (PNG files named by the content
    key) and read back when the same inputs come again; ``None``: draw every figure."""
    token = _CACHE.set(None if folder is None else Path(folder))
    try:
        yield
    finally:
        _CACHE.reset(token)


def _feed(digest: Any, value: Any) -> None:
    """Hash ``value`` by content: arrays by dtype, shape and bytes; mappings in key order;
    dataclasses (a CVResult) field by field. TypeError for what has no stable content."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, np.generic)):
        digest.update(f"{type(value).__name__}:{value!r};".encode())
    elif isinstance(value, np.ndarray):
        digest.update(f"array:{value.dtype.str}:{value.shape};".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, Mapping):
        digest.update(f"map:{len(value)};".encode())
        for key in sorted(value, key=repr):
            _feed(digest, key)
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"seq:{len(value)};".encode())
        for item in value:
            _feed(digest, item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        digest.update(f"dc:{type(value).__qualname__};".encode())
        for item in dataclasses.fields(value):
            _feed(digest, item.name)
            _feed(digest, getattr(value, item.name))
    else:
        raise TypeError(f"no content key for {type(value).__name__}")


def figure_key(draw: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """The content key of one figure: what is drawn, from what, by which code."""
    import matplotlib

    digest = hashlib.sha256()
    _feed(digest, [draw.__qualname__, matplotlib.__version__, DPI, _STYLE,
                   hashlib.sha256(Path(__file__).read_bytes()).hexdigest(), list(args),
                   dict(kwargs)])
    return digest.hexdigest()[:32]


def _draw(draw: Any, *args: Any, **kwargs: Any) -> bytes:
    """Run a drawing function under the default style + ours and return PNG bytes (read back
    from the figure cache when one is open and holds these inputs)."""
    import matplotlib
    import matplotlib.style

    folder, path = _CACHE.get(), None
    if folder is not None:
        try:
            path = folder / f"{figure_key(draw, args, kwargs)}.png"
            data = path.read_bytes()
            if data.startswith(_PNG_START) and data.endswith(_PNG_END):
                return data  # a damaged file (no PNG end) is drawn again
        except TypeError:
            path = None  # inputs without a content key: draw, keep nothing
        except OSError:
            pass
    with matplotlib.style.context("default"), matplotlib.rc_context(_STYLE):
        data = png_bytes(draw(*args, **kwargs))
    if path is not None:
        with contextlib.suppress(OSError):  # a read-only cache still gives the figure
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
    return data


def png_bytes(figure: Any) -> bytes:
    """PNG without a Software/date stamp: the same figure always gives the same bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """Embed bytes in the page itself (the report must open offline, as one file)."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def roc_points(proba: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(false positive rate, true positive rate, AUC) without scikit-learn's tie handling quirks."""
    order = np.argsort(-proba, kind="stable")
    p, t = proba[order], y[order] == 1
    distinct = np.flatnonzero(np.diff(p)) if p.size > 1 else np.array([], dtype=int)
    cut = np.r_[distinct, p.size - 1]
    tps, fps = np.cumsum(t)[cut], np.cumsum(~t)[cut]
    n_pos, n_neg = max(int(t.sum()), 1), max(int((~t).sum()), 1)
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    return fpr, tpr, float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def confusion(proba: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """2×2 counts, rows = true (reactive, malignant), columns = predicted, at ``threshold``."""
    pred = (proba >= threshold).astype(int)
    matrix = np.zeros((2, 2), dtype=int)
    np.add.at(matrix, (y.astype(int), pred), 1)
    return matrix


# --------------------------------------------------------------------------- figures


def roc_figure(results: Sequence[CVResult], chosen: str | None,
               families: Mapping[str, str]) -> bytes:
    """One ROC curve per model from its repeat-averaged out-of-fold probabilities."""
    return _draw(_roc, results, chosen, families)


def _line_style(families: Mapping[str, str], name: str) -> str:
    return FAMILY_STYLE.get(families.get(name, ""), "-")


def _roc(results: Sequence[CVResult], chosen: str | None, families: Mapping[str, str]) -> Any:
    figure = _new_figure(8.4, 5.2)
    axes = figure.subplots()
    colours = _colours(len(results))
    curves = []
    for colour, result in zip(colours, results):
        fpr, tpr, auc = roc_points(result.mean_proba(), result.y)
        curves.append((auc, result, fpr, tpr, colour))
    for result in results:
        if result.model_name == chosen:
            for r in range(result.proba.shape[0]):
                fpr, tpr, _ = roc_points(result.proba[r], result.y)
                axes.plot(fpr, tpr, color=ACCENT, alpha=0.18, linewidth=0.8,
                          label="_nolegend_")
    for auc, result, fpr, tpr, colour in sorted(curves, key=lambda c: (-c[0], c[1].model_name)):
        is_chosen = result.model_name == chosen
        axes.plot(fpr, tpr, color=ACCENT if is_chosen else colour,
                  linewidth=2.6 if is_chosen else 1.3,
                  linestyle="-" if is_chosen else _line_style(families, result.model_name),
                  label=f"{result.model_name}{' (chosen)' if is_chosen else ''}  AUC {auc:.3f}",
                  zorder=3 if is_chosen else 2)
    axes.plot([0, 1], [0, 1], color="#bbbbbb", linewidth=0.8, linestyle="--", label="_nolegend_")
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.set_aspect("equal")
    axes.set_xlabel("1 − specificity (reactive patients called malignant)")
    axes.set_ylabel("sensitivity (malignant patients found)")
    axes.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False,
                title="model  (AUC of averaged probabilities)", title_fontsize=8)
    return figure


def confusion_figure(results: Sequence[CVResult], chosen: str | None,
                     threshold: float = 0.5) -> bytes:
    """Small multiples: each model's confusion matrix of its repeat-averaged probabilities."""
    return _draw(_confusions, results, chosen, threshold)


def _confusions(results: Sequence[CVResult], chosen: str | None, threshold: float) -> Any:
    columns = min(4, max(1, len(results)))
    rows = int(np.ceil(len(results) / columns))
    figure = _new_figure(2.35 * columns, 2.2 * rows)
    grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for axes in grid[len(results):]:
        axes.set_visible(False)
    for axes, result in zip(grid, results):
        _one_confusion(axes, confusion(result.mean_proba(), result.y, threshold),
                       result.model_name, result.model_name == chosen)
    return figure


def _one_confusion(axes: Any, matrix: np.ndarray, name: str, is_chosen: bool) -> None:
    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    axes.grid(False)
    for i in range(2):
        for j in range(2):
            axes.text(j, i, f"{matrix[i, j]}\n{rates[i, j]:.0%}", ha="center", va="center",
                      fontsize=9, color="white" if rates[i, j] > 0.55 else "#222222")
    axes.set_xticks([0, 1], ["reactive", "malignant"], fontsize=7.5)
    axes.set_yticks([0, 1], ["reactive", "malignant"], fontsize=7.5, rotation=90, va="center")
    axes.set_xlabel("predicted", fontsize=7.5)
    axes.set_ylabel("true", fontsize=7.5)
    axes.set_title(name + (" (chosen)" if is_chosen else ""), fontsize=9,
                   fontweight="bold" if is_chosen else "normal")
    for spine in axes.spines.values():
        spine.set_visible(is_chosen)
        spine.set_color(ACCENT)


def hard_subset_figure(rows: Sequence[Mapping[str, Any]], chosen: str | None) -> bytes:
    """Balanced accuracy overall vs on the hard subset, per model, with 95 % intervals.

    ``rows``: ``{"name", "overall": stats, "hard": stats}`` in display order (top first).
    """
    return _draw(_hard_dots, rows, chosen)


def _hard_dots(rows: Sequence[Mapping[str, Any]], chosen: str | None) -> Any:
    figure = _new_figure(7.6, 0.9 + 0.34 * len(rows))
    axes = figure.subplots()
    ys = np.arange(len(rows))[::-1]
    for y, row in zip(ys, rows):
        for offset, key, colour, marker, label in ((0.14, "overall", ACCENT, "o", "all patients"),
                                                   (-0.14, "hard", MALIGNANT, "D", "hard subset")):
            stats = row[key]
            if not np.isfinite(stats.get("mean", np.nan)):
                continue
            error = [[stats["mean"] - stats["ci_low"]], [stats["ci_high"] - stats["mean"]]]
            axes.errorbar(stats["mean"], y + offset, xerr=error,
                          fmt=marker, color=colour, markersize=5, capsize=2.5, linewidth=1.1,
                          label=label if y == ys[0] else "_nolegend_")
    axes.axvline(0.5, color="#999999", linewidth=0.8, linestyle="--")
    axes.set_yticks(ys, [r["name"] for r in rows])
    for tick, row in zip(axes.get_yticklabels(), rows):
        if row["name"] == chosen:
            tick.set_fontweight("bold")
    axes.set_ylim(-0.7, len(rows) - 0.3)
    axes.set_xlim(min(0.4, _lowest(rows) - 0.02), 1.0)
    axes.set_xlabel("balanced accuracy (mean over repeats, 95 % bootstrap interval)")
    axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    axes.grid(axis="y", visible=False)
    return figure


def _lowest(rows: Sequence[Mapping[str, Any]]) -> float:
    lows = [r[k].get("ci_low", np.nan) for r in rows for k in ("overall", "hard")]
    lows = [v for v in lows if np.isfinite(v)]
    return min(lows) if lows else 0.4


def calibration_figure(stats: Mapping[str, Any], name: str) -> bytes:
    """Reliability diagram of out-of-fold probabilities, with how many fall in each bin."""
    return _draw(_calibration, stats, name)


def _calibration(stats: Mapping[str, Any], name: str) -> Any:
    figure = _new_figure(6.4, 5.0)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], color="#999999", linewidth=0.9, linestyle="--",
              label="perfectly calibrated")
    pred, true = np.asarray(stats["prob_pred"]), np.asarray(stats["prob_true"])
    top.plot(pred, true, marker="o", color=ACCENT, linewidth=1.4, markersize=5,
             label=f"{name}  (Brier {stats['brier']:.3f})")
    top.set_xlim(-0.01, 1.01)
    top.set_ylim(-0.03, 1.03)
    top.set_ylabel("fraction malignant (observed)")
    top.legend(loc="upper left", frameon=False)
    edges = np.asarray(stats["bin_edges"])
    counts = np.asarray(stats["bin_counts"])
    bottom.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#9fb3c8",
               edgecolor="white", linewidth=0.6)
    bottom.set_ylabel("predictions")
    bottom.set_xlabel("out-of-fold P(malignant), every patient in every repeat")
    bottom.grid(axis="x", visible=False)
    return figure


def count_scatter_figure(result: CVResult, counts: Mapping[str, float]) -> bytes | None:
    """The chosen model's out-of-fold probability against the lymphocyte count.

    Shows where the model must earn its keep: inside the reactive count range (shaded), the
    count alone cannot decide. None when counts are missing for some patients.
    """
    if not all(pid in counts for pid in result.patient_ids):
        return None
    return _draw(_scatter, result, counts)


def _scatter(result: CVResult, counts: Mapping[str, float]) -> Any:
    x = np.array([counts[pid] for pid in result.patient_ids], dtype=float)
    proba, y = result.mean_proba(), result.y
    figure = _new_figure(7.6, 4.0)
    axes = figure.subplots()
    reactive = x[y == 0]
    if reactive.size:
        axes.axvspan(reactive.min(), reactive.max(), color="#fdf1d6", zorder=0,
                     label=f"reactive count range {reactive.min():.2f}–{reactive.max():.2f}")
    for label, colour, marker, name in ((0, REACTIVE, "o", "reactive"),
                                        (1, MALIGNANT, "^", "malignant")):
        mask = y == label
        axes.scatter(x[mask], proba[mask], s=22, color=colour, marker=marker, alpha=0.8,
                     edgecolors="white", linewidths=0.4, label=f"{name} (n={int(mask.sum())})",
                     zorder=3)
    axes.axhline(0.5, color="#999999", linewidth=0.8, linestyle="--")
    axes.set_xscale("log")
    axes.set_ylim(-0.03, 1.03)
    axes.set_xlabel("lymphocyte count (10⁹/L, log scale)")
    axes.set_ylabel("out-of-fold P(malignant)")
    axes.set_title(f"{result.model_name}: probability averaged over repeats", loc="left")
    axes.legend(loc="best", frameon=True, framealpha=0.9, edgecolor="#dddddd")
    return figure


def risk_coverage_figure(curves: Mapping[str, Mapping[str, Any]],
                         chosen: str | None = None) -> bytes | None:
    """Auto-call balanced accuracy against coverage (the share of patients auto-called, the most
    confident first by margin |P − 0.5|), one line per model; the nested referral rule's
    operating point (``curves[name]["rule"]``) is marked where given. None: nothing to draw.

    ``curves``: {name: {"coverage": [...], "balanced_accuracy": [...], optional "ci_low" and
    "ci_high" (same length), optional "rule": {"coverage": c, "balanced_accuracy": b}}}.
    """
    drawable = {name: c for name, c in curves.items()
                if len(c.get("coverage") or ()) and len(c.get("coverage") or ())
                == len(c.get("balanced_accuracy") or ())}
    if not drawable:
        return None
    return _draw(_risk_coverage, drawable, chosen)


def _risk_coverage(curves: Mapping[str, Mapping[str, Any]], chosen: str | None) -> Any:
    figure = _new_figure(7.6, 4.4)
    axes = figure.subplots()
    names = sorted(curves, key=lambda n: (n != chosen, n))
    lowest = 1.0
    for colour, name in zip(_colours(len(names)), names):
        curve = curves[name]
        x = np.asarray(curve["coverage"], dtype=float)
        y = np.asarray(curve["balanced_accuracy"], dtype=float)
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
        is_chosen = name == chosen
        colour = ACCENT if is_chosen else colour
        axes.plot(x, y, color=colour, linewidth=2.4 if is_chosen else 1.2,
                  marker="o", markersize=3.5 if is_chosen else 2.5,
                  label=f"{name}{' (chosen)' if is_chosen else ''}", zorder=3 if is_chosen else 2)
        finite = y[np.isfinite(y)]
        if finite.size:
            lowest = min(lowest, float(finite.min()))
        if curve.get("ci_low") is not None and curve.get("ci_high") is not None:
            low = np.asarray(curve["ci_low"], dtype=float)[order]
            high = np.asarray(curve["ci_high"], dtype=float)[order]
            axes.fill_between(x, low, high, color=colour, alpha=0.12 if is_chosen else 0.06,
                              linewidth=0, label="_nolegend_")
            if np.isfinite(low).any():
                lowest = min(lowest, float(np.nanmin(low)))
        rule = curve.get("rule") or {}
        if all(np.isfinite(float(rule.get(k, np.nan)))
               for k in ("coverage", "balanced_accuracy")):
            axes.plot([rule["coverage"]], [rule["balanced_accuracy"]], marker="*",
                      markersize=14 if is_chosen else 10, color=MALIGNANT,
                      markeredgecolor="white", linestyle="none", zorder=4,
                      label=(f"referral rule of {name}: {100 * rule['coverage']:.0f} % "
                             f"auto-called, {rule['balanced_accuracy']:.3f}"))
    least = min(float(np.min(np.asarray(c["coverage"], dtype=float))) for c in curves.values())
    axes.set_xlim(1.01, min(0.95, least - 0.03))
    axes.set_ylim(max(0.0, min(lowest, 0.8) - 0.03), 1.005)
    axes.xaxis.set_major_formatter(_percent)
    axes.set_xlabel("coverage: share of patients auto-called (the rest referred)")
    axes.set_ylabel("balanced accuracy of the auto-calls")
    axes.legend(loc="lower left", frameon=True, framealpha=0.9, edgecolor="#dddddd")
    return figure


def _percent(value: float, _position: Any = None) -> str:
    return f"{100 * value:.0f} %"
