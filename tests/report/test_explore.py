"""``explore``: Table-1 statistics match pandas, all files are written, the command lists skips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

import lymphomil.commands.data  # noqa: F401  registers synth/explore on the app
from lymphomil.commands.app import app
from lymphomil.data.cohort import load_cohort
from lymphomil.report.explore import (
    ATTRIBUTE_COLUMNS,
    STATISTICS,
    cohort_table,
    explore,
    format_table_markdown,
    sample_cells,
)

FILES = ("attributes_by_label.csv", "attributes_by_label.md", "gender_by_label.csv",
         "hist_age.png", "hist_lymph_count.png", "hist_images.png", "cells_by_label.png")


@pytest.fixture(scope="module")
def explored(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory):
    cohort = load_cohort(synthetic_root)
    out = tmp_path_factory.mktemp("explore")
    return cohort, out, explore(cohort, out)


def test_writes_every_file(explored) -> None:
    _, out, result = explored
    assert sorted(result["files"]) == sorted(FILES)
    for name in FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_figures_decode(explored) -> None:
    _, out, _ = explored
    for name in FILES:
        if name.endswith(".png"):
            with Image.open(out / name) as image:
                image.load()
                assert image.format == "PNG" and min(image.size) > 100


def test_attribute_table_matches_pandas(explored) -> None:
    cohort, out, result = explored
    table = cohort_table(cohort)
    expected = table.groupby("label")[["age", "lymph_count", "n_images"]].describe()
    rows = result["attributes_by_label"]
    names = ("age", "lymphocyte count", "images per patient")
    assert [(r["attribute"], r["label"]) for r in rows] == [
        (name, label) for name in names for label in (0, 1, -1)]
    columns = {"age": "age", "lymphocyte count": "lymph_count", "images per patient": "n_images"}
    for row in rows:
        for statistic in STATISTICS:
            assert row[statistic] == pytest.approx(
                expected.loc[row["label"], (columns[row["attribute"]], statistic)])
    written = pd.read_csv(out / "attributes_by_label.csv")
    assert list(written.columns) == list(ATTRIBUTE_COLUMNS)
    assert written["mean"].tolist() == pytest.approx([r["mean"] for r in rows])


def test_gender_table_matches_pandas(explored) -> None:
    cohort, out, result = explored
    table = cohort_table(cohort)
    crosstab = pd.crosstab(table["label"], table["gender"])
    for row in result["gender_by_label"]:
        expected = crosstab.loc[row["label"]]
        assert (row["F"], row["M"]) == (expected["F"], expected["M"])
        assert row["total"] == row["F"] + row["M"]
    assert sum(r["total"] for r in result["gender_by_label"]) == len(cohort.patients)
    assert pd.read_csv(out / "gender_by_label.csv")["total"].sum() == len(cohort.patients)


def test_markdown_holds_both_tables(explored) -> None:
    _, out, result = explored
    text = (out / "attributes_by_label.md").read_text()
    assert format_table_markdown(result["attributes_by_label"], ATTRIBUTE_COLUMNS) in text
    assert "## Gender by label" in text and "| malignant |" in text


def test_markdown_marks_an_undefined_std() -> None:
    row = {"attribute": "age", "group": "reactive", "std": float("nan"), "mean": 3.14159}
    assert format_table_markdown([row], ("group", "mean", "std")).splitlines()[2] == \
        "| reactive | 3.14 | – |"


def test_cell_sample_is_deterministic_and_spread(explored) -> None:
    cohort, _, _ = explored
    first = sample_cells(cohort, 1, 16)
    assert first == sample_cells(cohort, 1, 16)
    malignant = sum(p.label == 1 for p in cohort.patients)
    assert len({patient_id for patient_id, _ in first}) == min(16, malignant)


def test_explore_command_reports_and_lists_skips(synthetic_root: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data)
    cohort = load_cohort(data)
    broken = cohort.patients[0].image_paths[3]
    broken.write_bytes(broken.read_bytes()[:500])  # truncated JPEG
    missing = cohort.patients[1]
    shutil.rmtree(missing.image_paths[0].parent)
    runner = CliRunner()

    refused = runner.invoke(app, ["explore", str(data), "--out", str(tmp_path / "x")])
    assert refused.exit_code == 2 and "fix:" in refused.stderr

    result = runner.invoke(app, ["explore", str(data), "--out", str(tmp_path / "out"),
                                 "--on-error", "skip"])
    assert result.exit_code == 0, result.output
    assert "lymphocyte count" in result.stdout and str(tmp_path / "out") in result.stdout
    assert missing.id in result.stderr
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert skipped["skipped_patients"] == [missing.id]
    assert {i["file"] for i in skipped["issues"]} >= {str(broken)}
    assert "Example: lymphomil explore" in runner.invoke(app, ["explore", "--help"]).stdout


def test_explore_command_rejects_a_bad_reference_date(synthetic_root: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["explore", str(synthetic_root), "--out", str(tmp_path),
                                      "--reference-date", "01/01/2024"])
    assert result.exit_code == 2 and "YYYY-MM-DD" in result.stderr


@pytest.mark.shared_data
def test_real_cohort_matches_the_report(shared_data: Path, tmp_path: Path) -> None:
    # (its speed is benchmarks/startup.py's to measure: a timed assertion fails on a busy machine)
    cohort = load_cohort(shared_data)
    result = explore(cohort, tmp_path)
    count = {r["label"]: r for r in result["attributes_by_label"]
             if r["attribute"] == "lymphocyte count"}
    assert (count[0]["count"], count[1]["count"]) == (40, 90)
    assert count[0]["min"] == pytest.approx(4.01) and count[0]["max"] == pytest.approx(7.68)


def test_the_cohort_table_has_one_row_per_patient(synthetic_root: Path) -> None:
    cohort = load_cohort(synthetic_root)
    table = cohort_table(cohort)
    assert list(table.columns) == ["ID", "label", "gender", "dob", "age", "lymph_count",
                                   "n_images", "split"]
    assert table["ID"].tolist() == [p.id for p in cohort.patients]
    assert table["n_images"].tolist() == [p.n_images for p in cohort.patients]
