"""Read and validate a cohort in the challenge's folder layout (docs/design.md §1).

This is the only module that knows the CSV column names. It turns a folder into a list of
validated :class:`Patient` records, each with its cell images in a stable order, and it never
drops a patient silently: every problem is either raised (``on_error='raise'``) with the file,
the row and the fix, or recorded (``on_error='skip'``) in :attr:`Cohort.issues`.
"""

from __future__ import annotations

import csv
import errno
import io
import math
import os
import re
from collections.abc import Sequence as SequenceABC
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

from lymphomil.data.images import image_problem, kind_problem, memo_in
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
MIN_COUNT = 0.1  # 10^9 cells/L; below is not a measurable count (the labelled set's lowest: 2.28)
MAX_AGE = 120  # years at the reference date
MIN_BIRTH_YEAR = 1880  # kept for callers; the age bound (MAX_AGE) is what is checked

_ID_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
#: a number as a person writes it in a CSV: ASCII digits, one '.', an optional exponent; no '_',
#: thousands separators, decimal commas or other scripts' digits (Python's float() takes '4_74')
_NUMBER = re.compile(r"^[+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$", re.ASCII)
_LABEL = re.compile(r"^(?:-1|\+?[01])(?:\.0*)?$", re.ASCII)
_SLASH_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")  # M/D/YYYY (the challenge's US style)
_DASH_DATE = re.compile(r"^(\d{1,2})-(\d{1,2})-(\d{4})$")  # DD-MM-YYYY
_ISO_DATE = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})$")  # YYYY-MM-DD


