"""The synthetic cohort: reproducible bytes, the real CSV's quirks, Table-1 distributions, and
images whose signal depends on the label but not on the count."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import lymphomil.commands.data  # noqa: F401  registers synth/explore on the app
from lymphomil.commands.app import app
from lymphomil.data import synth
from lymphomil.data.cohort import DEFAULT_REFERENCE_DATE, load_cohort
from lymphomil.data.synth import MARKER, draw_patients, write_synthetic_cohort
from lymphomil.data.validate import age_at, parse_dob
from lymphomil.runtime.errors import LymphomilError


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def small(out: Path, seed: int = 0, **kwargs) -> Path:
    options = {"n_patients": 10, "images_per_patient": (2, 4)} | kwargs
    return write_synthetic_cohort(out, seed=seed, **options)


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    first, second = tree_digest(small(tmp_path / "a")), tree_digest(small(tmp_path / "b"))
    assert first == second
    assert sum(name.endswith(".jpg") for name in first) >= 20


def test_another_seed_gives_another_cohort(tmp_path: Path) -> None:
    first, other = tree_digest(small(tmp_path / "a")), tree_digest(small(tmp_path / "b", seed=1))
    assert first["clinical_annotation.csv"] != other["clinical_annotation.csv"]
    shared = set(first) & set(other)
    assert not any(first[n] == other[n] for n in shared if n.endswith(".jpg"))


def test_loads_cleanly_in_the_challenge_layout(synthetic_root: Path) -> None:
    cohort = load_cohort(synthetic_root)
    assert cohort.issues == [] and cohort.ignored_folders == []
    assert len(cohort.patients) == 24
    assert all(16 <= p.n_images <= 24 for p in cohort.patients)
    assert [p.name for p in cohort.patients[0].image_paths[:2]] == ["000000.jpg", "000001.jpg"]
    unlabelled = cohort.unlabelled
    assert len(unlabelled) == 6 and all(p.split == "test" for p in unlabelled)
    assert all(p.split == "train" for p in cohort.labelled)
    with Image.open(cohort.patients[0].image_paths[0]) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (224, 224))


def test_csv_files_reproduce_the_real_quirks(synthetic_root: Path) -> None:
    header = (synthetic_root / "clinical_annotation.csv").read_text().splitlines()[0]
    assert header == ",ID,LABEL,GENDER,DOB,LYMPH_COUNT"
    everyone = read_rows(synthetic_root / "clinical_annotation.csv")
    train = read_rows(synthetic_root / "trainset/trainset_true.csv")
    test = read_rows(synthetic_root / "testset/testset_data.csv")
    assert [r[""] for r in everyone] == [str(i) for i in range(24)]
    assert {r["ID"] for r in train} | {r["ID"] for r in test} == {r["ID"] for r in everyone}
    assert {r["LABEL"] for r in test} == {"-1"} and {r["LABEL"] for r in train} == {"0", "1"}
    for row in train:
        assert (synthetic_root / "trainset" / row["ID"]).is_dir()
    dobs = [r["DOB"] for r in everyone]
    assert any("/" in d for d in dobs) and any("-" in d for d in dobs)
    assert any(d.split("/")[0] != d.split("/")[0].zfill(2) for d in dobs if "/" in d)  # 1/…
    assert any(r["GENDER"] in ("f", "m") for r in everyone)
    assert all(len(r["LYMPH_COUNT"].split(".")[1]) in (1, 2) for r in everyone)


@pytest.mark.parametrize("seed", range(5))
def test_quirks_show_up_in_a_cohort_of_forty(seed: int) -> None:
    patients = draw_patients(40, seed, 0.25, (16, 48))
    assert {"/", "-"} <= {"/" if "/" in p.dob else "-" for p in patients}
    assert any(p.gender in ("f", "m") for p in patients)
    assert {p.gender.upper() for p in patients} == {"F", "M"}


@pytest.mark.parametrize("n", [8, 9, 12, 15])
def test_small_cohorts_have_two_of_each_label(n: int) -> None:
    for seed in range(10):
        labelled = [p.label for p in draw_patients(n, seed, 0.25, (16, 48)) if p.labelled]
        assert labelled.count(0) >= 2 and labelled.count(1) >= 2


def test_attributes_follow_table_one() -> None:
    patients = draw_patients(2000, 3, 0.25, (16, 48))
    labelled = [p for p in patients if p.labelled]
    assert sum(not p.labelled for p in patients) == 500
    assert sum(p.label == 0 for p in labelled) / len(labelled) == pytest.approx(0.3, abs=0.01)
    counts = {label: np.array([float(p.count) for p in patients if p.label == label])
              for label in (0, 1)}
    assert counts[0].min() >= 4.0 and counts[0].max() <= 7.7
    assert np.median(counts[1]) == pytest.approx(12.4, abs=1.5)
    assert counts[1].min() >= 2.3 and counts[1].max() <= 300
    hard = np.mean((counts[1] >= 4.0) & (counts[1] <= 7.7))
    assert 0.2 <= hard <= 0.32  # the patients the images must help with
    ages = ages_by_label(patients)
    assert ages[0].mean() == pytest.approx(58, abs=2.5)
    assert ages[1].mean() == pytest.approx(79, abs=1.5)


def ages_by_label(patients: list[synth.SynthPatient]) -> dict[int, np.ndarray]:
    return {label: np.array([age_at(parse_dob(p.dob), DEFAULT_REFERENCE_DATE)
                             for p in patients if p.label == label]) for label in (0, 1)}


def test_atypical_share_is_independent_of_the_count() -> None:
    malignant = [p for p in draw_patients(3000, 4, 0.25, (16, 48)) if p.label == 1]
    share = np.array([p.atypical_share for p in malignant])
    log_count = np.log([float(p.count) for p in malignant])
    assert abs(np.corrcoef(share, log_count)[0, 1]) < 0.08
    assert share.min() >= 0.25 and share.max() <= 0.70


def dark_fraction(path: Path) -> float:
    """Share of nucleus-dark pixels: atypical nuclei are larger and darker."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return float(np.mean(pixels[..., 1] < 100))


