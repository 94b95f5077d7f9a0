"""Reading the annotation CSVs of a cohort folder: which files, their columns, their rows
(docs/design.md §1). The only place the file and column names live."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lymphomil.data.images import kind_problem
from lymphomil.runtime.errors import LymphomilError, did_you_mean

ROOT_CSV = "clinical_annotation.csv"
TRAIN_DIR, TRAIN_CSV = "trainset", "trainset/trainset_true.csv"
TEST_DIR, TEST_CSV = "testset", "testset/testset_data.csv"

COL_ID, COL_LABEL, COL_GENDER, COL_DOB, COL_COUNT = "ID", "LABEL", "GENDER", "DOB", "LYMPH_COUNT"
REQUIRED_COLUMNS = (COL_ID, COL_LABEL, COL_GENDER, COL_DOB, COL_COUNT)
#: the plain layout's (a lab's own export) other columns: an age instead of the date of birth,
#: and the patient's image folder where it is not named like the ID
COL_AGE, COL_FOLDER = "AGE", "FOLDER"
#: what a person calls each column in ``--columns id=...,count=...`` (or a TOML ``[columns]``)
#: -> the column it stands for; its default name in a plain-layout CSV is the challenge's
FIELD_COLUMNS = {"id": COL_ID, "label": COL_LABEL, "gender": COL_GENDER, "dob": COL_DOB,
                 "age": COL_AGE, "count": COL_COUNT, "folder": COL_FOLDER}
#: the columns a value is read from as a number (a decimal comma can split them in two)
NUMERIC_COLUMNS = (COL_COUNT, COL_AGE)


@dataclass(frozen=True)
class Columns:
    """Which columns a CSV must hold and what the file calls them (upper-cased on match)."""

    names: tuple[tuple[str, str], ...]  # (column, its name in the file)
    required: tuple[str, ...]  # columns that must be present
    either: tuple[str, ...] = ()  # at least one of these must be present (DOB or AGE)
    fix: str = ""  # how to name a missing column

    def name(self, column: str) -> str:
        return dict(self.names).get(column, column)


#: the challenge's CSVs: every column required, under its own name
CHALLENGE = Columns(tuple((c, c) for c in REQUIRED_COLUMNS), REQUIRED_COLUMNS,
                    fix=f"the header must name {', '.join(REQUIRED_COLUMNS)} (an unnamed index "
                        "column and extra columns are allowed)")


@dataclass(frozen=True)
class Row:
    file: Path
    line: int  # 1-based line number in the file (header is line 1)
    values: dict[str, str]  # column (COL_*) -> the text of its field
    n_fields: int = 0  # fields on this line
    n_header: int = 0  # fields in the header: a row must have as many
    columns: tuple[tuple[str, int], ...] = ()  # (column read, 0-based position)
    fields: tuple[str, ...] = ()  # every field of the line, as read
    header: tuple[str, ...] = ()  # the header's names, as written

    def where(self, column: str | int) -> str:
        """Where a spreadsheet or an editor shows ``column`` (a COL_* name or a 0-based
        position) of this row: ``column E (DOB, field 5)``."""
        position = column if isinstance(column, int) else dict(self.columns).get(column)
        if position is None:
            return ""
        letters, n = "", position + 1
        while n:
            n, r = divmod(n - 1, 26)
            letters = chr(65 + r) + letters
        name = self.header[position] if position < len(self.header) else column
        return f"column {letters} ({name or column}, field {position + 1})"


def read_table(path: Path, columns: Columns = CHALLENGE) -> list[Row]:
    """Read one annotation CSV into rows keyed by the columns read (``columns``: the
    challenge's, or a plain layout's mapping)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LymphomilError("file not found", file=path,
                             fix="point lymphomil at the challenge folder (it holds "
                                 f"{ROOT_CSV} or {TRAIN_CSV}) or at a lab's CSV") from None
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
                             fix="the first line must be the header "
                                 f"{','.join(columns.name(c) for c in columns.required)}")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return _read_records(path, reader, columns)
    except csv.Error as exc:  # e.g. a field over the csv module's 128 KiB limit
        raise LymphomilError(f"the file is not a readable CSV ({exc})", file=path,
                             row=reader.line_num or None,
                             fix="save the file as comma-separated values, one patient per "
                                 "line") from None


def _read_records(path: Path, reader: Any, columns: Columns) -> list[Row]:
    header = [h.strip() for h in next(reader)]
    if len(header) == 1 and any(sep in header[0] for sep in (";", "\t", "|")):
        sep = next(s for s in (";", "\t", "|") if s in header[0])
        raise LymphomilError(f"the header uses {sep!r} as separator, not ','", file=path, row=1,
                             fix="save the file as comma-separated values")
    upper = [h.upper() for h in header]
    wanted = {c: n.upper() for c, n in columns.names}
    missing = [columns.name(c) for c in columns.required if wanted[c] not in upper]
    if columns.either and not any(wanted[c] in upper for c in columns.either):
        missing.append(" or ".join(columns.name(c) for c in columns.either))
    if missing:
        found = ", ".join(repr(h) for h in header)
        hint = "".join(did_you_mean(m, header, f" for {m}") for m in missing[:1])
        raise LymphomilError(f"missing column(s) {', '.join(missing)}; found {found}{hint}",
                             file=path, row=1, fix=columns.fix)
    present = {c: n for c, n in wanted.items() if n in upper}
    dupes = sorted({columns.name(c) for c, n in present.items() if upper.count(n) > 1})
    if dupes:
        raise LymphomilError(f"column(s) {', '.join(dupes)} appear twice", file=path, row=1,
                             fix="keep one column of each name")
    position = {c: upper.index(n) for c, n in present.items()}
    placed = tuple(position.items())
    names = tuple(header)
    rows = []
    line_no = reader.line_num + 1  # the line a record starts on (a quoted field may span lines)
    for record in reader:
        start, line_no = line_no, reader.line_num + 1
        if not record or all(not cell.strip() for cell in record):
            continue
        values = {c: (record[i] if i < len(record) else "") for c, i in position.items()}
        rows.append(Row(path, start, values, len(record), len(header), placed, tuple(record),
                        names))
    return rows


def read_tables(root: Path) -> dict[Path, list[Row]]:
    """Every annotation CSV of the folder, each read once: first the ones whose rows are the
    cohort (:func:`csv_files`), then, beside clinical_annotation.csv, the trainset/ and testset/
    CSVs it is checked against (the Kaggle download has all three)."""
    read = csv_files(root)
    compared = ([root / rel for rel in (TRAIN_CSV, TEST_CSV) if (root / rel).is_file()]
                if read == [root / ROOT_CSV] else [])
    return {path: read_table(path) for path in [*read, *compared]}


def csv_files(root: Path) -> list[Path]:
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