@dataclass(frozen=True, eq=False)
class Patient:
    """One patient: validated attributes, its cell images, and (optionally) a feature store.

    ``features`` is attached by the harness so that image models can ask for their instance
    features (``patient.bag(spec)``) without decoding JPEGs themselves (docs/design.md §2–§3).
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
    if not _LABEL.match(value):
        raise ValueError(f"label {text!r} is not -1, 0 or 1")
    return int(float(value))


def parse_count(text: str) -> float:
    value = text.strip()
    if not value:
        raise ValueError("the lymphocyte count is empty")
    if value.lower().lstrip("+-") in ("inf", "infinity", "nan"):
        raise ValueError(f"lymphocyte count {text!r} must be a positive number")
    if value.startswith("-") and _NUMBER.match(value[1:]):
        raise ValueError(f"lymphocyte count {text!r} must be a positive number")
    if not _NUMBER.match(value):
        hint = ""
        if "," in value:
            hint = " (a decimal comma or a thousands separator: write 4.74, not 4,74)"
        elif "_" in value:
            hint = " ('_' is not allowed in a number)"
        raise ValueError(f"lymphocyte count {text!r} is not a number{hint}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"lymphocyte count {text!r} must be a positive number")
    if number > MAX_COUNT:
        raise ValueError(f"lymphocyte count {text!r} is implausible (above {MAX_COUNT:g} x10^9/L)")
    if number < MIN_COUNT:
        raise ValueError(f"lymphocyte count {text!r} is implausible (below {MIN_COUNT:g} x10^9/L)")
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
    n_fields: int = 0  # fields on this line
    n_header: int = 0  # fields in the header: a row must have as many
    columns: tuple[tuple[str, int], ...] = ()  # (required column, 0-based position)

    def where(self, column: str) -> str:
        """Where a spreadsheet or an editor shows ``column`` of this row: ``column E (DOB)``."""
        position = dict(self.columns).get(column)
        if position is None:
            return ""
        letters, n = "", position + 1
        while n:
            n, r = divmod(n - 1, 26)
            letters = chr(65 + r) + letters
        return f"column {letters} ({column}, field {position + 1})"


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
    columns = tuple(position.items())
    rows = []
    line_no = reader.line_num + 1  # the line a record starts on (a quoted field may span lines)
    for record in reader:
        start, line_no = line_no, reader.line_num + 1
        if not record or all(not cell.strip() for cell in record):
            continue
        values = {c: (record[i] if i < len(record) else "") for c, i in position.items()}
        rows.append(Row(path, start, values, len(record), len(header), columns))
    return rows


# --------------------------------------------------------------------------- images


def _link_problem(path: Path, root: Path) -> str | None:
    """Why a symbolic link cannot be read (a loop, a missing target), or ``None``: a link is read
    through wherever it leads (a Kaggle copy links trainset/, patient folders or images to
    where the download lies; the features are keyed by the target's bytes, not its path)."""
    if not path.is_symlink():
        return None
    try:
        os.path.realpath(path, strict=True)
    except OSError as exc:  # a loop, or a target that does not exist
        return "is a symbolic link loop" if exc.errno == errno.ELOOP else \
            "is a broken symbolic link (its target does not exist)"
    except RuntimeError:  # older Pythons report a loop this way
        return "is a symbolic link loop"
    return None


def check_image(path: Path, root: Path, full: bool = True) -> str | None:
    """Return why ``path`` is not a usable cell image, or ``None`` when it is.

    The file's kind first (a named pipe, a device or a link loop is refused without being
    opened), then its header (format, geometry) and, with ``full``, a strict decode: libjpeg's
    corrupt-data warnings (a file cut short with its end marker put back, bytes overwritten
    mid-stream) make it damaged. See :mod:`lymphomil.data.images`.
    """
    problem = _link_problem(path, root)
    if problem:
        return problem
    return image_problem(path, decode=full)


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


def is_utf8(name: str) -> bool:
    """False for a file name whose bytes are not UTF-8 (Python holds them as surrogates)."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def printable(name: str | Path) -> str:
    """A file name as text a message, a JSON file or a report can hold: bytes that are not
    UTF-8 shown as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def list_images(folder: Path, root: Path, patient_id: str, log: IssueLog,
                check: bool = True, pool: Any = None) -> ImagePaths:
    """The patient's JPEGs sorted by name; hidden files ignored, anything else reported.

    Every entry's kind is checked from the directory listing (no open, no extra system call
    for a plain file): a named pipe, a device or a link loop named ``x.jpg`` is refused even
    without ``check``. With ``check`` each image is decoded strictly (in ``pool`` when given).
    """
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    candidates: list[tuple[str, Path]] = []
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            continue  # .DS_Store, ._foo.jpg, editor files: never cells
        if not is_utf8(name):  # its bytes cannot be written in a cache key, a CSV or a report
            log.report(DataIssue("the file name is not UTF-8 text (shown here with its other "
                                 "bytes as \\xNN)",
                                 "rename the file with a UTF-8 name (e.g. convmv -f latin1 -t "
                                 "utf8 --notest FILE)", file=printable(entry.path),
                                 patient_id=patient_id))
            continue
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir:
            log.report(DataIssue(f"unexpected sub-folder {name!r} in a patient folder",
                                 "move it out of the patient's folder", file=str(path),
                                 patient_id=patient_id))
            continue
        if os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
            log.report(DataIssue(f"not a .jpg file ({name!r})",
                                 "keep only the patient's cell images (.jpg) in the folder",
                                 file=str(path), patient_id=patient_id))
            continue
        problem = _link_problem(path, root) if entry.is_symlink() else None
        if problem is None and not entry.is_file(follow_symlinks=False):
            problem = kind_problem(path)  # a pipe, a device, a link to one: never opened
        candidates.append((name, path) if problem is None else (name, problem))  # type: ignore
    if check:
        todo = [(i, item[1]) for i, item in enumerate(candidates) if isinstance(item[1], Path)]
        run = pool.map if pool is not None else map
        for (i, path), problem in zip(todo, run(lambda p: image_problem(p), [p for _, p in todo])):
            if problem is not None:
                candidates[i] = (candidates[i][0], problem)
    images = []
    for name, outcome in candidates:
        if isinstance(outcome, str):
            log.report(DataIssue(f"image {outcome}",
                                 "replace or remove this image (or run with --on-error skip "
                                 "to leave it out)", file=str(folder / name),
                                 patient_id=patient_id))
            continue
        images.append(name)
    return ImagePaths(folder, images)


# --------------------------------------------------------------------------- cohort


def _csv_files(root: Path) -> list[Path]:
    for rel in (ROOT_CSV, TRAIN_CSV, TEST_CSV):  # a pipe or a device would block or never end
        path = root / rel
        if os.path.lexists(path):
            problem = kind_problem(path)
            if problem:
                raise LymphomilError(f"the annotation file {problem}", file=path,
                                     fix="replace it with the CSV file itself")
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
    if row.n_header and row.n_fields != row.n_header:
        more = row.n_fields > row.n_header
        raise FieldError("fields", f"the row has {row.n_fields} fields, the header "
                                   f"{row.n_header}" + (" (a decimal comma such as 4,74, or a "
                                                        "comma inside an unquoted value?)"
                                                        if more else " (a value is missing)"))
    patient_id = _field("ID", check_id, row.values[COL_ID])
    label = _field("label", parse_label, row.values[COL_LABEL])
    gender = _field("gender", parse_gender, row.values[COL_GENDER])
    dob = _field("date", parse_dob, row.values[COL_DOB])
    if dob > reference:
        raise FieldError("date", f"date of birth {row.values[COL_DOB]!r} is after the reference "
                                 f"date {reference.isoformat()}")
    age = age_at(dob, reference)
    if age > MAX_AGE:
        raise FieldError("date", f"date of birth {row.values[COL_DOB]!r} is implausibly early "
                                 f"(age {age:.0f} at the reference date {reference.isoformat()}; "
                                 f"the limit is {MAX_AGE} years)")
    count = _field("count", parse_count, row.values[COL_COUNT])
    return patient_id, label, gender, dob, age, count


_FIXES = {
    "ID": "give the patient a plain ID such as P123 (and rename its image folder to match)",
    "label": "use 1 (malignant), 0 (reactive) or -1 (unknown, to predict)",
    "gender": "use M or F",
    "date": "write the date as M/D/YYYY (11/3/1933) or DD-MM-YYYY (28-04-1943)",
    "count": "give the lymphocyte count in 10^9 cells/L as a positive number (e.g. 12.4)",
    "fields": "give every row as many comma-separated fields as the header (write decimals "
              "with a point: 4.74; quote a value that holds a comma)",
}


#: FieldError.field -> the CSV column it comes from
_COLUMN_OF = {"ID": COL_ID, "label": COL_LABEL, "gender": COL_GENDER, "date": COL_DOB,
              "count": COL_COUNT}


def _fix_for(exc: ValueError) -> str:
    """The fix for a bad row, chosen by the field (a value like 'IDK' must not pick the ID fix)."""
    return _FIXES.get(getattr(exc, "field", ""), "correct the row")


def load_cohort(root: str | Path, *, reference_date: date = DEFAULT_REFERENCE_DATE,
                on_error: str = "raise", check_images: bool = True,
                cache_dir: str | Path | None = None) -> Cohort:
    """Read a challenge-layout folder into a validated :class:`Cohort`.

    Rows are validated one by one; under ``on_error='skip'`` a bad row or a patient without
    usable images is left out and recorded, a bad image file is left out of its bag and recorded.
    Clean image verdicts are remembered in ``cache_dir`` (``--cache-dir``; default: the user's
    cache), so a later read decodes only new or changed images.
    """
    root = Path(root)
    if not root.is_dir():
        link = _link_problem(root, root) if root.is_symlink() else None
        raise LymphomilError("data folder not found" + (f": the path {link}" if link else ""),
                             file=root,
                             fix="give the path of the challenge folder (dlmi-lymphocytosis/)")
    root = root.resolve()
    log = IssueLog(on_error)
    # clean verdicts kept for later commands (see lymphomil.data.images)
    with memo_in(cache_dir), _decode_pool(check_images) as pool:
        return _load(root, reference_date, log, check_images, pool)


@contextmanager
def _decode_pool(check: bool) -> Iterator[Any]:
    """Threads for the strict decode of every image (libjpeg-turbo releases the GIL)."""
    if not check:
        yield None
        return
    from concurrent.futures import ThreadPoolExecutor

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=max(1, min(8, cores))) as pool:
        yield pool


