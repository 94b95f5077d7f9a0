"""Read and validate a cohort in the challenge's folder layout (DESIGN §1).

This is the only module that knows the CSV column names. It turns a folder into a list of
validated :class:`Patient` records, each with its cell images in a stable order, and it never
drops a patient silently: every problem is either raised (``on_error='raise'``) with the file,
the row and the fix, or recorded (``on_error='skip'``) in :attr:`Cohort.issues`.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from collections.abc import Sequence as SequenceABC
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

from lymphomil.errors import DataIssue, IssueLog, LymphomilError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

DEFAULT_REFERENCE_DATE = date(2024, 1, 1)

ROOT_CSV = "clinical_annotation.csv"
TRAIN_DIR, TRAIN_CSV = "trainset", "trainset/trainset_true.csv"
TEST_DIR, TEST_CSV = "testset", "testset/testset_data.csv"

COL_ID, COL_LABEL, COL_GENDER, COL_DOB, COL_COUNT = "ID", "LABEL", "GENDER", "DOB", "LYMPH_COUNT"
REQUIRED_COLUMNS = (COL_ID, COL_LABEL, COL_GENDER, COL_DOB, COL_COUNT)

LABELS = {-1: "unknown", 0: "reactive", 1: "malignant"}
IMAGE_SUFFIXES = (".jpg", ".jpeg")
MAX_COUNT = 1000.0  # 10^9 cells/L; the labelled set tops out at 295
MAX_IMAGE_SIDE = 4096  # larger images are refused (decompression bombs)
MIN_BIRTH_YEAR = 1880

_ID_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_SLASH_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")  # M/D/YYYY (the challenge's US style)
_DASH_DATE = re.compile(r"^(\d{1,2})-(\d{1,2})-(\d{4})$")  # DD-MM-YYYY
_ISO_DATE = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})$")  # YYYY-MM-DD


@dataclass(frozen=True, eq=False)
class Patient:
    """One patient: validated attributes, its cell images, and (optionally) a feature store.

    ``features`` is attached by the harness so that image models can ask for their instance
    features (``patient.bag(spec)``) without decoding JPEGs themselves (DESIGN §2–§3).
    """

    id: str
    label: int  # 1 malignant, 0 reactive, -1 unknown
    gender: str  # "M" or "F"
    dob: date
    age: float  # years at the cohort's reference date
    lymph_count: float  # 10^9 cells/L
    split: str  # "train" (labelled folder) or "test"
    image_paths: Sequence[Path]  # an ImagePaths from the loader (a tuple works too)
    features: Any = field(default=None, repr=False, compare=False)

    @property
    def n_images(self) -> int:
        return len(self.image_paths)

    @property
    def is_labelled(self) -> bool:
        return self.label in (0, 1)

    def with_features(self, store: Any) -> "Patient":
        return replace(self, features=store)

    def bag(self, spec: Any, kind: str = "pooled") -> np.ndarray:
        """Instance features of this patient's cells from the attached store ((n, d) for pooled)."""
        if self.features is None:
            raise LymphomilError(f"patient {self.id} has no feature store attached",
                                 fix="build the patient set with lymphomil.features.attach_store()")
        return self.features.load(self, spec, kind)


