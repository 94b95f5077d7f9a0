"""Property tests of the CSV reader and the date parser (issue 6, part 6).

Whatever bytes or text come in, ``read_table`` raises only :class:`LymphomilError` and
``parse_dob`` only ``ValueError``; every real date round-trips in each accepted format.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lymphomil.data.cohort import REQUIRED_COLUMNS, parse_count, parse_dob, parse_label, read_table
from lymphomil.errors import LymphomilError

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

CELL = st.one_of(st.text(max_size=12), st.sampled_from(["", "1", "-1", "0", "P1", "11/3/1933",
                                                        "28-04-1943", '"', '""', "a,b", "\r\n"]))
HEADER_LINE = ",".join(("",) + REQUIRED_COLUMNS)


def _read(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "clinical_annotation.csv"
    path.write_bytes(data)
    try:
        rows = read_table(path)
    except LymphomilError as exc:
        assert exc.file == str(path) and exc.fix  # always names the file and the fix
        return
    for row in rows:
        assert set(row.values) == set(REQUIRED_COLUMNS) and row.line >= 2


@FAST
@given(data=st.binary(max_size=400))
@example(data=b"\xef\xbb\xbf")
@example(data=b"\x00\x00")
@example(data=HEADER_LINE.encode() + b'\n0,"P1,1,M')  # quote never closed
def test_read_table_random_bytes(tmp_path: Path, data: bytes) -> None:
    _read(tmp_path, data)


@FAST
@given(rows=st.lists(st.lists(CELL, max_size=8), max_size=6),
       sep=st.sampled_from([",", ";", "\t", "|"]), newline=st.sampled_from(["\n", "\r\n", "\r"]),
       bom=st.booleans())
def test_read_table_random_tables(tmp_path: Path, rows, sep: str, newline: str,
                                  bom: bool) -> None:
    text = newline.join([HEADER_LINE.replace(",", sep)] + [sep.join(r) for r in rows])
    _read(tmp_path, (("\ufeff" if bom else "") + text).encode("utf-8"))


def test_read_table_huge_field_is_a_message(tmp_path: Path) -> None:
    _read(tmp_path, (HEADER_LINE + "\n0,P1,1,M,1/1/1950," + "9" * 200_000 + "\n").encode())


@FAST
@given(text=st.text(max_size=30))
@example(text="٣/٤/١٩٥٠")  # Unicode digits
@example(text="0/0/0000")
@example(text="99-99-9999")
def test_parse_dob_only_value_error(text: str) -> None:
    try:
        result = parse_dob(text)
    except ValueError:
        return
    assert isinstance(result, date)


@FAST
@given(text=st.text(max_size=20))
def test_other_parsers_only_value_error(text: str) -> None:
    for parse in (parse_label, parse_count):
        try:
            parse(text)
        except ValueError:
            pass


@FAST
@given(day=st.dates(min_value=date(1000, 1, 1), max_value=date(9999, 12, 31)),
       pad=st.booleans())
def test_parse_dob_round_trips_each_format(day: date, pad: bool) -> None:
    m, d = (f"{day.month:02d}", f"{day.day:02d}") if pad else (str(day.month), str(day.day))
    assert parse_dob(f"{m}/{d}/{day.year}") == day  # M/D/YYYY (the challenge's)
    assert parse_dob(f"{d}-{m}-{day.year}") == day  # DD-MM-YYYY
    assert parse_dob(f"{day.year}-{m}-{d}") == day  # YYYY-MM-DD
    assert parse_dob(f"  {day.isoformat()}  ") == day
