"""Validating a cohort's rows: each value parsed and checked (ID, label, gender, date of birth,
lymphocyte count) with a fix per field, and the annotation files compared when both exist."""

from __future__ import annotations

import math
import re
from datetime import date
from pathlib import Path
from typing import Any

from lymphomil.data.issues import DataIssue, IssueLog
from lymphomil.data.table import (
    COL_AGE,
    COL_COUNT,
    COL_DOB,
    COL_FOLDER,
    COL_GENDER,
    COL_ID,
    COL_LABEL,
    NUMERIC_COLUMNS,
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


def _number(text: str, noun: str) -> float:
    """A number as a person writes it in a CSV (:data:`_NUMBER`), finite and positive."""
    value = text.strip()
    if not value:
        raise ValueError(f"the {noun} is empty")
    if value.lower().lstrip("+-") in ("inf", "infinity", "nan"):
        raise ValueError(f"{noun} {text!r} must be a positive number")
    if value.startswith("-") and _NUMBER.match(value[1:]):
        raise ValueError(f"{noun} {text!r} must be a positive number")
    if not _NUMBER.match(value):
        hint = ""
        if "," in value:
            hint = " (a decimal comma or a thousands separator: write 4.74, not 4,74)"
        elif "_" in value:
            hint = " ('_' is not allowed in a number)"
        raise ValueError(f"{noun} {text!r} is not a number{hint}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{noun} {text!r} must be a positive number")
    return number


def parse_count(text: str) -> float:
    number = _number(text, "lymphocyte count")
    if number > MAX_COUNT:
        per_microlitre = ("; a count in cells per microlitre? 10^9/L is that divided by 1000"
                          if number <= 1e6 else "")
        raise ValueError(f"lymphocyte count {text!r} is implausible (above {MAX_COUNT:g} "
                         f"x10^9/L){per_microlitre}")
    if number < MIN_COUNT:
        raise ValueError(f"lymphocyte count {text!r} is implausible (below {MIN_COUNT:g} x10^9/L)")
    return number


def parse_age(text: str) -> float:
    """An age in years (a plain layout's AGE column, in place of the date of birth)."""
    number = _number(text, "age")
    if number > MAX_AGE:
        raise ValueError(f"age {text!r} is implausible (above {MAX_AGE} years)")
    return round(number, 2)


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


def patient_from_row(row: Row, reference: date, *, plain: bool = False
                     ) -> tuple[str, int, str, date | None, float, float]:
    """Validate one CSV row; raise :class:`FieldError` (a ValueError) naming the bad field.

    ``plain``: a lab's own export (:mod:`lymphomil.data.plain`): the label may be absent or
    empty (unknown), and an AGE column may stand in for the date of birth (``dob`` is then
    None)."""
    if row.n_header and row.n_fields != row.n_header:
        more = row.n_fields > row.n_header
        raise FieldError("fields", f"the row has {row.n_fields} fields, the header "
                                   f"{row.n_header}" + (" (a decimal comma such as 4,74, or a "
                                                        "comma inside an unquoted value?)"
                                                        if more else " (a value is missing)"))
    split = split_number(row)
    if split is not None:
        raise split
    patient_id = _field("ID", check_id, row.values[COL_ID])
    label_text = row.values.get(COL_LABEL, "")
    if plain and not label_text.strip():
        label = -1  # a lab's patient to predict
    else:
        label = _field("label", parse_label, label_text)
    gender = _field("gender", parse_gender, row.values[COL_GENDER])
    dob: date | None = None
    if COL_DOB in row.values:
        dob = _field("date", parse_dob, row.values[COL_DOB])
        if dob > reference:
            raise FieldError("date", f"date of birth {row.values[COL_DOB]!r} is after the "
                                     f"reference date {reference.isoformat()}")
        age = age_at(dob, reference)
        if age > MAX_AGE:
            raise FieldError("date", f"date of birth {row.values[COL_DOB]!r} is implausibly "
                                     f"early (age {age:.0f} at the reference date "
                                     f"{reference.isoformat()}; the limit is {MAX_AGE} years)")
    else:
        age = _field("age", parse_age, row.values[COL_AGE])
    count = _field("count", parse_count, row.values[COL_COUNT])
    return patient_id, label, gender, dob, age, count


#: two fields that an unquoted decimal comma or thousands separator may have made of one
#: number: ``5,35``, ``1,200`` / ``1,200.5``, ``1.200,5``
_SPLIT_NUMBER = re.compile(r"^(?:\d+,\d+|\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d{1,3}(?:\.\d{3})+,\d+)$",
                           re.ASCII)


def _readings(text: str) -> list[str]:
    """The numbers ``text`` may mean: ``5,35`` -> 5.35; ``1,200`` -> 1.200 or 1200;
    ``1,200.5`` -> 1200.5; ``1.200,5`` -> 1200.5."""
    if "." in text:
        if text.rindex(",") > text.rindex("."):
            return [text.replace(".", "").replace(",", ".")]
        return [text.replace(",", "")]
    decimal = text.replace(",", ".")
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+", text):
        return [decimal, text.replace(",", "")] if text.count(",") == 1 else [text.replace(",", "")]
    return [decimal]


def _folder_name(text: str) -> str:
    if not text.strip():
        raise ValueError("the image folder is empty")
    return text.strip()


#: how each column read is checked when the row is read the other way (shifted by a field)
_PARSERS = {COL_ID: check_id, COL_LABEL: parse_label, COL_GENDER: parse_gender,
            COL_DOB: parse_dob, COL_COUNT: parse_count, COL_AGE: parse_age,
            COL_FOLDER: _folder_name}


def _valid(parse: Any, texts: list[str]) -> bool:
    for text in texts:
        try:
            parse(text)
            return True
        except ValueError:
            continue
    return False


def split_number(row: Row) -> FieldError | None:
    """The row read two ways when its field count cannot tell: a number split in two by an
    unquoted decimal comma or thousands separator (``5,35``) adds a field, and a trailing
    column left empty (a comment column a spreadsheet writes only when filled) takes one away.
    When the other reading — the two fields one number, every later value one column to the
    left, the last column empty — is also a valid row, the row is refused naming both fields:
    a number must never be read as a different one."""
    if not row.fields or row.n_fields != row.n_header:
        return None
    placed = dict(row.columns)
    at = {position: column for column, position in placed.items()}
    last = row.n_header - 1
    if last in at:  # the other reading would leave a column read empty: the row is short
        return None
    fields = [f.strip() for f in row.fields]
    for i in range(last):
        merged = f"{fields[i]},{fields[i + 1]}"
        if not _SPLIT_NUMBER.match(merged):
            continue
        column = at.get(i)
        later = sorted((p, c) for c, p in placed.items() if p > i)
        if column is None and not later:
            continue  # only columns lymphomil does not read would move
        if column is not None and column not in NUMERIC_COLUMNS:
            continue  # a label or an ID is no number with decimals
        if column is not None and not _valid(_PARSERS[column], _readings(merged)):
            continue  # the other reading is not a valid row: this one stands
        if not all(_valid(_PARSERS[c], [fields[p + 1]]) for p, c in later):
            continue
        if column is not None:
            noun = "lymphocyte count" if column == COL_COUNT else "age"
            return FieldError("split", f"{noun} {fields[i]!r} is followed by {fields[i + 1]!r} "
                                       f"in {row.where(i + 1)}: an unquoted decimal comma or "
                                       f"thousands separator ({merged}) would be read as "
                                       f"{fields[i]}, not {' or '.join(_readings(merged))}")
        p, c = later[0]
        return FieldError("split", f"{row.where(i)} holds {fields[i]!r} followed by "
                                   f"{fields[i + 1]!r}: an unquoted decimal comma or thousands "
                                   f"separator ({merged}) would move every later value one "
                                   f"column right, and {row.where(p)} would be read as "
                                   f"{fields[p]!r}, not {fields[p + 1]!r}")
    return None


_FIXES = {
    "ID": "give the patient a plain ID such as P123 (and rename its image folder to match)",
    "label": "use 1 (malignant), 0 (reactive) or -1 (unknown, to predict)",
    "gender": "use M or F",
    "date": "write the date as M/D/YYYY (11/3/1933) or DD-MM-YYYY (28-04-1943)",
    "count": "give the lymphocyte count in 10^9 cells/L as a positive number (e.g. 12.4)",
    "fields": "give every row as many comma-separated fields as the header (write decimals "
              "with a point: 4.74; quote a value that holds a comma)",
    "split": "write numbers with a decimal point and no thousands separator (5.35, 1200), or "
             "quote a value that holds a comma; a whole number next to a separate number: "
             "write it with a point (5.0)",
    "age": "give the age in years as a number (e.g. 72 or 72.5)",
}


#: FieldError.field -> the CSV column it comes from
COLUMN_OF = {"ID": COL_ID, "label": COL_LABEL, "gender": COL_GENDER, "date": COL_DOB,
             "count": COL_COUNT, "age": COL_AGE}


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


def parse_row(row: Row, reference_date: date, seen: dict[str, Row], log: IssueLog,
               plain: bool = False) -> tuple | None:
    """A row's validated values (:func:`patient_from_row`), or None when it is bad or repeats an
    ID of ``seen`` (the problem reported to ``log``, the row's fix with it)."""
    raw_id = row.values[COL_ID].strip() or None
    try:
        parsed = patient_from_row(row, reference_date, plain=plain)
    except ValueError as exc:
        where = row.where(COLUMN_OF.get(getattr(exc, "field", ""), ""))
        log.report(DataIssue(str(exc) + (f" ({where})" if where else ""), fix_for(exc),
                             file=str(row.file), row=row.line, patient_id=raw_id))
        return None
    pid = parsed[0]
    if pid in seen:
        log.report(DataIssue(f"duplicate ID {pid!r} (first on line {seen[pid].line})",
                             "keep one row per patient", file=str(row.file), row=row.line,
                             patient_id=pid))
        return None
    seen[pid] = row
    return parsed
