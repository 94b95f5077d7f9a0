"""The commands end to end on the synthetic cohort: cv → train → predict, and clean errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lymphomil.cli import app
from lymphomil.data.cohort import load_cohort

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_cv_json_reports_every_metric(synthetic_root: Path, tmp_path: Path) -> None:
    result = invoke("cv", synthetic_root, "-m", "tree", "--folds", "3", "--repeats", "2",
                    "--json", "--out", tmp_path / "cv", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    summary = payload["tree"]["summary"]
    for metric in ("balanced_accuracy", "accuracy", "f1", "roc_auc", "hard_balanced_accuracy"):
        assert {"mean", "std", "ci_low", "ci_high"} <= set(summary[metric])
    rows = list(csv.DictReader(open(tmp_path / "cv" / "oof_tree.csv")))
    labelled = len(load_cohort(synthetic_root).labelled)
    assert len(rows) == 2 * labelled
    assert (tmp_path / "cv" / "results.md").is_file()


def test_train_then_predict_round_trip(synthetic_root: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    result = invoke("train", synthetic_root, "--model", "logreg", "--out", model_dir,
                    "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert (model_dir / "metadata.json").is_file() and (model_dir / "checksums.json").is_file()
    out = tmp_path / "pred.csv"
    result = invoke("predict", model_dir, synthetic_root, "--out", out,
                    "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out)))
    unlabelled = [p.id for p in load_cohort(synthetic_root).unlabelled]
    assert [r["ID"] for r in rows] == unlabelled
    assert all(r["LABEL"] in ("0", "1") and 0 <= float(r["PROBA"]) <= 1 for r in rows)
    kaggle = tmp_path / "kaggle.csv"
    assert invoke("predict", model_dir, synthetic_root, "--out", kaggle, "--kaggle",
                  "--cache-dir", tmp_path / "cache").exit_code == 0
    assert kaggle.read_text().splitlines()[0] == "Id,Predicted"
    # the same model on the same data gives the same bytes
    again = tmp_path / "pred2.csv"
    invoke("predict", model_dir, synthetic_root, "--out", again, "--cache-dir", tmp_path / "cache")
    assert again.read_bytes() == out.read_bytes()


def test_bad_input_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    result = runner.invoke(app, ["cv", str(tmp_path / "missing"), "-m", "logreg"])
    assert result.exit_code == 2
    assert "data folder not found" in result.output and "fix:" in result.output
    assert "Traceback" not in result.output


def test_unknown_model_names_the_choices(synthetic_root: Path) -> None:
    result = runner.invoke(app, ["cv", str(synthetic_root), "-m", "nope"])
    assert result.exit_code == 2 and "choose one of" in result.output


def test_predict_refuses_a_damaged_model(synthetic_root: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    invoke("train", synthetic_root, "--model", "tree", "--out", model_dir)
    (model_dir / "arrays.safetensors").write_bytes(b"garbage")
    result = runner.invoke(app, ["predict", str(model_dir), str(synthetic_root), "--out",
                                 str(tmp_path / "p.csv")])
    assert result.exit_code == 2 and "checksum" in result.output
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("command", ["synth", "explore", "features", "cv", "train", "predict",
                                     "run", "models"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Example" in result.output


def test_predict_new_patients_only_with_a_report(synthetic_root: Path, tmp_path: Path) -> None:
    """New patients arrive as a folder with testset/ only; predict writes their galleries."""
    import shutil

    cache = tmp_path / "cache"
    model_dir = tmp_path / "model"
    assert invoke("train", synthetic_root, "--model", "fusion-mean", "--out", model_dir,
                  "--cache-dir", cache).exit_code == 0
    new = tmp_path / "new"
    shutil.copytree(synthetic_root / "testset", new / "testset")
    ids = [p.id for p in load_cohort(new).patients]
    report = tmp_path / "new-report.html"
    result = invoke("predict", model_dir, new, "--out", tmp_path / "new.csv", "--report", report,
                    "--cache-dir", cache)
    assert result.exit_code == 0, result.output
    html = report.read_text()
    assert all(f'id="patient-{pid}"' in html for pid in ids)
    assert html.count("data:image/jpeg;base64") >= len(ids)
