"""Validating a cohort's rows: each value parsed and checked (ID, label, gender, date of birth,
lymphocyte count) with a fix per field, and the annotation files compared when both exist."""

from __future__ import annotations

import math
import re
from datetime import date
from pathlib import Path
from typing import Any

from lymphomil.data.table import (
    COL_COUNT,
    COL_DOB,
    COL_GENDER,
    COL_ID,
    COL_LABEL,
    ROOT_CSV,
    TEST_CSV,
    TRAIN_CSV,
    Row,
)
from lymphomil.runtime.errors import LymphomilError

MAX_COUNT = 1000.0  # 10^9 cells/L; the labelled set tops out at 295
MIN_COUNT = 0.1  # 10^9 cells/L; below is not a measurable count (the labelled set's lowest: 2.28)
MAX_AGE = 120  # years at the reference date

_ID_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
#: a number as a person writes it in a CSV: ASCII digits, one '.', an optional exponent; no '_',
#: thousands separators, decimal commas or other scripts' digits (Python's float() takes '4_74')
_NUMBER = re.compile(r"^[+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$", re.ASCII)
_LABEL = re.compile(r"^(?:-1|\+?[01])(?:\.0*)?$", re.ASCII)
_SLASH_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")  # M/D/YYYY (the challenge's US style)
_DASH_DATE = re.compile(r"^(\d{1,2})-(\d{1,2})-(\d{4})$")  # DD-MM-YYYY
_ISO_DATE = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})$")  # YYYY-MM-DD


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


def patient_from_row(row: Row, reference: date) -> tuple[str, int, str, date, float, float]:
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
COLUMN_OF = {"ID": COL_ID, "label": COL_LABEL, "gender": COL_GENDER, "date": COL_DOB,
              "count": COL_COUNT}


def fix_for(exc: ValueError) -> str:
    """The fix for a bad row, chosen by the field (a value like 'IDK' must not pick the ID fix)."""
    return _FIXES.get(getattr(exc, "field", ""), "correct the row")


def _parsed(row: Row, reference: date) -> tuple | None:
    try:
        return patient_from_row(row, reference)
    except ValueError:
        return None  # the row's own error is reported where the row is read


_COMPARED = ((1, COL_LABEL), (2, COL_GENDER), (3, COL_DOB), (5, COL_COUNT))


def check_csvs_agree(root: Path, tables: dict[Path, list[Row]], reference: date) -> None:
    """Stop when ``clinical_annotation.csv`` and ``trainset/``/``testset/`` CSVs (all present: the
    Kaggle download; ``tables``: their rows, :func:`lymphomil.data.table.read_tables`) give one
    patient different values: never a silent choice of one file."""
    if root / ROOT_CSV not in tables:
        return
    main: dict[str, tuple[Row, tuple]] = {}
    for row in tables[root / ROOT_CSV]:
        parsed = _parsed(row, reference)
        if parsed is not None:
            main.setdefault(parsed[0], (row, parsed))
    for rel in (TRAIN_CSV, TEST_CSV):
        if root / rel not in tables:
            continue
        for row in tables[root / rel]:
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