@dataclass
class Cohort:
    """The validated patients of one folder, plus every problem recorded while reading it."""

    root: Path
    patients: list[Patient]
    issues: list[DataIssue]
    reference_date: date
    ignored_folders: list[str] = field(default_factory=list)

    @property
    def labelled(self) -> list[Patient]:
        return [p for p in self.patients if p.is_labelled]

    @property
    def unlabelled(self) -> list[Patient]:
        return [p for p in self.patients if not p.is_labelled]

    @property
    def skipped_ids(self) -> list[str]:
        """Patients from the CSV that did not make it into :attr:`patients`."""
        kept = {p.id for p in self.patients}
        seen: dict[str, None] = {}
        for issue in self.issues:
            if issue.patient_id and issue.patient_id not in kept:
                seen.setdefault(issue.patient_id)
        return list(seen)

    def table(self) -> "pd.DataFrame":
        import pandas as pd

        return pd.DataFrame(
            {
                "ID": [p.id for p in self.patients],
                "label": [p.label for p in self.patients],
                "gender": [p.gender for p in self.patients],
                "dob": [p.dob.isoformat() for p in self.patients],
                "age": [p.age for p in self.patients],
                "lymph_count": [p.lymph_count for p in self.patients],
                "n_images": [p.n_images for p in self.patients],
                "split": [p.split for p in self.patients],
            }
        )

    def skipped_table(self) -> list[dict]:
        return [i.to_dict() for i in self.issues]


# --------------------------------------------------------------------------- parsing helpers


def parse_dob(text: str) -> date:
    """Parse a date of birth in ``M/D/YYYY``, ``DD-MM-YYYY`` or ``YYYY-MM-DD``.

    Raises ``ValueError`` with a human sentence when the text is not one of these or is not a
    real calendar date (31/02).
    """
    text = text.strip()
    if not text:
        raise ValueError("the date of birth is empty")
    for pattern, order in ((_SLASH_DATE, "mdy"), (_DASH_DATE, "dmy"), (_ISO_DATE, "ymd")):
        match = pattern.match(text)
        if match:
            parts = dict(zip(order, (int(g) for g in match.groups())))
            try:
                return date(parts["y"], parts["m"], parts["d"])
            except ValueError as exc:
                raise ValueError(f"{text!r} is not a real date ({exc})") from None
    raise ValueError(f"{text!r} is not a date in M/D/YYYY, DD-MM-YYYY or YYYY-MM-DD")


def age_at(dob: date, reference: date) -> float:
    """Age in years at ``reference`` (days / 365.25, two decimals: stable and calendar-free)."""
    return round((reference - dob).days / 365.25, 2)


def parse_gender(text: str) -> str:
    value = text.strip().upper()
    if value in ("M", "F"):
        return value
    raise ValueError(f"gender {text!r} is not M or F")


def parse_label(text: str) -> int:
    value = text.strip()
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"label {text!r} is not -1, 0 or 1") from None
    if number not in (-1.0, 0.0, 1.0):
        raise ValueError(f"label {text!r} is not -1, 0 or 1")
    return int(number)


def parse_count(text: str) -> float:
    value = text.strip()
    if not value:
        raise ValueError("the lymphocyte count is empty")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"lymphocyte count {text!r} is not a number") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"lymphocyte count {text!r} must be a positive number")
    if number > MAX_COUNT:
        raise ValueError(f"lymphocyte count {text!r} is implausible (above {MAX_COUNT:g} x10^9/L)")
    return number


