"""The bad-input matrix of issue 6, each case through the CLI (``lymphomil predict --all``).

For every case: the exit status, the message (file + fix, no traceback), what was written, and
under ``--on-error skip`` that every CSV row is either predicted or listed as skipped.
docs/bad-inputs.md is the table of these cases.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image
from typer.testing import CliRunner

from lymphomil.cli import app

runner = CliRunner()

HEADER = ",ID,LABEL,GENDER,DOB,LYMPH_COUNT"
GOOD_ROWS = ["0,P1,1,M,11/3/1933,11.2", "1,P2,0,F,28-04-1943,4.5", "2,P3,-1,F,1/17/1946,5.76"]


def jpeg_bytes(mode: str = "RGB", size=(224, 224), fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    colour = {"L": 120, "CMYK": (10, 80, 40, 0),
              "RGBA": (200, 120, 160, 128)}.get(mode, (200, 120, 160))
    Image.new(mode, size, colour).save(buffer, fmt)
    return buffer.getvalue()


def write_cohort(root: Path, rows: list[str] | None = None, header: str = HEADER,
                 images: int = 2) -> Path:
    rows = GOOD_ROWS if rows is None else rows
    root.mkdir(parents=True, exist_ok=True)
    (root / "clinical_annotation.csv").write_text("\n".join([header, *rows]) + "\n")
    for pid, label in (("P1", "1"), ("P2", "0"), ("P3", "-1")):
        folder = root / ("testset" if label == "-1" else "trainset") / pid
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(images):
            (folder / f"{i:06d}.jpg").write_bytes(jpeg_bytes())
    return root


@pytest.fixture
def model_dir(logreg_model_dir: Path) -> Path:
    """An attributes-only model (no features needed: predict is fast); trained once a session
    (tests/reliability/conftest.py)."""
    return logreg_model_dir


def predict(model_dir: Path, root: Path, out: Path, *extra: str):
    return runner.invoke(app, ["predict", str(model_dir), str(root), "--out", str(out), "--all",
                               *extra])


def csv_rows(root: Path) -> list[tuple[int, str]]:
    """(line, ID) of every data row of the CSV, as a person counts them (blank lines skipped)."""
    path = root / "clinical_annotation.csv"
    text = path.read_bytes().decode("utf-8-sig")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip().upper() for h in next(reader)]
    rows = []
    for line, record in enumerate(reader, start=2):
        if record and any(c.strip() for c in record):
            rows.append((line, record[header.index("ID")].strip()))
    return rows


def assert_accounted(root: Path, out: Path) -> tuple[list[str], list[dict]]:
    """Every patient in = predicted + listed as skipped (by row and by patient)."""
    predicted = [r["ID"] for r in csv.DictReader(open(out))] if out.exists() else []
    skipped_file = out.with_name(out.stem + ".skipped.json")
    skipped = json.loads(skipped_file.read_text()) if skipped_file.exists() else []
    skipped_rows = {s["row"] for s in skipped if s.get("row")}
    rows = csv_rows(root)
    for line, pid in rows:
        assert pid in predicted or line in skipped_rows, (line, pid, predicted, skipped)
    # patient-level count: distinct IDs in the CSV = predicted + skipped-and-not-predicted
    ids_in = {pid for _, pid in rows}
    skipped_patients = {s["patient_id"] for s in skipped
                        if s.get("row") and s["patient_id"] not in predicted}
    assert len(set(predicted)) == len(predicted)
    assert len(ids_in) == len(predicted) + len(skipped_patients - set(predicted)) or \
        any(not pid for _, pid in rows), (ids_in, predicted, skipped_patients)
    return predicted, skipped


def no_traceback(result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


# --------------------------------------------------------------------------- file-level (fatal)


def _no_csv(root: Path) -> None:
    (root / "clinical_annotation.csv").unlink()


def _empty_csv(root: Path) -> None:
    (root / "clinical_annotation.csv").write_text("")


def _semicolons(root: Path) -> None:
    path = root / "clinical_annotation.csv"
    path.write_text(path.read_text().replace(",", ";"))


def _tabs(root: Path) -> None:
    path = root / "clinical_annotation.csv"
    path.write_text(path.read_text().replace(",", "\t"))


def _header(text: str) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        path = root / "clinical_annotation.csv"
        lines = path.read_text().splitlines()
        path.write_text("\n".join([text, *lines[1:]]) + "\n")
    return change


def _drop_count_column(root: Path) -> None:
    path = root / "clinical_annotation.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(",".join(line.split(",")[:-1]) for line in lines) + "\n")


def _huge_field(root: Path) -> None:
    path = root / "clinical_annotation.csv"
    path.write_text(path.read_text() + "3,P4,1,M,1/1/1950," + "9" * 200_000 + "\n")


FATAL = {
    # case: (mutate, words in the message, file named in the message)
    "csv missing": (_no_csv, "no annotation file", "cohort"),
    "csv empty": (_empty_csv, "the file is empty", "clinical_annotation.csv"),
    "semicolon delimiter": (_semicolons, "as separator", "clinical_annotation.csv, row 1"),
    "tab delimiter": (_tabs, "as separator", "clinical_annotation.csv, row 1"),
    "missing column": (_drop_count_column, "missing column(s) LYMPH_COUNT",
                       "clinical_annotation.csv, row 1"),
    "renamed column": (_header(",ID,LABEL,GENDER,DOB,LYMPHCOUNT"),
                       "missing column(s) LYMPH_COUNT; found '', 'ID', 'LABEL', 'GENDER', 'DOB', "
                       "'LYMPHCOUNT'", "clinical_annotation.csv, row 1"),
    "duplicated column": (_header(",ID,LABEL,GENDER,DOB,LYMPH_COUNT,ID"), "appear twice",
                          "clinical_annotation.csv, row 1"),
    "field over 128 KiB": (_huge_field, "not a readable CSV", "clinical_annotation.csv"),
}


@pytest.mark.parametrize("case", sorted(FATAL))
@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_bad_csv_file_stops_with_a_message(model_dir: Path, tmp_path: Path, case: str,
                                           policy: str) -> None:
    mutate, words, where = FATAL[case]
    root = write_cohort(tmp_path / "cohort")
    mutate(root)
    out = tmp_path / "pred.csv"
    result = predict(model_dir, root, out, "--on-error", policy)
    assert result.exit_code == 2, result.output
    assert words in result.output and where in result.output and "fix:" in result.output
    no_traceback(result)
    assert not out.exists() and not list(tmp_path.glob("*.skipped.json"))


def test_data_folder_missing(model_dir: Path, tmp_path: Path) -> None:
    result = predict(model_dir, tmp_path / "nowhere", tmp_path / "pred.csv")
    assert result.exit_code == 2 and "data folder not found" in result.output
    assert "nowhere" in result.output and "fix:" in result.output
    no_traceback(result)


# --------------------------------------------------------------------------- accepted CSVs


def _bom_crlf_quotes(root: Path) -> None:
    text = "\ufeff" + HEADER + "\r\n" + "\r\n".join(
        ['0,"P1",1,M,"11/3/1933",11.2', '1,P2,0,F,28-04-1943,"4.5"',
         '2,P3,-1,"F",1/17/1946,5.76']) + "\r\n"
    (root / "clinical_annotation.csv").write_text(text, newline="")


ACCEPTED_CSV = {
    "extra columns": lambda root: (root / "clinical_annotation.csv").write_text(
        HEADER + ",COMMENT\n" + "\n".join(row + ",seen twice" for row in GOOD_ROWS) + "\n"),
    "columns reordered, lower case": lambda root: (root / "clinical_annotation.csv").write_text(
        "lymph_count,dob,gender,label,id\n11.2,11/3/1933,M,1,P1\n4.5,28-04-1943,F,0,P2\n"
        "5.76,1/17/1946,F,-1,P3\n"),
    "bom + crlf + quoted fields": _bom_crlf_quotes,
    "blank lines": lambda root: (root / "clinical_annotation.csv").write_text(
        HEADER + "\n\n" + "\n".join(GOOD_ROWS) + "\n\n\n"),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED_CSV))
def test_accepted_csv_variants(model_dir: Path, tmp_path: Path, case: str) -> None:
    root = write_cohort(tmp_path / "cohort")
    ACCEPTED_CSV[case](root)
    out = tmp_path / "pred.csv"
    result = predict(model_dir, root, out)
    assert result.exit_code == 0, result.output
    assert [r["ID"] for r in csv.DictReader(open(out))] == ["P1", "P2", "P3"]
    assert not out.with_name("pred.skipped.json").exists()


def test_ambiguous_date_is_read_month_first(model_dir: Path, tmp_path: Path) -> None:
    """03/04/1950 is 4 March 1950 (M/D/YYYY, the challenge convention), never 3 April."""
    from lymphomil.data.cohort import load_cohort

    root = write_cohort(tmp_path / "cohort",
                        ["0,P1,1,M,03/04/1950,11.2", GOOD_ROWS[1], GOOD_ROWS[2]])
    result = predict(model_dir, root, tmp_path / "pred.csv")
    assert result.exit_code == 0, result.output
    p1 = next(p for p in load_cohort(root).patients if p.id == "P1")
    assert (p1.dob.month, p1.dob.day) == (3, 4)


# --------------------------------------------------------------------------- bad rows


BAD_ROWS = {
    # case: (row replacing P1's, words in the message)
    "duplicate ID": ("3,P2,0,F,28-04-1943,4.5", "duplicate ID 'P2' (first on line 3)"),
    "ID with slash": ("0,a/b,1,M,11/3/1933,11.2", "not a plain folder name"),
    "ID with ..": ("0,..,1,M,11/3/1933,11.2", "not a plain folder name"),
    "ID with dotdot inside": ("0,P..1,1,M,11/3/1933,11.2", "not a plain folder name"),
    "ID with space": ("0,P 1,1,M,11/3/1933,11.2", "not a plain folder name"),
    "ID non-ASCII": ("0,Pé1,1,M,11/3/1933,11.2", "not a plain folder name"),
    "ID empty": ("0,,1,M,11/3/1933,11.2", "the patient ID is empty"),
    "label 2": ("0,P1,2,M,11/3/1933,11.2", "label '2' is not -1, 0 or 1"),
    "label text": ("0,P1,yes,M,11/3/1933,11.2", "label 'yes' is not -1, 0 or 1"),
    "label empty": ("0,P1,,M,11/3/1933,11.2", "label '' is not -1, 0 or 1"),
    "label nan": ("0,P1,nan,M,11/3/1933,11.2", "label 'nan' is not -1, 0 or 1"),
    "DOB empty": ("0,P1,1,M,,11.2", "the date of birth is empty"),
    "DOB 31/02": ("0,P1,1,M,31/02/1950,11.2", "not a real date"),
    "DOB 2/31": ("0,P1,1,M,2/31/1950,11.2", "not a real date"),
    "DOB in the future": ("0,P1,1,M,1/1/2030,11.2", "after the reference date 2024-01-01"),
    "DOB too early": ("0,P1,1,M,1/1/1850,11.2", "implausibly early"),
    "DOB two-digit year": ("0,P1,1,M,11/3/33,11.2", "is not a date in M/D/YYYY"),
    "gender empty": ("0,P1,1,,11/3/1933,11.2", "gender '' is not M or F"),
    "gender unknown": ("0,P1,1,X,11/3/1933,11.2", "gender 'X' is not M or F"),
    "gender IDK": ("0,P1,1,IDK,11/3/1933,11.2", "gender 'IDK' is not M or F"),
    "count empty": ("0,P1,1,M,11/3/1933,", "the lymphocyte count is empty"),
    "count non-numeric": ("0,P1,1,M,11/3/1933,lots", "is not a number"),
    "count negative": ("0,P1,1,M,11/3/1933,-3", "must be a positive number"),
    "count zero": ("0,P1,1,M,11/3/1933,0", "must be a positive number"),
    "count 1e9": ("0,P1,1,M,11/3/1933,1e9", "implausible"),
    "count inf": ("0,P1,1,M,11/3/1933,inf", "must be a positive number"),
    "short row": ("0,P1,1,M", "the row has 4 fields, the header 6"),
}

FIX_WORDS = {"ID": "rename", "label": "use 1 (malignant)", "DOB": "write the date",
             "gender": "use M or F", "count": "lymphocyte count in 10^9", "duplicate": "one row",
             "short": "as many comma-separated fields", "long": "as many comma-separated fields",
             "number": "lymphocyte count in 10^9", "labelled": "set LABEL -1"}


def _rows_with(case: str, row: str) -> list[str]:
    """The good rows with the bad one in (a duplicate must come after the row it repeats)."""
    if case == "duplicate ID":
        return [GOOD_ROWS[0], GOOD_ROWS[1], GOOD_ROWS[2], row]
    return [row, GOOD_ROWS[1], GOOD_ROWS[2]]


def _fix_words(case: str) -> str:
    return next(v for k, v in FIX_WORDS.items() if case.startswith(k))


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_raise(model_dir: Path, tmp_path: Path, case: str) -> None:
    row, words = BAD_ROWS[case]
    root = write_cohort(tmp_path / "cohort", _rows_with(case, row))
    out = tmp_path / "pred.csv"
    result = predict(model_dir, root, out)
    assert result.exit_code == 2, result.output
    line = 5 if case == "duplicate ID" else 2
    assert f"clinical_annotation.csv, row {line}: " in result.output
    assert words in result.output, result.output
    assert "fix: " + "" in result.output and _fix_words(case) in result.output, result.output
    no_traceback(result)
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_skip_is_listed(model_dir: Path, tmp_path: Path, case: str) -> None:
    row, words = BAD_ROWS[case]
    root = write_cohort(tmp_path / "cohort", _rows_with(case, row))
    out = tmp_path / "pred.csv"
    result = predict(model_dir, root, out, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    no_traceback(result)
    assert "skipped" in result.output  # the full text is in pred.skipped.json
    predicted, skipped = assert_accounted(root, out)
    assert any(words in s["problem"] for s in skipped)
    expected = ["P1", "P2", "P3"] if case == "duplicate ID" else ["P2", "P3"]
    assert predicted == expected


# --------------------------------------------------------------------------- images


def _folder(root: Path, pid: str = "P1") -> Path:
    return root / "trainset" / pid


def _write(name: str, data: bytes | Callable[[], bytes]) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        (_folder(root) / name).write_bytes(data() if callable(data) else data)
    return change


def _symlink_out(root: Path) -> None:
    outside = root.parent / "secret.jpg"
    outside.write_bytes(jpeg_bytes())
    (_folder(root) / "000009.jpg").symlink_to(outside)


def _subfolder(root: Path) -> None:
    (_folder(root) / "extra").mkdir()


BAD_IMAGES = {
    # case: (mutate P1's folder, words); the bad file is left out of P1's bag under skip
    "truncated JPEG": (_write("000001.jpg", lambda: jpeg_bytes()[:300]), "damaged JPEG"),
    "zero-byte file": (_write("000001.jpg", b""), "empty (zero-byte)"),
    "PNG named .jpg": (_write("000001.jpg", lambda: jpeg_bytes(fmt="PNG")), "PNG file despite"),
    "RGBA PNG named .jpg": (_write("000001.jpg", lambda: jpeg_bytes("RGBA", fmt="PNG")),
                            "PNG file despite"),
    "text named .jpg": (_write("000001.jpg", b"hello"), "not a JPEG"),
    "non-image file": (_write("notes.txt", b"hello"), "not a .jpg file ('notes.txt')"),
    "decompression bomb (5000 px)": (_write("000001.jpg", lambda: jpeg_bytes("L", (5000, 16))),
                                     "larger than 4096"),
    "sub-folder": (_subfolder, "unexpected sub-folder 'extra'"),
}


def _mutated_cohort(tmp_path: Path, table: dict, case: str) -> tuple[Path, str, Path]:
    """A good cohort with ``table[case]``'s damage done: (root, expected words, output CSV)."""
    mutate, words = table[case]
    root = write_cohort(tmp_path / "cohort")
    mutate(root)
    return root, words, tmp_path / "pred.csv"


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_raise(model_dir: Path, tmp_path: Path, case: str) -> None:
    root, words, out = _mutated_cohort(tmp_path, BAD_IMAGES, case)
    result = predict(model_dir, root, out)
    assert result.exit_code == 2, result.output
    assert words in result.output and "fix:" in result.output
    assert str(_folder(root)) in result.output  # the message names the file
    no_traceback(result)
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_skip_leaves_the_file_out(model_dir: Path, tmp_path: Path, case: str) -> None:
    root, words, out = _mutated_cohort(tmp_path, BAD_IMAGES, case)
    result = predict(model_dir, root, out, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    no_traceback(result)
    predicted, skipped = assert_accounted(root, out)
    assert predicted == ["P1", "P2", "P3"]  # the patient keeps its good images
    assert any(words in s["problem"] and s["patient_id"] == "P1" for s in skipped)


PATIENT_FOLDER = {
    "folder missing": (lambda root: [f.unlink() for f in _folder(root).iterdir()]
                       and _folder(root).rmdir(), "no image folder for patient P1"),
    "folder empty": (lambda root: [f.unlink() for f in _folder(root).iterdir()],
                     "no usable .jpg cell images"),
    "only hidden + non-images": (lambda root: ([f.unlink() for f in _folder(root).iterdir()],
                                               (_folder(root) / ".DS_Store").write_bytes(b"\0"),
                                               (_folder(root) / "Thumbs.db").write_bytes(b"\0")),
                                 "not a .jpg file ('Thumbs.db')"),
    "every image broken": (lambda root: [f.write_bytes(b"") for f in _folder(root).iterdir()],
                           "empty (zero-byte)"),
}


@pytest.mark.parametrize("case", sorted(PATIENT_FOLDER))
def test_patient_without_usable_images(model_dir: Path, tmp_path: Path, case: str) -> None:
    root, words, out = _mutated_cohort(tmp_path, PATIENT_FOLDER, case)
    result = predict(model_dir, root, out)
    assert result.exit_code == 2 and words in result.output and "fix:" in result.output
    no_traceback(result)
    assert not out.exists()
    result = predict(model_dir, root, out, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    predicted, skipped = assert_accounted(root, out)
    assert predicted == ["P2", "P3"]
    assert any(s["patient_id"] == "P1" and s["row"] == 2 for s in skipped)


def test_folder_without_row_is_listed(model_dir: Path, tmp_path: Path) -> None:
    root = write_cohort(tmp_path / "cohort")
    (root / "trainset" / "P77").mkdir()
    result = predict(model_dir, root, tmp_path / "pred.csv")
    assert result.exit_code == 2 and "P77 has no row" in result.output
    result = predict(model_dir, root, tmp_path / "pred.csv", "--on-error", "skip")
    assert result.exit_code == 0 and "P77" in result.output


ODD_BUT_FINE = {
    "hidden files (.DS_Store, ._x.jpg)": lambda folder: (
        (folder / ".DS_Store").write_bytes(b"\0\1"), (folder / "._000000.jpg").write_bytes(b"\0")),
    "grayscale JPEG": lambda folder: (folder / "000001.jpg").write_bytes(jpeg_bytes("L")),
    "CMYK JPEG": lambda folder: (folder / "000001.jpg").write_bytes(jpeg_bytes("CMYK")),
    "JPEG not 224x224": lambda folder: (folder / "000001.jpg").write_bytes(
        jpeg_bytes(size=(300, 180))),
    "upper-case .JPG / .jpeg": lambda folder: ((folder / "000002.JPG").write_bytes(jpeg_bytes()),
                                               (folder / "000003.jpeg").write_bytes(jpeg_bytes())),
    "symlink inside the data folder": lambda folder: (folder / "000004.jpg").symlink_to(
        folder / "000000.jpg"),
    "symlink leaving the data folder": lambda folder: _symlink_out(folder.parent.parent),
}


@pytest.mark.parametrize("case", sorted(ODD_BUT_FINE))
def test_odd_but_valid_images_are_accepted(model_dir: Path, tmp_path: Path, case: str) -> None:
    root = write_cohort(tmp_path / "cohort")
    ODD_BUT_FINE[case](_folder(root))
    out = tmp_path / "pred.csv"
    result = predict(model_dir, root, out)
    assert result.exit_code == 0, result.output
    assert [r["ID"] for r in csv.DictReader(open(out))] == ["P1", "P2", "P3"]


def test_odd_images_decode_to_rgb_224(tmp_path: Path) -> None:
    """Grayscale, CMYK and non-224 JPEGs become (3, 224, 224) uint8 RGB at decode."""
    from lymphomil.features.preprocess import decode_image

    for mode, size in (("L", (224, 224)), ("CMYK", (224, 224)), ("RGB", (300, 180)),
                       ("L", (64, 64))):
        path = tmp_path / f"{mode}-{size[0]}.jpg"
        path.write_bytes(jpeg_bytes(mode, size))
        image = decode_image(path)
        assert tuple(image.shape) == (3, 224, 224) and str(image.dtype) == "torch.uint8"


def test_odd_images_through_features(tmp_path: Path) -> None:
    """`lymphomil features` extracts grayscale / CMYK / 300x180 JPEGs (small-cnn, no weights)."""
    root = write_cohort(tmp_path / "cohort", images=1)
    folder = _folder(root)
    (folder / "000001.jpg").write_bytes(jpeg_bytes("L"))
    (folder / "000002.jpg").write_bytes(jpeg_bytes("CMYK"))
    (folder / "000003.jpg").write_bytes(jpeg_bytes(size=(300, 180)))
    result = runner.invoke(app, ["features", str(root), "--backbone", "small-cnn", "--weights",
                                 "none", "--crop", "112", "--workers", "1",
                                 "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "3 patients, 6 images" in result.output, result.output


# --------------------------------------------------------------------------- the invariant


def test_every_patient_in_is_predicted_or_skipped(model_dir: Path, tmp_path: Path) -> None:
    """A cohort with many problems at once: patients in = predicted + listed as skipped."""
    rows = [GOOD_ROWS[0], GOOD_ROWS[1], GOOD_ROWS[2],
            "3,P4,2,M,11/3/1933,11.2",        # bad label
            "4,P5,1,M,31/02/1950,11.2",       # impossible date
            "5,P 6,0,F,1/1/1950,3.0",         # bad ID
            "6,P2,0,F,28-04-1943,4.5",        # duplicate
            "7,P7,1,M,1/1/1950,5.0",          # no folder
            "8,P8,-1,F,1/1/1950,1e9",         # absurd count
            "9,P9,0,M,1/1/1950,6.0"]          # folder with only a broken image
    root = write_cohort(tmp_path / "cohort", rows)
    p9 = root / "trainset" / "P9"
    p9.mkdir()
    (p9 / "000000.jpg").write_bytes(b"")
    (_folder(root) / "000001.jpg").write_bytes(jpeg_bytes()[:200])  # P1 loses one image
    out = tmp_path / "pred.csv"
    result = predict(model_dir, root, out, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    predicted, skipped = assert_accounted(root, out)
    assert predicted == ["P1", "P2", "P3"]
    skipped_patients = {s["patient_id"] for s in skipped if s["patient_id"] not in predicted}
    # 10 rows in, one is a duplicate of P2 (listed), 3 predicted, 6 distinct patients skipped
    assert skipped_patients == {"P4", "P5", "P 6", "P7", "P8", "P9"}
    assert len(csv_rows(root)) == len(predicted) + len([s for s in skipped if s["row"]])


# --------------------------------------------------------------------------- `lymphomil features`


def features(root: Path, cache: Path, *extra: str):
    return runner.invoke(app, ["features", str(root), "--backbone", "small-cnn", "--weights",
                               "none", "--crop", "112", "--workers", "1", "--cache-dir",
                               str(cache), *extra])


def test_features_reads_a_symlink_leaving_the_data_folder(tmp_path: Path) -> None:
    """`features` reads an image linked from outside the data folder through (issue 22: the
    Kaggle habit of linking the download)."""
    root = write_cohort(tmp_path / "cohort", images=1)
    _symlink_out(root)
    result = features(root, tmp_path / "cache")
    assert result.exit_code == 0 and "3 patients, 4 images" in result.output, result.output


def _bomb_header(side: int) -> bytes:
    """A tiny JPEG whose header claims side x side pixels."""
    import struct

    data = bytearray(jpeg_bytes("L", (16, 16)))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, side, side)
    return bytes(data)


def test_loader_refuses_a_bomb_header(model_dir: Path, tmp_path: Path) -> None:
    root = write_cohort(tmp_path / "cohort")
    (_folder(root) / "000001.jpg").write_bytes(_bomb_header(30000))
    result = predict(model_dir, root, tmp_path / "pred.csv")
    assert result.exit_code == 2 and "000001.jpg" in result.output
    assert "decompression bomb" in result.output


def test_features_refuses_a_decompression_bomb(tmp_path: Path) -> None:
    root = write_cohort(tmp_path / "cohort", images=1)
    (_folder(root) / "000001.jpg").write_bytes(_bomb_header(6000))  # 108 MB decoded, not 3 GB
    result = features(root, tmp_path / "cache")
    assert result.exit_code == 2 and "000001.jpg" in result.output