def _parsed(row: Row, reference: date) -> tuple | None:
    try:
        return _patient_from_row(row, reference)
    except ValueError:
        return None  # the row's own error is reported where the row is read


_COMPARED = ((1, COL_LABEL), (2, COL_GENDER), (3, COL_DOB), (5, COL_COUNT))


def check_csvs_agree(root: Path, reference: date) -> None:
    """Stop when ``clinical_annotation.csv`` and ``trainset/``/``testset/`` CSVs (all present: the
    Kaggle download) give one patient different values: never a silent choice of one file."""
    if not (root / ROOT_CSV).is_file():
        return
    main: dict[str, tuple[Row, tuple]] = {}
    for row in read_table(root / ROOT_CSV):
        parsed = _parsed(row, reference)
        if parsed is not None:
            main.setdefault(parsed[0], (row, parsed))
    for rel in (TRAIN_CSV, TEST_CSV):
        if not (root / rel).is_file():
            continue
        for row in read_table(root / rel):
            parsed = _parsed(row, reference)
            if parsed is None or parsed[0] not in main:
                continue
            first, values = main[parsed[0]]
            for index, column in _COMPARED:
                if parsed[index] != values[index]:
                    raise LymphomilError(
                        f"patient {parsed[0]}: {column} is {first.values[column].strip()!r} "
                        f"here but {row.values[column].strip()!r} in {rel}, row {row.line}: "
                        "the two annotation files disagree", file=first.file, row=first.line,
                        fix=f"correct the wrong one of the two rows ({ROOT_CSV} is the one "
                            "lymphomil reads; the other is checked against it)")


