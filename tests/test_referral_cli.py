"""The referral rule through the commands: train saves it, predict applies it, cv measures it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from typer.testing import CliRunner

from lymphomil.cli import app
from lymphomil.referral import DECISIONS, REFERRAL_JSON, load_rule

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_train_saves_the_rule_and_predict_writes_decisions(synthetic_root: Path,
                                                           tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    result = invoke("train", synthetic_root, "--model", "logreg", "--out", model_dir,
                    "--target-accuracy", "0.9", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    rule = load_rule(model_dir)
    assert rule is not None and rule.target_accuracy == 0.9 and rule.max_referral is None
    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["referral"]["inner_cv"]["referred_fraction"] == rule.inner_referred
    out = tmp_path / "pred.csv"
    result = invoke("predict", model_dir, synthetic_root, "--out", out,
                    "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert list(rows[0]) == ["ID", "LABEL", "PROBA", "DECISION", "REASON"]
    for row in rows:
        assert row["DECISION"] in DECISIONS
        forced = "malignant" if row["LABEL"] == "1" else "reactive"
        assert row["DECISION"] in (forced, "refer")  # an auto-call is the forced call
        assert (row["REASON"] != "") == (row["DECISION"] == "refer")
    kaggle = tmp_path / "kaggle.csv"
    assert invoke("predict", model_dir, synthetic_root, "--out", kaggle, "--kaggle",
                  "--cache-dir", tmp_path / "cache").exit_code == 0
    assert kaggle.read_text().splitlines()[0] == "Id,Predicted"  # still the forced call


def test_an_edited_rule_stops_predict_with_a_message(synthetic_root: Path,
                                                     tmp_path: Path) -> None:
    from lymphomil.outputs import write_checksums

    model_dir = tmp_path / "model"
    assert invoke("train", synthetic_root, "--model", "logreg", "--out", model_dir,
                  "--cache-dir", tmp_path / "cache").exit_code == 0
    data = json.loads((model_dir / REFERRAL_JSON).read_text())
    data["threshold"] = "wide"
    (model_dir / REFERRAL_JSON).write_text(json.dumps(data))
    write_checksums(model_dir)  # checksums prove the bytes, not the sense
    result = runner.invoke(app, ["predict", str(model_dir), str(synthetic_root), "--out",
                                 str(tmp_path / "p.csv"), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code != 0
    assert "referral rule" in result.output and "Traceback" not in result.output


def test_the_two_targets_exclude_each_other(synthetic_root: Path, tmp_path: Path) -> None:
    for command in (["train", str(synthetic_root), "--out", str(tmp_path / "m")],
                    ["run", str(synthetic_root), "--out", str(tmp_path / "r")],
                    ["cv", str(synthetic_root)]):
        result = runner.invoke(app, command + ["--max-referral", "0.2",
                                               "--target-accuracy", "0.97"])
        assert result.exit_code != 0 and "exclude each other" in result.output, command
    result = runner.invoke(app, ["cv", str(synthetic_root), "--max-referral", "2"])
    assert result.exit_code != 0 and "not a fraction" in result.output


def test_cv_reports_risk_coverage_and_the_nested_rule(synthetic_root: Path,
                                                      tmp_path: Path) -> None:
    result = invoke("cv", synthetic_root, "-m", "logreg", "--folds", "3", "--repeats", "2",
                    "--json", "--out", tmp_path / "cv", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["logreg"]
    assert set(entry["risk_coverage"]["balanced_accuracy_at_coverage"]) == {
        "1.00", "0.95", "0.90", "0.85", "0.80", "0.70"}
    assert entry["referral"]["forced_call_unchanged"] is True
    assert 0 <= entry["referral"]["referred"]["mean"] <= 0.2 + 1e-9
    saved = json.loads((tmp_path / "cv" / "metrics.json").read_text())["logreg"]
    assert saved["referral"]["rule"]["max_referral"] == 0.2
    assert "Referral rule, nested" in (tmp_path / "cv" / "results.md").read_text()


def test_cv_no_referral_skips_the_nested_pass(synthetic_root: Path, tmp_path: Path) -> None:
    result = invoke("cv", synthetic_root, "-m", "tree", "--folds", "3", "--repeats", "1",
                    "--json", "--no-referral", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["tree"]
    assert "risk_coverage" in entry and "referral" not in entry
    assert "referral rule, nested" not in result.stderr


def test_run_fits_saves_and_applies_the_rule(synthetic_root: Path, synthetic_features: Path,
                                             tmp_path: Path) -> None:
    from tests.conftest import seed_features

    cache = seed_features(synthetic_features, tmp_path / "cache")
    out = tmp_path / "run"
    result = invoke("run", synthetic_root, "--out", out, "--candidates", "tree", "--folds", "3",
                    "--repeats", "1", "--target-accuracy", "0.9", "--cache-dir", cache)
    assert result.exit_code == 0, result.output
    rule = load_rule(out / "model")
    assert rule is not None and rule.target_accuracy == 0.9
    assert "target_accuracy = 0.9" in (out / "config.toml").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["referral"]["threshold"] == rule.threshold
    assert metrics["referral"]["predicted"]["n"] == metrics["n_predicted"]
    assert set(metrics["risk_coverage"]) == {"tree"}
    card = json.loads((out / "model" / "model_card.json").read_text())
    assert card["referral"]["target"] == rule.target_text()
    rows = list(csv.DictReader(open(out / "predictions.csv", encoding="utf-8")))
    assert sum(r["DECISION"] == "refer" for r in rows) == metrics["referral"]["predicted"]["refer"]
