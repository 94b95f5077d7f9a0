"""Issue 32, classes 4 and 6: model and run folders that lie, and artefacts other programs read.

Class 4: a folder's own files never send lymphomil outside it and are trusted no further than
they prove; every file of a model folder is checked before any is used, by the one reader
(``models.base.load_model``: ``predict``, the Python API, ``run`` and its cache), and every reader
of a model folder is fuzzed over every file it holds. Class 6: every JSON lymphomil writes is
strict JSON, and a format-version mismatch says which side is newer and what to do.
Rows in docs/bad-inputs.md (issue 32).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lymphomil.cli import app
from lymphomil.models.base import PatientModel, load_model
from lymphomil.ood import load_ood_checks
from lymphomil.outputs import write_checksums
from lymphomil.referral import load_rule
from lymphomil.runtime.errors import LymphomilError
from tests.reliability.test_bad_inputs import no_traceback, runner


def copy_of(model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


def predict_cli(model: Path, data: Path, tmp_path: Path):
    return runner.invoke(app, ["predict", str(model), str(data), "--all",
                               "--out", str(tmp_path / "pred.csv")])


def assert_refused(result, *words: str) -> None:
    no_traceback(result)
    assert result.exit_code == 2, result.output
    text = result.output.replace("\n", " ")
    assert "internal error" not in text and "fix:" in text
    for word in words:
        assert word in text, (word, result.output)


# --------------------------------------------------------------------------- class 4


def _edit_checksums(folder: Path, change) -> None:
    path = folder / "checksums.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


LEADING_OUT = {
    # case: (edit of the folder, words of the message)
    "a name with ..": (lambda f, outside: _edit_checksums(
        f, lambda s: {**s, "../secret.txt": _sha(outside)}),
        "'../secret.txt', which is not a plain"),
    "an absolute name": (lambda f, outside: _edit_checksums(
        f, lambda s: {**s, str(outside): _sha(outside)}), "which is not a plain relative path"),
    "a listed link leading out": (lambda f, outside: (
        os.symlink(outside, f / "notes.json"),
        _edit_checksums(f, lambda s: {**s, "notes.json": _sha(outside)})),
        "'notes.json', which is (or lies below) a symbolic link"),
    "a sub-folder that is a link": (lambda f, outside: (
        shutil.move(str(f / "sub"), str(outside.parent / "elsewhere")),
        os.symlink(outside.parent / "elsewhere", f / "sub")),
        "which is (or lies below) a symbolic link"),
    "an unlisted file": (lambda f, outside: (f / "evil.pkl").write_bytes(b"\x80\x04."),
                         "holds file(s) its checksums.json does not list: evil.pkl"),
    "a listed file no model folder has": (lambda f, outside: (
        (f / "evil.pkl").write_bytes(b"\x80\x04."), write_checksums(f)),
        "holds file(s) a model folder does not have: evil.pkl"),
}


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", sorted(LEADING_OUT))
def test_a_model_folder_never_leads_outside_itself(image_model_dir: Path,
                                                   small_image_root: Path, tmp_path: Path,
                                                   case: str) -> None:
    """Was: a name in checksums.json leading out of the folder was followed (hashed), a link
    read through, a file nobody wrote ignored."""
    folder = copy_of(image_model_dir, tmp_path)
    outside = tmp_path / "secret.txt"
    outside.write_text("not the model's")
    edit, words = LEADING_OUT[case]
    edit(folder, outside)
    assert_refused(predict_cli(folder, small_image_root, tmp_path), words)
    with pytest.raises(LymphomilError):
        load_model(folder)


@pytest.mark.parametrize("value", [[], [["model.json", "0" * 64]], "model.json", 3, None,
                                   {"model.json": 3}, {"model.json": "abc"}])
def test_checksums_of_the_wrong_json_type_are_a_message(image_model_dir: Path,
                                                        small_image_root: Path, tmp_path: Path,
                                                        value) -> None:
    """Was: "internal error: AttributeError" for a JSON list."""
    folder = copy_of(image_model_dir, tmp_path)
    (folder / "checksums.json").write_text(json.dumps(value))
    assert_refused(predict_cli(folder, small_image_root, tmp_path), "checksums.json",
                   "JSON object of names and 64 hex digits")


def test_every_reader_goes_through_the_one_checked_loader(image_model_dir: Path,
                                                          tmp_path: Path) -> None:
    """The Python API, `PatientModel.load` and `predict` refuse the same hand-edited, re-signed
    folder (the API used to load what predict's schema refused)."""
    folder = copy_of(image_model_dir, tmp_path)
    metadata = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps({**metadata, "reference_date": "2024-13-45"}))
    write_checksums(folder)
    import lymphomil

    for read in (lymphomil.load_model, PatientModel.load, load_model):
        with pytest.raises(LymphomilError, match="is not a date in YYYY-MM-DD"):
            read(folder)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