def check_id(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("the patient ID is empty")
    if not _ID_PATTERN.match(value) or ".." in value:
        raise ValueError(
            f"patient ID {text!r} is not a plain folder name (letters, digits, '_', '-', '.'; "
            "no path separators, spaces, '..' or non-ASCII)")
    return value


# --------------------------------------------------------------------------- CSV


@dataclass(frozen=True)
class Row:
    file: Path
    line: int  # 1-based line number in the file (header is line 1)
    values: dict[str, str]


def read_table(path: Path) -> list[Row]:
    """Read one annotation CSV into rows keyed by the required column names."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LymphomilError("file not found", file=path,
                             fix="point lymphomil at the challenge folder (it holds "
                                 f"{ROOT_CSV} or {TRAIN_CSV})") from None
    except OSError as exc:
        raise LymphomilError(f"cannot read the file ({exc.strerror})", file=path,
                             fix="check the file's permissions") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LymphomilError(f"the file is not UTF-8 text (byte {exc.start})", file=path,
                             fix="save the file as UTF-8 CSV") from None
    if not text.strip():
        raise LymphomilError("the file is empty", file=path,
                             fix=f"the first line must be the header {','.join(REQUIRED_COLUMNS)}")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return _read_records(path, reader)
    except csv.Error as exc:  # e.g. a field over the csv module's 128 KiB limit
        raise LymphomilError(f"the file is not a readable CSV ({exc})", file=path,
                             row=reader.line_num or None,
                             fix="save the file as comma-separated values, one patient per "
                                 "line") from None


def _read_records(path: Path, reader: Any) -> list[Row]:
    header = [h.strip() for h in next(reader)]
    if len(header) == 1 and any(sep in header[0] for sep in (";", "\t", "|")):
        sep = next(s for s in (";", "\t", "|") if s in header[0])
        raise LymphomilError(f"the header uses {sep!r} as separator, not ','", file=path, row=1,
                             fix="save the file as comma-separated values")
    upper = [h.upper() for h in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in upper]
    if missing:
        raise LymphomilError(
            f"missing column(s) {', '.join(missing)}; found {', '.join(repr(h) for h in header)}",
            file=path, row=1,
            fix=f"the header must name {', '.join(REQUIRED_COLUMNS)} (an unnamed index column "
                "and extra columns are allowed)")
    dupes = sorted({c for c in REQUIRED_COLUMNS if upper.count(c) > 1})
    if dupes:
        raise LymphomilError(f"column(s) {', '.join(dupes)} appear twice", file=path, row=1,
                             fix="keep one column of each name")
    position = {c: upper.index(c) for c in REQUIRED_COLUMNS}
    rows = []
    for line_no, record in enumerate(reader, start=2):
        if not record or all(not cell.strip() for cell in record):
            continue
        values = {c: (record[i] if i < len(record) else "") for c, i in position.items()}
        rows.append(Row(path, line_no, values))
    return rows


# --------------------------------------------------------------------------- images


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def _link_problem(path: Path, root: Path) -> str | None:
    if path.is_symlink() and not _inside(path, root):
        return "is a symbolic link that leads outside the data folder"
    return None


def check_image(path: Path, root: Path, full: bool = False) -> str | None:
    """Return why ``path`` is not a usable cell image, or ``None`` when it is.

    Cheap checks by default (JPEG start/end markers, header size): a truncated or renamed file
    is caught without decoding 14,000 images. ``full`` decodes the pixels too.
    """
    problem = _link_problem(path, root)
    if problem:
        return problem
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if size == 0:
        return "is an empty (zero-byte) file"
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
            handle.seek(max(0, size - 2))
            tail = handle.read(2)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if head[:3] != b"\xff\xd8\xff":
        kind = "a PNG" if head.startswith(b"\x89PNG") else "not a JPEG"
        return f"is {kind} file despite its name"
    if tail != b"\xff\xd9":
        return "is a truncated JPEG (no end-of-image marker)"
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
                return f"is {width}x{height} pixels, larger than {MAX_IMAGE_SIDE} (decompression bomb?)"
            if full:
                image.load()
    except Image.DecompressionBombError:
        return "is too large to decode safely (decompression bomb)"
    except Exception as exc:  # PIL raises many types for broken files
        return f"is not a readable JPEG ({type(exc).__name__}: {exc})"
    return None


class ImagePaths(SequenceABC):
    """A patient's image files as one folder + their names, a ``Path`` made on access.

    A ``Path`` keeps its parsed parts (~450 bytes); a name costs ~60: the table of a
    million-image cohort stays small on the process that schedules the work.
    """

    __slots__ = ("folder", "names")

    def __init__(self, folder: str | Path, names: Iterable[str]):
        self.folder = Path(folder)
        self.names = tuple(names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return tuple(self.folder / name for name in self.names[index])
        return self.folder / self.names[index]

    def __iter__(self) -> Iterator[Path]:
        folder = self.folder
        return (folder / name for name in self.names)

    def strings(self) -> list[str]:
        """The paths as strings, no ``Path`` built per image (~5 µs each, beside a 0.6 ms
        decode when a cohort streams through the extractor)."""
        folder = os.fspath(self.folder)
        return [os.path.join(folder, name) for name in self.names]

    def __add__(self, other: Iterable[Path]) -> tuple[Path, ...]:
        return tuple(self) + tuple(other)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (ImagePaths, tuple, list)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.folder, self.names))

    def __repr__(self) -> str:
        return f"ImagePaths({str(self.folder)!r}, {len(self.names)} images)"

    def __getstate__(self) -> tuple:
        return (self.folder, self.names)

    def __setstate__(self, state: tuple) -> None:
        self.folder, self.names = state


def list_images(folder: Path, root: Path, patient_id: str, log: IssueLog,
                check: bool = True) -> ImagePaths:
    """The patient's JPEGs sorted by name; hidden files ignored, anything else reported."""
    images = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue  # .DS_Store, ._foo.jpg, editor files: never cells
        if entry.is_dir():
            log.report(DataIssue(f"unexpected sub-folder {entry.name!r} in a patient folder",
                                 "move it out of the patient's folder", file=str(entry),
                                 patient_id=patient_id))
            continue
        if entry.suffix.lower() not in IMAGE_SUFFIXES:
            log.report(DataIssue(f"not a .jpg file ({entry.name!r})",
                                 "keep only the patient's cell images (.jpg) in the folder",
                                 file=str(entry), patient_id=patient_id))
            continue
        # without ``check`` (a warm `features` run) only the free test: a link leaving the folder
        problem = check_image(entry, root) if check else _link_problem(entry, root)
        if problem:
            log.report(DataIssue(f"image {problem}",
                                 "replace or remove this image (or run with --on-error skip "
                                 "to leave it out)", file=str(entry), patient_id=patient_id))
            continue
        images.append(entry.name)
    return ImagePaths(folder, images)


# --------------------------------------------------------------------------- cohort


def _csv_files(root: Path) -> list[Path]:
    if (root / ROOT_CSV).is_file():
        return [root / ROOT_CSV]
    found = [root / rel for rel in (TRAIN_CSV, TEST_CSV) if (root / rel).is_file()]
    if not found:
        raise LymphomilError(
            f"no annotation file: expected {ROOT_CSV}, {TRAIN_CSV} or {TEST_CSV}", file=root,
            fix="point lymphomil at the challenge folder (dlmi-lymphocytosis/) or make one "
                "with `lymphomil synth`")
    return found


class FieldError(ValueError):
    """A bad value in one CSV field; ``field`` picks the fix (never the user's text)."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name


def _field(name: str, parse: Any, text: str) -> Any:
    try:
        return parse(text)
    except ValueError as exc:
        raise FieldError(name, str(exc)) from None


def _patient_from_row(row: Row, reference: date) -> tuple[str, int, str, date, float, float]:
    """Validate one CSV row; raise :class:`FieldError` (a ValueError) naming the bad field."""
    patient_id = _field("ID", check_id, row.values[COL_ID])
    label = _field("label", parse_label, row.values[COL_LABEL])
    gender = _field("gender", parse_gender, row.values[COL_GENDER])
    dob = _field("date", parse_dob, row.values[COL_DOB])
    if dob > reference:
        raise FieldError("date", f"date of birth {row.values[COL_DOB]!r} is after the reference "
                                 f"date {reference.isoformat()}")
    if dob.year < MIN_BIRTH_YEAR:
        raise FieldError("date", f"date of birth {row.values[COL_DOB]!r} is implausibly early")
    count = _field("count", parse_count, row.values[COL_COUNT])
    return patient_id, label, gender, dob, age_at(dob, reference), count


_FIXES = {
    "ID": "give the patient a plain ID such as P123 (and rename its image folder to match)",
    "label": "use 1 (malignant), 0 (reactive) or -1 (unknown, to predict)",
    "gender": "use M or F",
    "date": "write the date as M/D/YYYY (11/3/1933) or DD-MM-YYYY (28-04-1943)",
    "count": "give the lymphocyte count in 10^9 cells/L as a positive number (e.g. 12.4)",
}


def _fix_for(exc: ValueError) -> str:
    """The fix for a bad row, chosen by the field (a value like 'IDK' must not pick the ID fix)."""
    return _FIXES.get(getattr(exc, "field", ""), "correct the row")


def load_cohort(root: str | Path, *, reference_date: date = DEFAULT_REFERENCE_DATE,
                on_error: str = "raise", check_images: bool = True) -> Cohort:
    """Read a challenge-layout folder into a validated :class:`Cohort`.

    Rows are validated one by one; under ``on_error='skip'`` a bad row or a patient without
    usable images is left out and recorded, a bad image file is left out of its bag and recorded.
    """
    root = Path(root)
    if not root.is_dir():
        raise LymphomilError("data folder not found", file=root,
                             fix="give the path of the challenge folder (dlmi-lymphocytosis/)")
    root = root.resolve()
    log = IssueLog(on_error)
    patients: list[Patient] = []
    seen: dict[str, Row] = {}
    for csv_path in _csv_files(root):
        for row in read_table(csv_path):
            raw_id = row.values[COL_ID].strip() or None
            try:
                pid, label, gender, dob, age, count = _patient_from_row(row, reference_date)
            except ValueError as exc:
                log.report(DataIssue(str(exc), _fix_for(exc), file=str(csv_path),
                                     row=row.line, patient_id=raw_id))
                continue
            if pid in seen:
                first = seen[pid]
                log.report(DataIssue(f"duplicate ID {pid!r} (first on line {first.line})",
                                     "keep one row per patient", file=str(csv_path),
                                     row=row.line, patient_id=pid))
                continue
            seen[pid] = row
            folder = _find_folder(root, pid, label)
            if folder is None:
                log.report(DataIssue(
                    f"no image folder for patient {pid}",
                    f"add the folder {TRAIN_DIR}/{pid}/ (or {TEST_DIR}/{pid}/) with its cell "
                    "images, or remove the row", file=str(csv_path), row=row.line, patient_id=pid))
                continue
            images = list_images(folder, root, pid, log, check=check_images)
            if not images:
                log.report(DataIssue(f"no usable .jpg cell images in {folder}",
                                     "add the patient's cell images or remove the row",
                                     file=str(csv_path), row=row.line, patient_id=pid))
                continue
            split = "train" if folder.parent.name == TRAIN_DIR else "test"
            patients.append(Patient(pid, label, gender, dob, age, count, split, images))
    all_ids = set(seen)
    ignored = []
    for sub in (TRAIN_DIR, TEST_DIR):
        if not (root / sub).is_dir():
            continue
        for folder in sorted((root / sub).iterdir()):
            if folder.is_dir() and not folder.name.startswith(".") and folder.name not in all_ids:
                ignored.append(f"{sub}/{folder.name}")
                log.report(DataIssue(f"image folder {sub}/{folder.name} has no row in the CSV",
                                     "add the patient's row to the CSV or move the folder away",
                                     file=str(folder), patient_id=folder.name))
    return Cohort(root, patients, log.issues, reference_date, ignored)


def _find_folder(root: Path, patient_id: str, label: int) -> Path | None:
    order = (TRAIN_DIR, TEST_DIR) if label in (0, 1) else (TEST_DIR, TRAIN_DIR)
    for sub in order:
        folder = root / sub / patient_id
        if folder.is_dir():
            if not _inside(folder, root):
                return None
            return folder
    return None


def as_patient_array(patients: Iterable[Patient]) -> np.ndarray:
    """A 1-D object array of patients: scikit-learn's splitters and ``clone`` index it as rows."""
    items = list(patients)
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def labels_of(patients: Sequence[Patient]) -> np.ndarray:
    return np.array([p.label for p in patients], dtype=int)
