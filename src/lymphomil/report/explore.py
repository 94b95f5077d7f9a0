"""Table-1 statistics and figures of a cohort, by label (the founding report's exploration).

Before any model, a user should see what the attributes already say: reactive patients are
younger and every one of them has a count in 4–7.7 (docs/design.md §1). ``explore`` writes
that table, the gender split, histograms and a gallery of cells per label, all atomically.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from lymphomil.data.cohort import LABELS, Cohort
from lymphomil.outputs import atomic_write_bytes
from lymphomil.runtime.errors import LymphomilError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: (column of cohort_table(), name in the tables and figures)
ATTRIBUTES = (("age", "age"), ("lymph_count", "lymphocyte count"),
              ("n_images", "images per patient"))
STATISTICS = ("count", "mean", "std", "min", "25%", "50%", "75%", "max")
LABEL_ORDER = (0, 1, -1)
LABEL_COLOURS = {0: "tab:blue", 1: "tab:red", -1: "tab:gray"}
GALLERY_ROWS, GALLERY_COLUMNS = 2, 8


def cohort_table(cohort: Cohort) -> "pd.DataFrame":
    """The cohort as one row per patient (ID, label, gender, date of birth, age, count, images,
    split): what the statistics and the histograms are computed on."""
    import pandas as pd

    return pd.DataFrame(
        {
            "ID": [p.id for p in cohort.patients],
            "label": [p.label for p in cohort.patients],
            "gender": [p.gender for p in cohort.patients],
            "dob": [p.dob.isoformat() for p in cohort.patients],
            "age": [p.age for p in cohort.patients],
            "lymph_count": [p.lymph_count for p in cohort.patients],
            "n_images": [p.n_images for p in cohort.patients],
            "split": [p.split for p in cohort.patients],
        }
    )


def _labels_present(labels: Sequence[int]) -> list[int]:
    present = set(int(label) for label in labels)
    return [label for label in LABEL_ORDER if label in present]


def attributes_by_label(table: "pd.DataFrame") -> list[dict[str, Any]]:
    """One row per (attribute, label) of a cohort's table (:func:`cohort_table`): count, mean,
    std, min, quartiles, max."""
    rows = []
    for column, name in ATTRIBUTES:
        for label in _labels_present(table["label"]):
            stats = table.loc[table["label"] == label, column].astype(float).describe()
            row: dict[str, Any] = {"attribute": name, "label": label, "group": LABELS[label]}
            row.update({key: (int(stats[key]) if key == "count" else float(stats[key]))
                        for key in STATISTICS})
            rows.append(row)
    return rows


def gender_by_label(table: "pd.DataFrame") -> list[dict[str, Any]]:
    """Patients per gender and label (the loader has already upper-cased ``f``/``m``)."""
    rows = []
    for label in _labels_present(table["label"]):
        genders = table.loc[table["label"] == label, "gender"]
        rows.append({"label": label, "group": LABELS[label], "F": int((genders == "F").sum()),
                     "M": int((genders == "M").sum()), "total": int(genders.size)})
    return rows


def format_value(value: Any) -> str:
    """A table cell: floats with 2 decimals, NaN (std of one patient) as an en dash."""
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def format_table_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-style markdown table (floats with 2 decimals, NaN as an en dash)."""
    align = ["---" if c in ("attribute", "group") else "---:" for c in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(format_value(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def format_table_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


ATTRIBUTE_COLUMNS = ("attribute", "group", "label") + STATISTICS
GENDER_COLUMNS = ("group", "label", "F", "M", "total")


# --------------------------------------------------------------------------- figures
# Figures use matplotlib's object API (no pyplot): no global backend switch, no open windows.


def _png_bytes(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _histogram(table: "pd.DataFrame", column: str, title: str, log_x: bool = False) -> bytes:
    from matplotlib.figure import Figure

    values = table[column].astype(float)
    if log_x:
        bins = np.geomspace(values.min(), values.max() * 1.0001, 25)
    else:
        bins = np.histogram_bin_edges(values, bins=20)
    figure = Figure(figsize=(6, 3.6))
    axes = figure.subplots()
    for label in _labels_present(table["label"]):
        selected = values[table["label"] == label]
        axes.hist(selected, bins=bins, alpha=0.55, color=LABEL_COLOURS[label],
                  label=f"{LABELS[label]} (n={selected.size})")
    if log_x:
        axes.set_xscale("log")
    axes.set_xlabel(title)
    axes.set_ylabel("patients")
    axes.legend(frameon=False)
    return _png_bytes(figure)


def sample_cells(cohort: Cohort, label: int, count: int, seed: int = 0) -> list[tuple[str, Path]]:
    """``count`` (patient ID, image) pairs of one label, spread over patients, same every run."""
    patients = sorted((p for p in cohort.patients if p.label == label), key=lambda p: p.id)
    if not patients:
        return []
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(patients))
    picks = []
    for i in range(count):
        patient = patients[order[i % len(patients)]]
        picks.append((patient.id, patient.image_paths[rng.integers(patient.n_images)]))
    return picks


def _cell_gallery(cohort: Cohort) -> bytes:
    from matplotlib.figure import Figure
    from PIL import Image

    labels = [label for label in (0, 1) if any(p.label == label for p in cohort.patients)]
    per_label = GALLERY_ROWS * GALLERY_COLUMNS
    n_rows = max(1, GALLERY_ROWS * len(labels))
    figure = Figure(figsize=(GALLERY_COLUMNS * 1.3, n_rows * 1.45))
    grid = figure.subplots(n_rows, GALLERY_COLUMNS, squeeze=False)
    for axes in grid.flat:
        axes.axis("off")
    for block, label in enumerate(labels):
        for k, (patient_id, path) in enumerate(sample_cells(cohort, label, per_label)):
            axes = grid[block * GALLERY_ROWS + k // GALLERY_COLUMNS, k % GALLERY_COLUMNS]
            with Image.open(path) as image:
                axes.imshow(np.asarray(image.convert("RGB")))
            axes.set_title(f"{LABELS[label]} {patient_id}", fontsize=6,
                           color=LABEL_COLOURS[label])
    figure.tight_layout(pad=0.3)
    return _png_bytes(figure)


# --------------------------------------------------------------------------- entry point


def explore(cohort: Cohort, out_dir: str | Path) -> dict[str, Any]:
    """Write the by-label tables (CSV + markdown) and figures into ``out_dir``; return them.

    Returns ``{"attributes_by_label": rows, "gender_by_label": rows, "files": {name: path}}``.
    """
    if not cohort.patients:
        raise LymphomilError("the cohort has no usable patients to explore", file=cohort.root,
                             fix="check the data folder (run with --on-error raise to see why)")
    out_dir = Path(out_dir)
    table = cohort_table(cohort)
    attributes = attributes_by_label(table)
    genders = gender_by_label(table)
    markdown = (f"# Cohort {cohort.root.name}: {len(cohort.patients)} patients, "
                f"{sum(p.n_images for p in cohort.patients)} images\n\n"
                f"Ages at {cohort.reference_date.isoformat()}; "
                "lymphocyte count in 10^9 cells/L.\n\n"
                "## Attributes by label\n\n"
                + format_table_markdown(attributes, ATTRIBUTE_COLUMNS)
                + "\n## Gender by label\n\n"
                + format_table_markdown(genders, GENDER_COLUMNS))
    outputs = {
        "attributes_by_label.csv": format_table_csv(attributes, ATTRIBUTE_COLUMNS).encode(),
        "gender_by_label.csv": format_table_csv(genders, GENDER_COLUMNS).encode(),
        "attributes_by_label.md": markdown.encode(),
        "hist_age.png": _histogram(table, "age", "age (years)"),
        "hist_lymph_count.png": _histogram(table, "lymph_count",
                                           "lymphocyte count (10^9/L, log scale)", log_x=True),
        "hist_images.png": _histogram(table, "n_images", "images per patient"),
        "cells_by_label.png": _cell_gallery(cohort),
    }
    files = {name: atomic_write_bytes(out_dir / name, data) for name, data in outputs.items()}
    return {"attributes_by_label": attributes, "gender_by_label": genders, "files": files}