def _mutated(document, path: list, value):
    if not path or not isinstance(document, (dict, list)) or not document:
        return value
    if isinstance(document, dict):
        key = sorted(document)[path[0] % len(document)]
        return {**document, key: _mutated(document[key], path[1:], value)}
    index = path[0] % len(document)
    return [*document[:index], _mutated(document[index], path[1:], value),
            *document[index + 1:]]


def read_every_part(folder: Path) -> None:
    """What `predict` reads of a model folder: the model (every file checked), its referral
    rule and its OOD checks."""
    load_model(folder)
    load_rule(folder)
    load_ood_checks(folder)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), resign=st.booleans(), as_bytes=st.booleans())
def test_every_file_of_a_model_folder_fuzzed(image_model_dir: Path, data, resign: bool,
                                            as_bytes: bool) -> None:
    """Any file of the folder (sub-models, checksums.json and the safetensors included) holding
    any JSON value anywhere, or any bytes, re-signed or not: every reader raises only a
    LymphomilError naming a file and a fix, or reads a valid model."""
    names = sorted(p.relative_to(image_model_dir).as_posix()
                   for p in image_model_dir.rglob("*") if p.is_file()
                   and not p.name.startswith("."))
    name = data.draw(st.sampled_from(names))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(image_model_dir, Path(tmp) / "model"))
        path = folder / name
        if as_bytes or name.endswith(".safetensors"):
            raw = bytearray(path.read_bytes())
            cut = data.draw(st.integers(0, len(raw)))
            raw[cut:cut + 8] = data.draw(st.binary(max_size=8))
            path.write_bytes(bytes(raw))
        else:
            where = data.draw(st.lists(st.integers(0, 40), max_size=4))
            path.write_text(json.dumps(_mutated(json.loads(path.read_text()), where,
                                                data.draw(JSON))))
        if resign and name != "checksums.json":
            write_checksums(folder)
        try:
            read_every_part(folder)
        except LymphomilError as exc:
            assert exc.file and exc.fix, exc


# --------------------------------------------------------------------------- class 6


def strict_json(text: str):
    """What a strict reader (RFC 8259: no NaN, no Infinity) makes of ``text``."""

    def refuse(constant: str):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_dumps_json_writes_null_for_a_missing_figure() -> None:
    import numpy as np

    from lymphomil.outputs import dumps_json

    data = {"nan": float("nan"), "inf": np.float32("inf"), "array": np.array([1.5, np.nan]),
            "nested": [{"x": -float("inf")}], "fine": 0.25}
    for compact in (False, True):
        assert strict_json(dumps_json(data, compact)) == {
            "nan": None, "inf": None, "array": [1.5, None], "nested": [{"x": None}],
            "fine": 0.25}


def test_every_json_a_command_writes_is_strict(tmp_path: Path) -> None:
    """`cv` of 16 patients in one repeat (a hard subset of one class: NaN figures), `cv
    --json`, `train` and `predict`: every JSON file they write, in their outputs and in the
    cache, reads with a strict reader (cv's metrics.json held a bare NaN)."""
    from lymphomil.data.synth import write_synthetic_cohort

    cohort = write_synthetic_cohort(tmp_path / "cohort", n_patients=16, seed=0,
                                    images_per_patient=(1, 2))
    cache = ["--cache-dir", str(tmp_path / "cache")]
    cv = ["cv", str(cohort), "-m", "logreg-compact", "--folds", "2", "--repeats", "1", *cache]
    result = runner.invoke(app, [*cv, "--out", str(tmp_path / "cv")])
    assert result.exit_code == 0, result.output
    assert "NaN" not in (tmp_path / "cv" / "metrics.json").read_text()
    result = runner.invoke(app, [*cv, "--json", "--no-referral"])
    assert result.exit_code == 0, result.output
    strict_json(result.stdout)
    metrics = json.loads((tmp_path / "cv" / "metrics.json").read_text())
    assert metrics["logreg-compact"]["summary"]["hard_balanced_accuracy"]["mean"] is None
    for argv in (["train", str(cohort), "-m", "logreg-compact", "--out",
                  str(tmp_path / "model"), *cache],
                 ["predict", str(tmp_path / "model"), str(cohort), "--all", "--out",
                  str(tmp_path / "pred.csv"), *cache]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, result.output
    written = [p for p in tmp_path.rglob("*.json") if p.is_file()]
    assert len(written) > 10
    for path in written:
        strict_json(path.read_text(encoding="utf-8"))


VERSIONS = {
    # case: (file, key, value, words)
    "model.json newer": ("model.json", "format", 2,
                         "model.json is format 2, newer than this lymphomil reads (format 1)"),
    "model.json older": ("model.json", "format", 0,
                         "model.json is format 0, older than this lymphomil reads (format 1)"),
    "referral rule newer": ("referral.json", "format", 7, "the referral rule is format 7, newer"),
    "OOD checks newer": ("ood.json", "version", 99, "the OOD checks' file is format 99, newer"),
    "model.json without a number": ("model.json", "format", "one",
                                    "has no valid format number ('one'"),
}


@pytest.mark.parametrize("case", sorted(VERSIONS))
def test_a_format_mismatch_says_which_side_is_newer(image_model_dir: Path,
                                                    small_image_root: Path, tmp_path: Path,
                                                    case: str) -> None:
    name, key, value, words = VERSIONS[case]
    folder = copy_of(image_model_dir, tmp_path)
    data = json.loads((folder / name).read_text())
    (folder / name).write_text(json.dumps({**data, key: value}))
    write_checksums(folder)
    fix = "upgrade lymphomil" if "newer" in words else "re-create the model folder"
    assert_refused(predict_cli(folder, small_image_root, tmp_path), words, fix)


DEEP = "[" * 100_000 + "]" * 100_000


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=JSON, deep=st.booleans(), where=st.sampled_from(["marker", "record", "lock",
                                                               "manifest", "stats"]))
