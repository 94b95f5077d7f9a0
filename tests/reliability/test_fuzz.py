"""Property tests of the CSV reader and the date parser (issue 6, part 6).

Whatever bytes or text come in, ``read_table`` raises only :class:`LymphomilError` and
``parse_dob`` only ``ValueError``; every real date round-trips in each accepted format.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lymphomil.data.table import REQUIRED_COLUMNS, read_table
from lymphomil.data.validate import MAX_COUNT, MIN_COUNT, parse_count, parse_dob, parse_label
from lymphomil.runtime.errors import LymphomilError

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
    """A field over the csv module's 128 KiB limit: one message naming the file, no crash."""
    path = tmp_path / "clinical_annotation.csv"
    path.write_bytes((HEADER_LINE + "\n0,P1,1,M,1/1/1950," + "9" * 200_000 + "\n").encode())
    with pytest.raises(LymphomilError, match="not a readable CSV") as raised:
        read_table(path)
    assert raised.value.file == str(path) and raised.value.fix


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
@example(text="4.74")
@example(text="-1")
def test_other_parsers_give_a_valid_value_or_a_value_error(text: str) -> None:
    """A label is -1, 0 or 1 and a count a number in the plausible range; anything else is a
    ValueError (any other exception fails the test)."""
    for parse, valid in ((parse_label, lambda v: v in (-1, 0, 1) and isinstance(v, int)),
                         (parse_count, lambda v: MIN_COUNT <= v <= MAX_COUNT)):
        try:
            value = parse(text)
        except ValueError:
            continue
        assert valid(value), (parse.__name__, text, value)


@FAST
@given(day=st.dates(min_value=date(1000, 1, 1), max_value=date(9999, 12, 31)),
       pad=st.booleans())
def test_parse_dob_round_trips_each_format(day: date, pad: bool) -> None:
    m, d = (f"{day.month:02d}", f"{day.day:02d}") if pad else (str(day.month), str(day.day))
    assert parse_dob(f"{m}/{d}/{day.year}") == day  # M/D/YYYY (the challenge's)
    assert parse_dob(f"{d}-{m}-{day.year}") == day  # DD-MM-YYYY
    assert parse_dob(f"{day.year}-{m}-{d}") == day  # YYYY-MM-DD
    assert parse_dob(f"  {day.isoformat()}  ") == day


# --------------------------------------------------------------------------- structures (issue 22)
# Every reader of JSON or TOML that a person can hand lymphomil a file for, fed random structures
# of any type and depth: each either reads it or raises LymphomilError (naming the file), never
# anything else. Caches lymphomil writes for itself (the clean-image memo, a feature file's
# header) treat such a file as absent. Readers: outputs.read_json (model folders, model cards),
# config.load_config (TOML), models.base.load_model (every file of a model folder: also
# tests/reliability/test_artefacts.py), data.images' memo,
# features.cache (feature file headers, spec.json). CSV: the tests above (read_table).

import json as _json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=10))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=25)
DEEP = 100_000


def _deep(opening: str, closing: str, core: str = "1") -> str:
    return opening * DEEP + core + closing * DEEP


DEEP_JSON = [_deep("[", "]"), _deep('{"a":', "}"), "[" * DEEP]


def _json_text(value) -> str:
    return _json.dumps(value, allow_nan=True)


@FAST
@given(value=JSON_VALUES)
@example(value=None)
def test_read_json_any_structure(tmp_path: Path, value) -> None:
    from lymphomil.outputs import read_json

    path = tmp_path / "x.json"
    path.write_text(_json_text(value))
    assert read_json(path) == value or value != value or _json_text(value) == _json_text(
        read_json(path))


@pytest.mark.parametrize("text", DEEP_JSON, ids=["deep list", "deep object", "unclosed"])
def test_read_json_any_depth(tmp_path: Path, text: str) -> None:
    from lymphomil.outputs import read_json

    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(LymphomilError) as caught:
        read_json(path)
    assert caught.value.file == str(path) and caught.value.fix


def _toml_value(value, depth: int = 0) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if value == value and abs(value) != float("inf") else "nan"
    if isinstance(value, str):
        return _json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v, depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_json.dumps(k)} = {_toml_value(v, depth + 1)}"
                               for k, v in value.items()) + "}"
    return '""'  # None: TOML has no null


CONFIG_KEYS = st.sampled_from(["data", "cache_dir", "candidates", "model", "folds", "repeats",
                               "seed", "reference_date", "on_error", "features", "threads",
                               "engine", "gallery_k", "synthetic_patients", "nested_selection",
                               "foldz", "x"])


