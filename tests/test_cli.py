"""The commands end to end on the synthetic cohort: cv → train → predict, and clean errors."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lymphomil.cli import app
from lymphomil.data.cohort import load_cohort
from tests.conftest import seed_features

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
    card = json.loads((model_dir / "model_card.json").read_text())  # `train` writes its card
    assert card["model"]["name"] == "logreg" and card["cross_validation"] is None
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


def test_unknown_model_points_at_the_list(synthetic_root: Path) -> None:
    result = runner.invoke(app, ["cv", str(synthetic_root), "-m", "nope"])
    assert result.exit_code == 2 and "`lymphomil models` lists" in result.output


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


def test_predict_new_patients_only_with_a_report(synthetic_root: Path, synthetic_features: Path,
                                                 tmp_path: Path) -> None:
    """New patients arrive as a folder with testset/ only; predict writes their galleries."""
    import shutil

    cache = seed_features(synthetic_features, tmp_path / "cache")
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


# --------------------------------------------------------------------------- help that tells


def _commands(command, path=()):
    """(path, click command) of every leaf command of the app, groups walked recursively."""
    if hasattr(command, "commands"):
        for name, sub in sorted(command.commands.items()):
            yield from _commands(sub, path + (name,))
    else:
        yield path, command


def _option_row(help_text: str, option: str) -> str | None:
    """The row of ``option`` in the Rich options panel (``│ [*] --name ...``), or None."""
    for line in help_text.splitlines():
        cells = line.strip("│ \t").lstrip("* ").split()
        if cells and cells[0] == option:
            return line
    return None


def test_every_option_shows_its_choices_or_its_default() -> None:
    """Walk the whole Typer app: each option's --help row names its choices (a|b) or its
    default (or says it is required); flags take no value and show none."""
    import typer.main

    root = typer.main.get_command(app)
    checked = 0
    for path, command in _commands(root):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "400"})
        assert result.exit_code == 0, result.output
        for param in command.params:
            if param.param_type_name != "option":
                continue
            name = next(o for o in param.opts if o.startswith("--"))
            row = _option_row(result.output, name)
            assert row is not None, f"{' '.join(path)} {name}: no row in --help"
            if param.is_flag:
                assert "<bool>" not in row, f"{' '.join(path)} {name}: a flag shows <bool>"
                continue
            shows = "[default:" in row or "[required]" in row or re.search(r"<\w+(\|\w+)+>", row)
            assert shows, f"{' '.join(path)} {name} shows neither choices nor default: {row}"
            checked += 1
    assert checked > 40  # every command's options were looked at, not none by accident


def test_help_names_the_choices_and_the_ray_extra() -> None:
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "400"})
    assert "<raise|skip>" in _option_row(result.output, "--on-error")
    engine = _option_row(result.output, "--engine")
    assert "<local|ray>" in engine and 'pip install "lymphomil[ray]"' in engine
    for option, default in (("--folds", "5"), ("--repeats", "5"), ("--seed", "0"),
                            ("--threads", "1"), ("--reference-date", "2024-01-01")):
        assert f"[default: ({default})]" in _option_row(result.output, option), option
    assert "<bool>" not in runner.invoke(app, ["predict", "--help"]).output


def test_choices_are_enforced() -> None:
    result = runner.invoke(app, ["cv", "data", "--on-error", "ignore"])
    assert result.exit_code == 2 and "raise" in result.output and "skip" in result.output


# --------------------------------------------------------------------------- progress in logs


def test_progress_outside_a_terminal_is_periodic_lines(tmp_path: Path) -> None:
    """CliRunner's stderr is not a terminal: synth reports count, rate and the end in lines."""
    result = runner.invoke(app, ["synth", str(tmp_path / "c"), "--patients", "10",
                                 "--min-images", "2", "--max-images", "3"],
                           env={"LYMPHOMIL_PROGRESS": ""})
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("synth: ")]
    assert lines, result.output
    assert re.fullmatch(r"synth: 10/10 patients \(100 %\), [\d.,]+ patients/(s|min), done in .+",
                        lines[-1]), lines[-1]
    assert "0/?" not in result.output


def test_line_progress_every_tenth_or_every_interval() -> None:
    from rich.console import Console

    from lymphomil.commands.progress import LineProgress

    now = [0.0]
    console = Console(file=io.StringIO(), width=200)
    lines = LineProgress("features x", 1000, "images", console, interval=30,
                         clock=lambda: now[0])
    for _ in range(250):  # 250 images in 25 s: 10 % and 20 % reached, 30 s not
        now[0] += 0.1
        lines.advance(1)
    assert [line.split(" (")[0] for line in lines.lines] == ["features x: 100/1,000 images",
                                                             "features x: 200/1,000 images"]
    assert lines.lines[0] == "features x: 100/1,000 images (10 %), 10.0 images/s, 1 min 30 s left"
    now[0] += 31  # a stall: the next image prints a line although no new tenth was reached
    lines.advance(1)
    assert lines.lines[-1].startswith("features x: 251/1,000 images (25 %)")
    lines.advance(749)
    lines.close()
    assert lines.lines[-1].startswith("features x: 1,000/1,000 images (100 %)")
    assert "done in" in lines.lines[-1]
    assert "models.py" not in console.file.getvalue()


def test_log_lines_carry_no_source_location(tmp_path: Path) -> None:
    import logging

    from lymphomil.commands.app import setup_logging
    from lymphomil.commands.progress import ERR_CONSOLE, StageReporter

    setup_logging(logging.WARNING)  # through the CLI's own stderr console
    with ERR_CONSOLE.capture() as captured:  # captures without re-pointing the console
        logging.getLogger("lymphomil.models").warning("too few patients")
        StageReporter().stage("features")
    text = captured.get()
    assert "too few patients" in text and "stage: features" in text
    assert not re.search(r"\w+\.py:\d+", text), text


def test_cv_select_adds_the_nested_selection_row(synthetic_root: Path, tmp_path: Path) -> None:
    result = invoke("cv", synthetic_root, "-m", "tree", "--select", "tree,logreg-compact",
                    "--folds", "3", "--repeats", "1", "--json", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {"tree", "select:tree,logreg-compact"}
    assert payload["select:tree,logreg-compact"]["params"]["candidates"]


def test_cv_select_with_an_unknown_candidate_is_a_clear_error(synthetic_root: Path) -> None:
    result = runner.invoke(app, ["cv", str(synthetic_root), "--select", "tree,nonsense"])
    assert result.exit_code == 2
    assert "nonsense" in result.output and "--select" in result.output