@example(value={"written_by": "lymphomil", "sha256": ["a list"]}, deep=False, where="record")
@example(value=None, deep=True, where="stats")
@example(value={"written_by": "lymphomil", "kind": "cv", "files": ["metrics.json"],
                "sha256": {"/dev/null": "0"}}, deep=False, where="marker")
def test_every_record_lymphomil_reads_back_holding_anything(tmp_path: Path, value, deep: bool,
                                                            where: str) -> None:
    """The records lymphomil keeps beside its outputs and in its cache (an output folder's
    marker, a single file's record, a lock, the CV cache's manifest, the image-statistics memo)
    hold any JSON, or JSON nested 100,000 deep: the command refuses with a message or treats the
    record as absent, never crashes; a name in a marker leading out of the folder is never
    followed (round three's malformed structured input)."""
    from lymphomil.evaluation import cvcache
    from lymphomil.ood import stats
    from lymphomil.outputs import OUTPUT_MARKER, ensure_file_replaceable, ensure_replaceable
    from lymphomil.outputs.locks import _lock_owner
    from lymphomil.outputs.ownership import file_record_path

    text = DEEP if deep else json.dumps(value)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        try:
            if where == "marker":
                (root / "out").mkdir()
                (root / "out" / "metrics.json").write_text("{}")
                (root / "out" / OUTPUT_MARKER).write_text(text)
                ensure_replaceable(root / "out", "cv results", kind="cv")
            elif where == "record":
                (root / "p.csv").write_text("ID\n")
                file_record_path(root / "p.csv").write_text(text)
                ensure_file_replaceable(root / "p.csv", "predictions")
            elif where == "lock":
                (root / ".out.lock").write_text(text)
                owner = _lock_owner(root / ".out.lock")
                assert owner is None or isinstance(owner, tuple)
            elif where == "manifest":
                (root / cvcache.MANIFEST).write_text(text)
                assert isinstance(cvcache._read_manifest(root), list)
            else:
                path = root / "memo.json"
                path.write_text(text)
                stats._MEMO.pop(str(path), None)
                assert isinstance(stats._memo(str(path)), dict)
        except LymphomilError as exc:
            assert exc.fix


def test_a_marker_naming_a_file_outside_its_folder_is_not_followed(tmp_path: Path) -> None:
    """Was: the marker's sha256 list was hashed wherever its names led (`../secret`)."""
    from lymphomil.outputs import OUTPUT_MARKER, changed_files

    (tmp_path / "out").mkdir()
    (tmp_path / "secret").write_text("not lymphomil's")
    (tmp_path / "out" / OUTPUT_MARKER).write_text(json.dumps(
        {"written_by": "lymphomil", "kind": "cv", "files": [],
         "sha256": {"../secret": "0" * 64, str(tmp_path / "secret"): "0" * 64}}))
    import lymphomil.outputs.ownership as ownership

    read: list[str] = []
    real = ownership.sha256_file
    ownership.sha256_file = lambda path, *a: read.append(str(path)) or real(path, *a)
    try:
        assert sorted(changed_files(tmp_path / "out")) == sorted(
            ["../secret", str(tmp_path / "secret")])
    finally:
        ownership.sha256_file = real
    assert read == []
