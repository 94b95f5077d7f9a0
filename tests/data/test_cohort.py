"""The loader: both layouts, both date formats, and every bad input of the foundation issue."""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path

import pytest
from PIL import Image

from lymphomil.data.cohort import load_cohort
from lymphomil.data.validate import age_at, parse_count, parse_dob, parse_gender, parse_label
from lymphomil.runtime.errors import LymphomilError

HEADER = ",ID,LABEL,GENDER,DOB,LYMPH_COUNT"


def jpeg_bytes(colour=(200, 120, 160), size=(224, 224)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def make_cohort(root: Path, rows: list[str], images: dict[str, int] | None = None,
                header: str = HEADER) -> Path:
    """A tiny challenge folder: the root CSV and ``images[ID]`` JPEGs per patient."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "clinical_annotation.csv").write_text("\n".join([header, *rows]) + "\n")
    labels = {r.split(",")[1]: r.split(",")[2] for r in rows}
    for pid, n in (images or {}).items():
        sub = "testset" if labels.get(pid) == "-1" else "trainset"
        folder = root / sub / pid
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (folder / f"{i:06d}.jpg").write_bytes(jpeg_bytes())
    return root


GOOD_ROWS = ["0,P1,1,M,11/3/1933,11.2", "1,P2,0,f,28-04-1943,4.5", "2,P3,-1,F,1/17/1946,5.76"]
GOOD_IMAGES = {"P1": 3, "P2": 2, "P3": 2}


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return make_cohort(tmp_path / "cohort", GOOD_ROWS, GOOD_IMAGES)


def test_loads_both_date_formats_and_lower_case_gender(good: Path) -> None:
    cohort = load_cohort(good)
    by_id = {p.id: p for p in cohort.patients}
    assert by_id["P1"].dob == date(1933, 11, 3)  # M/D/YYYY
    assert by_id["P2"].dob == date(1943, 4, 28)  # DD-MM-YYYY
    assert by_id["P2"].gender == "F"
    assert by_id["P1"].split == "train" and by_id["P3"].split == "test"
    assert [p.name for p in by_id["P1"].image_paths] == ["000000.jpg", "000001.jpg", "000002.jpg"]
    assert cohort.issues == []


def test_age_uses_the_reference_date_not_today(good: Path) -> None:
    early = load_cohort(good, reference_date=date(2020, 1, 1))
    late = load_cohort(good, reference_date=date(2024, 1, 1))
    assert late.patients[0].age - early.patients[0].age == pytest.approx(4.0, abs=0.01)
    assert age_at(date(1934, 1, 1), date(2024, 1, 1)) == pytest.approx(90.0, abs=0.01)


def test_split_csv_layout_without_root_file(tmp_path: Path) -> None:
    root = tmp_path / "split"
    (root / "trainset" / "P1").mkdir(parents=True)
    (root / "testset" / "P9").mkdir(parents=True)
    (root / "trainset" / "trainset_true.csv").write_text("ID,LABEL,GENDER,DOB,LYMPH_COUNT\n"
                                                         "P1,1,M,11/3/1933,11.2\n")
    (root / "testset" / "testset_data.csv").write_text("ID,LABEL,GENDER,DOB,LYMPH_COUNT\n"
                                                       "P9,-1,F,28-04-1943,5.0\n")
    (root / "trainset" / "P1" / "000000.jpg").write_bytes(jpeg_bytes())
    (root / "testset" / "P9" / "000000.jpg").write_bytes(jpeg_bytes())
    cohort = load_cohort(root)
    assert [p.id for p in cohort.patients] == ["P1", "P9"]


def test_folder_with_only_new_patients(tmp_path: Path) -> None:
    root = tmp_path / "new"
    (root / "testset" / "P9").mkdir(parents=True)
    (root / "testset" / "testset_data.csv").write_text("ID,LABEL,GENDER,DOB,LYMPH_COUNT\n"
                                                       "P9,-1,F,28-04-1943,5.0\n")
    (root / "testset" / "P9" / "000000.jpg").write_bytes(jpeg_bytes())
    cohort = load_cohort(root)
    assert [p.id for p in cohort.unlabelled] == ["P9"] and cohort.labelled == []


@pytest.mark.parametrize("text,expected", [
    ("11/3/1933", date(1933, 11, 3)), ("5/15/1942", date(1942, 5, 15)),
    ("28-04-1943", date(1943, 4, 28)), ("01-12-1950", date(1950, 12, 1)),
    ("1950-12-01", date(1950, 12, 1)), (" 2/2/1940 ", date(1940, 2, 2)),
])
def test_parse_dob_formats(text: str, expected: date) -> None:
    assert parse_dob(text) == expected


@pytest.mark.parametrize("text", ["", "31/02/1950", "2/31/1950", "31-02-1950", "13/13/1950",
                                  "1950/01/01", "yesterday", "11/3/33"])
def test_parse_dob_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_dob(text)


def test_small_parsers() -> None:
    assert parse_gender(" m ") == "M" and parse_label("1.0") == 1 and parse_count("4.5") == 4.5
    for bad in ("X", ""):
        with pytest.raises(ValueError):
            parse_gender(bad)
    for bad in ("2", "yes", ""):
        with pytest.raises(ValueError):
            parse_label(bad)
    for bad in ("", "abc", "-1", "0", "1e9", "nan", "inf"):
        with pytest.raises(ValueError):
            parse_count(bad)


# --------------------------------------------------------------------------- bad inputs

BAD_ROWS = {
    "impossible date": ("0,P1,1,M,31/02/1950,11.2", "not a real date"),
    "unparseable date": ("0,P1,1,M,someday,11.2", "is not a date"),
    "future date": ("0,P1,1,M,1/1/2030,11.2", "after the reference date"),
    "unknown gender": ("0,P1,1,X,11/3/1933,11.2", "gender"),
    "empty gender": ("0,P1,1,,11/3/1933,11.2", "gender"),
    "non-numeric count": ("0,P1,1,M,11/3/1933,lots", "not a number"),
    "negative count": ("0,P1,1,M,11/3/1933,-3", "positive"),
    "missing count": ("0,P1,1,M,11/3/1933,", "empty"),
    "absurd count": ("0,P1,1,M,11/3/1933,1e9", "implausible"),
    "bad label": ("0,P1,7,M,11/3/1933,11.2", "label"),
    "path in ID": ("0,../P1,1,M,11/3/1933,11.2", "plain folder name"),
    "slash in ID": ("0,a/b,1,M,11/3/1933,11.2", "plain folder name"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_raises_naming_file_row_and_fix(tmp_path: Path, case: str) -> None:
    row, words = BAD_ROWS[case]
    root = make_cohort(tmp_path / "c", [row, "1,P2,0,F,28-04-1943,4.5"], {"P2": 1})
    with pytest.raises(LymphomilError) as info:
        load_cohort(root)
    message = info.value.render()
    assert "clinical_annotation.csv, row 2" in message
    assert words in message
    assert "fix:" in message


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_is_skipped_and_recorded(tmp_path: Path, case: str) -> None:
    row, _ = BAD_ROWS[case]
    root = make_cohort(tmp_path / "c", [row, "1,P2,0,F,28-04-1943,4.5"], {"P2": 1})
    cohort = load_cohort(root, on_error="skip")
    assert [p.id for p in cohort.patients] == ["P2"]
    assert len(cohort.issues) >= 1 and cohort.issues[0].row == 2


def test_missing_column(tmp_path: Path) -> None:
    root = make_cohort(tmp_path / "c", ["0,P1,1,M,11/3/1933"], header=",ID,LABEL,GENDER,DOB")
    with pytest.raises(LymphomilError, match="missing column.*LYMPH_COUNT"):
        load_cohort(root)


def test_duplicate_id(tmp_path: Path) -> None:
    root = make_cohort(tmp_path / "c", ["0,P1,1,M,11/3/1933,11.2", "1,P1,1,M,11/3/1933,11.2"],
                       {"P1": 1})
    with pytest.raises(LymphomilError, match="row 3: duplicate ID 'P1'"):
        load_cohort(root)
    assert len(load_cohort(root, on_error="skip").patients) == 1


def test_labelled_patient_without_folder(tmp_path: Path) -> None:
    root = make_cohort(tmp_path / "c", GOOD_ROWS, {"P2": 1, "P3": 1})
    with pytest.raises(LymphomilError, match="no image folder for patient P1"):
        load_cohort(root)
    cohort = load_cohort(root, on_error="skip")
    assert cohort.skipped_ids == ["P1"] and len(cohort.patients) == 2


def test_empty_image_folder(tmp_path: Path) -> None:
    root = make_cohort(tmp_path / "c", GOOD_ROWS, GOOD_IMAGES)
    for f in (root / "trainset" / "P1").iterdir():
        f.unlink()
    with pytest.raises(LymphomilError, match="no usable .jpg"):
        load_cohort(root)


def test_image_folder_without_row(tmp_path: Path) -> None:
    root = make_cohort(tmp_path / "c", GOOD_ROWS, GOOD_IMAGES)
    (root / "trainset" / "P77").mkdir()
    with pytest.raises(LymphomilError, match="P77 has no row"):
        load_cohort(root)
    cohort = load_cohort(root, on_error="skip")
    assert cohort.ignored_folders == ["trainset/P77"] and len(cohort.patients) == 3


@pytest.mark.parametrize("case", ["truncated", "zero-byte", "png", "text"])
def test_unreadable_image(tmp_path: Path, case: str) -> None:
    root = make_cohort(tmp_path / "c", GOOD_ROWS, GOOD_IMAGES)
    target = root / "trainset" / "P1" / "000001.jpg"
    if case == "truncated":
        target.write_bytes(jpeg_bytes()[:300])
    elif case == "zero-byte":
        target.write_bytes(b"")
    elif case == "png":
        Image.new("RGB", (224, 224)).save(target, "PNG")
    else:
        target.write_text("hello")
    with pytest.raises(LymphomilError) as info:
        load_cohort(root)
    assert "000001.jpg" in info.value.render()
    cohort = load_cohort(root, on_error="skip")
    p1 = next(p for p in cohort.patients if p.id == "P1")
    assert p1.n_images == 2 and any("000001.jpg" in (i.file or "") for i in cohort.issues)


def test_hidden_files_are_ignored(tmp_path: Path) -> None:
    root = make_cohort(tmp_path / "c", GOOD_ROWS, GOOD_IMAGES)
    (root / "trainset" / "P1" / ".DS_Store").write_bytes(b"\0\1")
    cohort = load_cohort(root)
    assert cohort.issues == [] and cohort.patients[0].n_images == 3


def test_symlink_leaving_the_data_folder_is_read_through(tmp_path: Path) -> None:
    root = make_cohort(tmp_path / "c", GOOD_ROWS, GOOD_IMAGES)
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(jpeg_bytes())
    (root / "trainset" / "P1" / "000009.jpg").symlink_to(outside)
    patient = next(p for p in load_cohort(root).patients if p.id == "P1")
    assert patient.image_paths[-1].name == "000009.jpg"


@pytest.mark.parametrize("content,words", [
    ("", "empty"),
    ("ID;LABEL;GENDER;DOB;LYMPH_COUNT\nP1;1;M;11/3/1933;11.2\n", "separator"),
])
def test_bad_csv_file(tmp_path: Path, content: str, words: str) -> None:
    root = tmp_path / "c"
    root.mkdir()
    (root / "clinical_annotation.csv").write_text(content)
    with pytest.raises(LymphomilError, match=words):
        load_cohort(root)


def test_missing_data_folder(tmp_path: Path) -> None:
    with pytest.raises(LymphomilError, match="data folder not found"):
        load_cohort(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LymphomilError, match="no annotation file"):
        load_cohort(tmp_path / "empty")


def test_bom_crlf_and_quotes_are_read(tmp_path: Path) -> None:
    root = make_cohort(tmp_path / "c", [], GOOD_IMAGES)
    text = "\ufeff" + HEADER + "\r\n" + "\r\n".join(
        ['0,"P1",1,M,"11/3/1933",11.2', '1,P2,0,F,28-04-1943,"4.5"', "2,P3,-1,F,1/17/1946,5.76"])
    (root / "clinical_annotation.csv").write_text(text, newline="")
    assert [p.id for p in load_cohort(root).patients] == ["P1", "P2", "P3"]


@pytest.mark.shared_data
def test_shared_data_loads_cleanly(shared_data: Path) -> None:
    cohort = load_cohort(shared_data)
    assert len(cohort.labelled) == 130 and len(cohort.unlabelled) == 42
    assert sorted(p.label for p in cohort.labelled).count(0) == 40
    assert sum(p.n_images for p in cohort.patients) == 14107
    assert cohort.issues == []


def test_image_paths_behave_like_a_tuple_of_paths(tmp_path: Path) -> None:
    import copy

    from lymphomil.data.folders import ImagePaths

    paths = ImagePaths(tmp_path, ["000001.jpg", "000002.jpg", "000003.jpg"])
    plain = tuple(tmp_path / n for n in ("000001.jpg", "000002.jpg", "000003.jpg"))
    assert len(paths) == 3 and paths[1] == plain[1] and paths[-1] == plain[-1]
    assert paths[:2] == plain[:2] and list(paths) == list(plain) and paths == plain
    assert paths + (tmp_path / "x.jpg",) == plain + (tmp_path / "x.jpg",)
    assert copy.deepcopy(paths) == paths  # the same state protocol Ray uses to ship a patient
    assert "3 images" in repr(paths)