def _load(root: Path, reference_date: date, log: IssueLog, check_images: bool,
          pool: Any) -> Cohort:
    patients: list[Patient] = []
    seen: dict[str, Row] = {}
    check_csvs_agree(root, reference_date)
    for csv_path in _csv_files(root):
        for row in read_table(csv_path):
            raw_id = row.values[COL_ID].strip() or None
            try:
                pid, label, gender, dob, age, count = _patient_from_row(row, reference_date)
            except ValueError as exc:
                where = row.where(_COLUMN_OF.get(getattr(exc, "field", ""), ""))
                log.report(DataIssue(str(exc) + (f" ({where})" if where else ""), _fix_for(exc),
                                     file=str(csv_path), row=row.line, patient_id=raw_id))
                continue
            if pid in seen:
                first = seen[pid]
                log.report(DataIssue(f"duplicate ID {pid!r} (first on line {first.line})",
                                     "keep one row per patient", file=str(csv_path),
                                     row=row.line, patient_id=pid))
                continue
            seen[pid] = row
            split_problem = _split_problem(root, csv_path, pid, label)
            if split_problem:
                log.report(DataIssue(split_problem[0], split_problem[1], file=str(csv_path),
                                     row=row.line, patient_id=pid))
                continue
            folder = _find_folder(root, pid, label)
            if folder is None:
                log.report(DataIssue(
                    _no_folder_problem(root, pid),
                    f"add the folder {TRAIN_DIR}/{pid}/ (or {TEST_DIR}/{pid}/) with its cell "
                    "images, or remove the row", file=str(csv_path), row=row.line, patient_id=pid))
                continue
            images = list_images(folder, root, pid, log, check=check_images, pool=pool)
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
                name = printable(folder.name)
                ignored.append(f"{sub}/{name}")
                log.report(DataIssue(f"image folder {sub}/{name} has no row in the CSV",
                                     "add the patient's row to the CSV or move the folder away"
                                     + ("" if is_utf8(folder.name) else " (and give it a UTF-8 "
                                                                         "name)"),
                                     file=printable(folder), patient_id=name))
    return Cohort(root, patients, log.issues, reference_date, ignored)


def _split_problem(root: Path, csv_path: Path, patient_id: str, label: int
                   ) -> tuple[str, str] | None:
    """Why a row's split is contradictory (problem, fix), or None: never a silent choice."""
    both = all((root / sub / patient_id).is_dir() for sub in (TRAIN_DIR, TEST_DIR))
    if both:
        return (f"patient {patient_id} has an image folder under both {TRAIN_DIR}/ and "
                f"{TEST_DIR}/", f"keep one of {TRAIN_DIR}/{patient_id}/ and "
                f"{TEST_DIR}/{patient_id}/ (labelled patients in {TRAIN_DIR}/)")
    if csv_path == root / TEST_CSV and label in (0, 1):
        return (f"labelled row (LABEL {label}) in the test CSV {TEST_CSV}, which holds the "
                "patients to predict", f"set LABEL -1, or move the row to {TRAIN_CSV}")
    if csv_path == root / TRAIN_CSV and label == -1:
        return (f"row without a label (LABEL -1) in the training CSV {TRAIN_CSV}",
                f"give its label (0 or 1), or move the row to {TEST_CSV}")
    return None


def _no_folder_problem(root: Path, patient_id: str) -> str:
    """Why a patient has no image folder; a link that cannot be followed is named as one."""
    for rel in (TRAIN_DIR, f"{TRAIN_DIR}/{patient_id}", TEST_DIR, f"{TEST_DIR}/{patient_id}"):
        path = root / rel
        if path.is_symlink():
            problem = _link_problem(path, root) or (
                "is a symbolic link to a file, not a folder" if not path.is_dir() else None)
            if problem:
                return f"no image folder for patient {patient_id}: {rel} {problem}"
    return f"no image folder for patient {patient_id}"


def _find_folder(root: Path, patient_id: str, label: int) -> Path | None:
    """The patient's image folder; ``trainset/``, ``testset/`` or the folder itself may be a
    symbolic link (read through: the usual Kaggle copy)."""
    order = (TRAIN_DIR, TEST_DIR) if label in (0, 1) else (TEST_DIR, TRAIN_DIR)
    for sub in order:
        folder = root / sub / patient_id
        if folder.is_dir():
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