def test_images_carry_the_label(synthetic_root: Path) -> None:
    cohort = load_cohort(synthetic_root)
    by_label: dict[int, list[float]] = {0: [], 1: []}
    for patient in cohort.labelled:
        by_label[patient.label].append(np.mean([dark_fraction(p) for p in patient.image_paths[:8]]))
    reactive, malignant = np.mean(by_label[0]), np.mean(by_label[1])
    assert malignant > 1.1 * reactive
    assert max(by_label[0]) < max(by_label[1])


def test_refuses_to_overwrite_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(LymphomilError, match="was not written by lymphomil") as caught:
        small(tmp_path)
    assert caught.value.fix
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_replaces_an_earlier_synthetic_cohort(tmp_path: Path) -> None:
    out = small(tmp_path / "cohort", seed=0)
    assert (out / MARKER).is_file()
    small(out, seed=1, n_patients=9)
    assert len(load_cohort(out).patients) == 9


def test_progress_is_reported_per_patient(tmp_path: Path) -> None:
    calls: list[int] = []
    small(tmp_path / "cohort", n_patients=9, on_progress=calls.append)
    assert calls == [1] * 9


def test_a_failed_run_leaves_nothing_that_looks_complete(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    calls = iter(range(100))

    def failing(patient, seed_sequence):
        if next(calls) == 3:
            raise RuntimeError("killed")
        return [synth.encode_jpeg(np.zeros((3, 8, 8), np.uint8))]

    monkeypatch.setattr(synth, "patient_images", failing)
    with pytest.raises(RuntimeError):
        small(tmp_path / "cohort")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs", [{"n_patients": 0}, {"test_fraction": 1.0},
                                    {"images_per_patient": (5, 2)}])
def test_bad_parameters_are_user_errors(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(LymphomilError):
        small(tmp_path / "cohort", **kwargs)


def test_synth_command(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["synth", str(tmp_path / "c"), "--patients", "8", "--seed", "2",
                                 "--min-images", "1", "--max-images", "2"])
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "c") in result.stdout
    assert len(load_cohort(tmp_path / "c").patients) == 8
    help_text = runner.invoke(app, ["synth", "--help"]).stdout
    assert "Example: lymphomil synth" in help_text
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    refused = runner.invoke(app, ["synth", str(tmp_path / "other")])
    assert refused.exit_code == 2
    assert "was not written by lymphomil" in refused.stderr and "fix:" in refused.stderr
