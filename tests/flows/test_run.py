"""`lymphomil run` end to end on the synthetic cohort: outputs, repeatability, warm cache."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lymphomil.cli import app
from lymphomil.data.cohort import load_cohort
from tests.conftest import seed_features

runner = CliRunner()
FAST = "tree,image-logreg-thin,fusion-mean"


@pytest.fixture(scope="module")
def first_run(synthetic_root: Path, synthetic_features: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run with the session's features in its cache (extraction is tested elsewhere) and an
    empty CV cache."""
    base = tmp_path_factory.mktemp("run")
    cache = seed_features(synthetic_features, base / "cache")
    out = base / "run1"
    result = runner.invoke(app, ["run", str(synthetic_root), "--out", str(out), "--candidates",
                                 FAST, "--folds", "3", "--repeats", "2", "--cache-dir",
                                 str(cache)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, cache


def test_run_folder_holds_every_output(first_run, synthetic_root: Path) -> None:
    out, _ = first_run
    for name in ("report.html", "submission.csv", "predictions.csv", "metrics.json",
                 "config.toml", "model/model.json", "model/metadata.json", "cv/metrics.json",
                 "explore/attributes_by_label.md", "checksums.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["chosen_model"] in FAST.split(",")
    assert set(metrics["candidates"]) == set(FAST.split(","))
    cohort = load_cohort(synthetic_root)
    rows = list(csv.DictReader(open(out / "submission.csv")))
    assert [r["Id"] for r in rows] == [p.id for p in cohort.unlabelled]
    # nothing lost: every patient is predicted, used for training, or listed as skipped
    assert metrics["n_predicted"] + metrics["n_labelled"] + metrics["n_skipped_patients"] == \
        len(cohort.patients) + len(cohort.skipped_ids)


def test_rerun_from_saved_config_gives_identical_outputs(first_run, tmp_path: Path) -> None:
    out, cache = first_run
    again = tmp_path / "run2"
    result = runner.invoke(app, ["run", "--config", str(out / "config.toml"), "--out", str(again),
                                 "--cache-dir", str(cache)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for name in ("submission.csv", "predictions.csv", "cv/oof_tree.csv", "cv/metrics.json",
                 "model/model.json", "model/metadata.json", "explore/hist_age.png"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    assert list((cache / "run").glob("fit-*")) and list((cache / "run").glob("explore-*"))


@pytest.mark.slow  # by default: two cold runs in one process compared byte for byte in
# tests/runtime/test_ray_local.py::test_cli_run_on_ray_matches_local, a warm rerun above
def test_rerun_without_the_cv_cache_gives_identical_numbers(first_run, synthetic_root: Path,
                                                            synthetic_features: Path,
                                                            tmp_path: Path) -> None:
    """Every fit again (an empty CV cache; the same features, copied in)."""
    out, _ = first_run
    fresh = tmp_path / "run3"
    cache = seed_features(synthetic_features, tmp_path / "fresh-cache")
    result = runner.invoke(app, ["run", str(synthetic_root), "--out", str(fresh), "--candidates",
                                 FAST, "--folds", "3", "--repeats", "2", "--cache-dir",
                                 str(cache)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for name in ("predictions.csv", "cv/oof_image-logreg-thin.csv", "cv/oof_fusion-mean.csv"):
        assert (fresh / name).read_bytes() == (out / name).read_bytes(), name


def test_run_refuses_to_overwrite_a_foreign_folder(synthetic_root: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("precious")
    result = runner.invoke(app, ["run", str(synthetic_root), "--out", str(foreign)])
    assert result.exit_code == 2 and "was not written by lymphomil" in result.output
    assert (foreign / "thesis.docx").read_text() == "precious"


def test_demo_report_says_synthetic(first_run) -> None:
    """The synthetic cohort's report carries the banner and links its CSV files."""
    out, _ = first_run
    html = (out / "report.html").read_text()
    assert 'id="synthetic-banner"' in html
    assert 'href="predictions.csv"' in html and 'href="cv/oof_' in html


def test_galleries_are_ranked_by_a_cell_classifier(first_run) -> None:
    """The chosen model's image side scores whole bags, so a cell-topk ranks the cells; the
    report says so and states the units."""
    from lymphomil.models.cells import CellTopKModel

    out, _ = first_run
    html = (out / "report.html").read_text()
    assert "ranked by cell-topk" in html
    assert CellTopKModel.instance_score_units in html


def test_nested_selection_is_reported_but_never_chosen(synthetic_root: Path,
                                                       synthetic_features: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "run"
    cache = seed_features(synthetic_features, tmp_path / "cache")  # the report's cell scorer's
    result = runner.invoke(app, ["run", str(synthetic_root), "--out", str(out), "--candidates",
                                 "tree,logreg-compact", "--folds", "3", "--repeats", "1",
                                 "--nested-selection", "--cache-dir", str(cache)],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["chosen_model"] in ("tree", "logreg-compact")
    assert set(metrics["candidates"]) == {"tree", "logreg-compact"}
    assert 0.0 <= metrics["nested_selection"]["balanced_accuracy"]["mean"] <= 1.0
    assert "Honest figure of the choice itself" in (out / "report.html").read_text()
