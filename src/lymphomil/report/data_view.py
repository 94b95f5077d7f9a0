"""The page's data section: Table 1 (attributes by label) and the exploration figures, and the
reactive patients' count range the patient cards compare with."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lymphomil.report import plots
from lymphomil.report.context import EXPLORE_FIGURES, LABEL_WORDS, ReportContext, finite, fmt


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


def table_one(explore: dict | list | None) -> dict[str, Any] | None:
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
            "main": f"{fmt(row.get('mean'), 1)} ± {fmt(row.get('std'), 1)}",
            "median": (f"{fmt(row.get('50%'), 1)} "
                       f"[{fmt(row.get('25%'), 1)}–{fmt(row.get('75%'), 1)}]"),
            "range": f"{fmt(row.get('min'), 2)}–{fmt(row.get('max'), 2)}",
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


def reactive_range(ctx: ReportContext) -> tuple[float, float] | None:
    """[min, max] of the labelled reactive counts: inside it, the count alone cannot decide."""
    attributes, _, _ = _explore_rows(ctx.explore)
    for row in attributes:
        if (row.get("attribute") == "lymphocyte count" and _group_name(row) == "reactive"
                and finite(row.get("min")) and finite(row.get("max"))):
            return float(row["min"]), float(row["max"])
    if ctx.counts and ctx.cv_results:
        result = ctx.cv_results[0]
        values = [ctx.counts[p] for p, y in zip(result.patient_ids, result.y)
                  if y == 0 and p in ctx.counts]
        if values:
            return min(values), max(values)
    return None
