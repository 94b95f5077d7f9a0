"""The OOD checks through the commands: train saves them beside the referral rule, predict refers
a patient whose images were shifted (another stain) with that reason."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from lymphomil.cli import app
from lymphomil.data.cohort import load_cohort
from lymphomil.ood import OOD_JSON, load_ood_checks
from tests.conftest import seed_features

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_a_restained_patient_is_referred_for_its_colour(synthetic_root: Path,
                                                       synthetic_features: Path,
                                                       tmp_path: Path) -> None:
    cache = seed_features(synthetic_features, tmp_path / "cache")
    model_dir = tmp_path / "model"
    result = invoke("train", synthetic_root, "--model", "fusion-mean", "--out", model_dir,
                    "--cache-dir", cache)
    assert result.exit_code == 0, result.output
    assert load_ood_checks(model_dir) is not None and (model_dir / OOD_JSON).is_file()

    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data)
    shifted = next(p for p in load_cohort(data).patients if not p.is_labelled)
    for path in shifted.image_paths:  # another stain: the colour channels swapped
        rgb = np.asarray(Image.open(path).convert("RGB"))
        Image.fromarray(np.ascontiguousarray(rgb[:, :, ::-1])).save(path, quality=95)

    out = tmp_path / "pred.csv"
    result = invoke("predict", model_dir, data, "--out", out, "--cache-dir", cache)
    assert result.exit_code == 0, result.output
    rows = {row["ID"]: row for row in csv.DictReader(open(out, encoding="utf-8"))}
    assert rows[shifted.id]["DECISION"] == "refer"
    assert "stain colour unlike the training cohort" in rows[shifted.id]["REASON"]
    clean_ood = [r for i, r in rows.items() if i != shifted.id and "unlike" in r["REASON"]]
    assert len(clean_ood) <= 1  # the unshifted new patients are (mostly) not flagged