@FAST
@given(items=st.dictionaries(CONFIG_KEYS, JSON_VALUES, max_size=5))
def test_load_config_any_structure(tmp_path: Path, items: dict) -> None:
    from lymphomil.flows.config import load_config

    path = tmp_path / "run.toml"
    path.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in items.items()))
    try:
        load_config(path, {})
    except LymphomilError as exc:
        assert exc.file == str(path) and exc.fix


@pytest.mark.parametrize("text", [f"a = {_deep('[', ']')}\n", f"a = {_deep('{b = ', '}')}\n",
                                  "[a]\n" + "".join(f"[{'x.' * 200}y{i}]\n" for i in range(3))],
                         ids=["deep array", "deep inline table", "long dotted tables"])
def test_load_config_any_depth(tmp_path: Path, text: str) -> None:
    from lymphomil.flows.config import load_config

    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(LymphomilError) as caught:
        load_config(path, {})
    assert caught.value.file == str(path)


@pytest.fixture(scope="module")
def model_copy_source(logreg_model_dir: Path) -> Path:
    return logreg_model_dir


def _mutated(document, path: list, value):
    """``document`` with the item at ``path`` (keys/indices, as far as they go) replaced."""
    if not path or not isinstance(document, (dict, list)) or not document:
        return value
    if isinstance(document, dict):
        keys = sorted(document)
        key = keys[path[0] % len(keys)]
        return {**document, key: _mutated(document[key], path[1:], value)}
    index = path[0] % len(document)
    return [*document[:index], _mutated(document[index], path[1:], value), *document[index + 1:]]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["metadata.json", "model.json", "model_card.json"]),
       where=st.lists(st.integers(min_value=0, max_value=50), max_size=4), value=JSON_VALUES,
       deep=st.booleans())
def test_model_folder_any_structure(model_copy_source: Path, name: str, where: list, value,
                                    deep: bool) -> None:
    """A model folder whose JSON files hold anything (checksums made to match, as a person
    who edits by hand and re-signs would): predict's readers raise only LymphomilError."""
    from lymphomil.models.base import load_model
    from lymphomil.outputs import write_checksums

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(model_copy_source, Path(tmp) / "model"))
        path = folder / name
        if deep:
            path.write_text(DEEP_JSON[0])
        else:
            document = _json.loads(path.read_text()) if path.exists() else {}
            path.write_text(_json_text(_mutated(document, where, value)))
        write_checksums(folder)
        try:
            load_model(folder)
        except LymphomilError as exc:
            assert exc.file and exc.fix


@FAST
@given(value=JSON_VALUES, deep=st.booleans())
@example(value={"a.jpg": [1, 2, float("inf"), 4]}, deep=False)  # int(inf): OverflowError
def test_image_memo_any_structure(tmp_path: Path, value, deep: bool) -> None:
    """The clean-image memo (a cache lymphomil writes for itself) holding anything is no memo."""
    from lymphomil.data import images

    path = tmp_path / "validated" / f"images-v{images.MEMO_VERSION}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(DEEP_JSON[1] if deep else _json_text(
        {"checks": images._CHECKS, "entries": value} if isinstance(value, dict) else value))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LYMPHOMIL_CACHE_DIR", str(tmp_path))
        patch.setattr(images, "_MEMO", None)
        memo = images._memo()
    assert isinstance(memo, dict)
    assert all(isinstance(v, tuple) and len(v) == 4 for v in memo.values())


@FAST
@given(value=JSON_VALUES, deep=st.booleans(), inner=st.booleans())
def test_feature_file_header_any_structure(tmp_path: Path, value, deep: bool,
                                           inner: bool) -> None:
    """A feature file (or spec.json) whose header holds anything is recomputed, not trusted."""
    import struct

    from lymphomil.features.cache import SPEC_JSON, FeatureCache, Plan

    cache = FeatureCache(tmp_path / "features")
    folder = tmp_path / "features" / "small-cnn-32px-fp32-0123456789abcdef"
    folder.mkdir(parents=True, exist_ok=True)
    plan = Plan("P1", "0" * 16, ("a.jpg",), ("d",), folder)
    text = DEEP_JSON[0] if deep else _json_text(value)
    if inner:  # a well-formed safetensors header whose lymphomil metadata is the structure
        text = _json_text({"features": {"data_offsets": [0, 0]},
                           "__metadata__": {"lymphomil": text}})
    header = text.encode()
    plan.path("pooled").write_bytes(struct.pack("<Q", len(header)) + header)
    (folder / SPEC_JSON).write_text(text)
    assert cache._valid_on_disk(plan, "pooled", "x") is False
    assert cache._read(plan, "pooled", "x") is None
    cache.info()
