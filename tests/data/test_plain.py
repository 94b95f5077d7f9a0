"""A lab's own export (the plain layout, issue 30 item 4): one CSV and one image folder per
patient, read with the challenge layout's checks and messages."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from lymphomil.cli import app
from lymphomil.data.cohort import load_cohort
from lymphomil.runtime.errors import LymphomilError

runner = CliRunner()
COLUMNS = "id=Patient,gender=Sex,dob=Birth,count=Lymphocytes,label=Diagnosis"


def challenge_rows(root: Path) -> list[dict]:
    return list(csv.DictReader(open(root / "clinical_annotation.csv", encoding="utf-8")))


def write_plain(root: Path, out: Path, kinds: tuple[str, ...] = ("PNG", "TIFF")) -> Path:
    """The challenge-layout cohort ``root`` as a lab would export it: renamed columns, lower-case
    genders, no index column, an empty label for the patients to predict, a comment column,
    folders named in lower case, the cells as lossless PNG and TIFF files."""
    (out / "cells").mkdir(parents=True)
    with open(out / "patients.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Patient", "Sex", "Birth", "Lymphocytes", "Diagnosis", "Note"])
        for row in challenge_rows(root):
            label = "" if row["LABEL"] == "-1" else row["LABEL"]
            writer.writerow([row["ID"], row["GENDER"].lower(), row["DOB"], row["LYMPH_COUNT"],
                             label, ""])
            split = "testset" if row["LABEL"] == "-1" else "trainset"
            folder = out / "cells" / row["ID"].lower()
            folder.mkdir()
            for i, path in enumerate(sorted((root / split / row["ID"]).glob("*.jpg"))):
                kind = kinds[i % len(kinds)]
                Image.open(path).save(folder / f"cell-{i}.{'png' if kind == 'PNG' else 'tif'}",
                                      kind)
    return out / "patients.csv"


def predictions(path: Path) -> list[dict]:
    return sorted(csv.DictReader(open(path)), key=lambda r: r["ID"])


def test_a_plain_layout_cohort_predicts_as_the_challenge_layout(
        image_model_dir: Path, small_image_root: Path, tmp_path: Path) -> None:
    """The same patients, the same pixels, another layout: the same predictions (an image
    model, so every cell counts)."""
    lab_csv = write_plain(small_image_root, tmp_path / "lab")
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    result = runner.invoke(app, ["predict", str(image_model_dir), str(small_image_root),
                                 "--all", "--out", str(a), *cache])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["predict", str(image_model_dir), str(lab_csv), "--images",
                                 str(lab_csv.parent / "cells"), "--columns", COLUMNS, "--all",
                                 "--out", str(b), *cache])
    assert result.exit_code == 0, result.output
    assert predictions(a) == predictions(b) and len(predictions(a)) == 12
    # the same mapping from a TOML file, which also names the image folder
    (lab_csv.parent / "columns.toml").write_text(
        'images = "cells"\n[columns]\n' + "\n".join(
            f'{k} = "{v}"' for k, v in (p.split("=") for p in COLUMNS.split(","))) + "\n")
    result = runner.invoke(app, ["predict", str(image_model_dir), str(lab_csv), "--columns",
                                 str(lab_csv.parent / "columns.toml"), "--out", str(c), *cache])
    assert result.exit_code == 0, result.output
    unlabelled = [r for r in predictions(a) if r["ID"] in {r["ID"] for r in predictions(c)}]
    assert predictions(c) == unlabelled and 0 < len(unlabelled) < 12  # empty label = to predict


def _lab(tmp_path: Path, header: str, rows: list[str], folders=("P1", "P2")) -> Path:
    root = tmp_path / "lab"
    root.mkdir()
    (root / "patients.csv").write_text("\n".join([header, *rows]) + "\n")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 160)).save(buffer, "PNG")
    for name in folders:
        (root / name).mkdir()
        (root / name / "a.png").write_bytes(buffer.getvalue())
    return root / "patients.csv"


def test_defaults_age_column_and_empty_label(tmp_path: Path) -> None:
    """Default names (the challenge's, and AGE for a lab that exports ages); an empty label is a
    patient to predict; images beside the CSV by default."""
    path = _lab(tmp_path, "ID,GENDER,AGE,LYMPH_COUNT,LABEL", ["P1,f,72.5,5.1,1", "P2,M,40,4,"])
    cohort = load_cohort(path)
    assert [(p.id, p.gender, p.age, p.dob, p.label, p.split) for p in cohort.patients] == [
        ("P1", "F", 72.5, None, 1, "train"), ("P2", "M", 40.0, None, -1, "test")]


def test_missing_columns_name_what_was_found_and_how_to_map(tmp_path: Path) -> None:
    from lymphomil.data.plain import plain_layout

    path = _lab(tmp_path, "Patient,Sex,Age,Lymphocytes", ["P1,F,70,5"], folders=("P1",))
    with pytest.raises(LymphomilError) as caught:
        load_cohort(path)
    assert "missing column(s) ID, GENDER, LYMPH_COUNT" in caught.value.problem
    assert "'Patient', 'Sex'" in caught.value.problem and "--columns" in caught.value.fix
    cohort = load_cohort(plain_layout(path, columns="id=Patient,gender=Sex,count=Lymphocytes,"
                                                    "age=Age"))
    assert [p.id for p in cohort.patients] == ["P1"]


@pytest.mark.parametrize("spec, words", [
    ("id=Patient,gendr=Sex", "'gendr' is not a column lymphomil reads (did you mean 'gender'?)"),
    ("id", "'id' is not FIELD=NAME"),
    ("id=Patient,id=Other", "id is named twice"),
    ("id=", "the column name for id is empty"),
])
def test_column_options_are_checked(spec: str, words: str) -> None:
    from lymphomil.data.plain import read_columns

    with pytest.raises(LymphomilError) as caught:
        read_columns(spec)
    assert words in caught.value.problem


def test_folder_matching(tmp_path: Path) -> None:
    """The FOLDER column, else the ID, else the ID in another case; never outside the folder."""
    from lymphomil.data.plain import match_folder

    folders = {name: tmp_path / name for name in ("P1", "p2", "x-3", "Q4", "q4")}
    assert match_folder(folders, tmp_path, "P1", None)[0] == tmp_path / "P1"
    assert match_folder(folders, tmp_path, "P2", None)[0] == tmp_path / "p2"  # another case
    assert match_folder(folders, tmp_path, "P3", "x-3")[0] == tmp_path / "x-3"  # FOLDER column
    assert match_folder(folders, tmp_path, "Q4", None)[0] == tmp_path / "Q4"  # exact name first
    for bad in ("../P1", "/etc", ".."):
        folder, why = match_folder(folders, tmp_path, "P9", bad)
        assert folder is None and "not a folder name" in why
    folder, why = match_folder(folders, tmp_path, "P9", "p9")
    assert folder is None and "no image folder 'p9'" in why
    folder, why = match_folder(folders, tmp_path, "P9", None)
    assert folder is None and "no image folder for patient P9" in why


def test_an_id_in_two_cases_is_never_a_guess(tmp_path: Path) -> None:
    from lymphomil.data.plain import match_folder

    folder, why = match_folder({"ab": tmp_path, "AB": tmp_path}, tmp_path, "Ab", None)
    assert folder is None and "2 named like it in other cases (AB, ab)" in why


def test_file_kinds_of_a_lab_export(tmp_path: Path) -> None:
    """.png/.tif/.jpg read; a PNG named .tif and a .bmp are listed with their reason."""
    path = _lab(tmp_path, "ID,GENDER,AGE,LYMPH_COUNT", ["P1,F,70,5", "P2,M,60,6"])
    png = (path.parent / "P1" / "a.png").read_bytes()
    (path.parent / "P1" / "b.tif").write_bytes(png)
    (path.parent / "P1" / "c.bmp").write_bytes(b"BM")
    cohort = load_cohort(path, on_error="skip")
    assert [p.n_images for p in cohort.patients] == [1, 1]
    problems = sorted(i.problem for i in cohort.issues)
    assert problems == ["image is a PNG file despite its name",
                        "not a .jpg, .jpeg, .png, .tif, .tiff file ('c.bmp')"]


def test_images_and_columns_need_a_csv(tmp_path: Path) -> None:
    from lymphomil.data.plain import data_source

    with pytest.raises(LymphomilError, match="DATA is not a CSV file"):
        data_source(tmp_path, images=tmp_path)
    assert data_source(tmp_path) == tmp_path


def test_run_reads_a_plain_layout(synthetic_root: Path, tmp_path: Path) -> None:
    """`run` on a lab's export: trained on its labelled patients, its unlabelled ones predicted,
    and the mapping saved in config.toml so the run repeats."""
    lab_csv = write_plain(synthetic_root, tmp_path / "lab", kinds=("PNG",))
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(lab_csv), "--images", str(lab_csv.parent / "cells"),
                                 "--columns", COLUMNS, "--candidates", "logreg-compact",
                                 "--folds", "2", "--repeats", "1", "--out", str(out),
                                 "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    config = (out / "config.toml").read_text()
    assert 'columns = {"id" = "Patient"' in config and "images = " in config
    unlabelled = {r["ID"] for r in challenge_rows(synthetic_root) if r["LABEL"] == "-1"}
    assert {r["ID"] for r in csv.DictReader(open(out / "predictions.csv"))} == unlabelled


@pytest.mark.parametrize("command", ["predict", "explore"])
def test_nothing_is_written_into_a_lab_export(image_model_dir: Path, tmp_path: Path,
                                              command: str) -> None:
    """The CSV's folder is the lab's export: no output goes there (as none goes into a
    challenge folder), whatever the command and wherever the images lie."""
    path = _lab(tmp_path, "ID,GENDER,AGE,LYMPH_COUNT", ["P1,F,70,5", "P2,M,60,6"])
    cells = tmp_path / "cells"  # the images elsewhere: the CSV's folder is still the export
    cells.mkdir()
    for name in ("P1", "P2"):
        shutil.move(str(path.parent / name), str(cells / name))
    before = sorted(p.name for p in path.parent.iterdir())
    argv = (["predict", str(image_model_dir), str(path), "--images", str(cells), "--all",
             "--out", str(path.parent / "pred.csv")] if command == "predict"
            else ["explore", str(path), "--out", str(path.parent / "explore")])
    result = runner.invoke(app, argv)
    assert result.exit_code == 2 and "lies inside the folder of the data file" in result.output
    assert sorted(p.name for p in path.parent.iterdir()) == before
