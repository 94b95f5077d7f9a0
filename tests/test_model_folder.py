"""One model-folder format (issue 23 item 1): what ``PatientModel.save`` writes is what
``lymphomil predict``, ``load_model`` and ``lymphomil run`` read, whichever side wrote it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

import lymphomil
from lymphomil.cli import app
from tests.conftest import seed_features

MODEL = "image-logreg-thin"  # an image model: the folder must also name its features


def _predict_cli(model_dir: Path, data: Path, out: Path, cache: Path) -> dict[str, str]:
    result = CliRunner().invoke(app, ["predict", str(model_dir), str(data), "--out", str(out),
                                      "--cache-dir", str(cache)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return {row["ID"]: row["PROBA"] for row in csv.DictReader(open(out))}


def test_a_python_model_predicts_from_the_shell_and_a_shell_model_loads_in_python(
        synthetic_root: Path, synthetic_features: Path, tmp_path: Path) -> None:
    cache = seed_features(synthetic_features, tmp_path / "cache")
    cohort = lymphomil.load_cohort(synthetic_root)
    test = lymphomil.with_features(cohort.unlabelled, MODEL, cache_dir=cache)

    # trained and saved in Python, used by `lymphomil predict`
    model = lymphomil.create_model(MODEL)
    train = lymphomil.with_features(cohort.labelled, model, cache_dir=cache)
    model.fit(train, lymphomil.labels_of(train))
    model.save(tmp_path / "py-model")
    p_python = model.predict_proba(test)[:, 1]
    shell = _predict_cli(tmp_path / "py-model", synthetic_root, tmp_path / "a.csv", cache)
    assert shell == {p.id: f"{v:.6f}" for p, v in zip(test, p_python)}

    # trained by `lymphomil train`, used by load_model: the same probabilities as `predict`
    result = CliRunner().invoke(app, ["train", str(synthetic_root), "--model", MODEL,
                                      "--out", str(tmp_path / "cli-model"),
                                      "--cache-dir", str(cache)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    loaded = lymphomil.load_model(tmp_path / "cli-model")
    p_loaded = loaded.predict_proba(test)[:, 1]
    shell = _predict_cli(tmp_path / "cli-model", synthetic_root, tmp_path / "b.csv", cache)
    assert shell == {p.id: f"{v:.6f}" for p, v in zip(test, p_loaded)}
    assert len(p_loaded) == len(p_python) and np.isfinite(p_loaded).all()
