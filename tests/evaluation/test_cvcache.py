"""The CV-result cache misses whenever anything its results depend on changes (one test per key
input), hits when nothing does, and a hit returns what refitting returns."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lymphomil.data.cohort import as_patient_array, labels_of, load_cohort
from lymphomil.evaluation import cvcache
from lymphomil.models.base import create_model

PLAN = dict(folds=2, repeats=1, seed=0)


@pytest.fixture(scope="module")
def cohort(synthetic_root: Path):
    """The synthetic cohort and its labelled patients, read only (the tests change copies of the
    patient records, never the files)."""
    return synthetic_root, as_patient_array(load_cohort(synthetic_root).labelled)


@pytest.fixture
def private_cohort(synthetic_root: Path, tmp_path: Path):
    """A private copy of the synthetic cohort (its images may be rewritten) and its labelled
    patients."""
    root = tmp_path / "cohort"
    shutil.copytree(synthetic_root, root)
    return root, as_patient_array(load_cohort(root).labelled)


def key(patients, model=None, name="tree", **plan) -> str:
    return cvcache.cv_key(model or create_model(name), name, patients, **{**PLAN, **plan})


def changed(patients, i: int, **fields):
    out = patients.copy()
    out[i] = replace(patients[i], **fields)
    return out


def test_the_same_inputs_give_the_same_key(cohort) -> None:
    root, patients = cohort
    assert key(patients) == key(as_patient_array(load_cohort(root).labelled))


@pytest.mark.parametrize("field, value", [
    ("label", lambda p: 1 - p.label), ("age", lambda p: p.age + 1.0),
    ("lymph_count", lambda p: p.lymph_count * 1.5), ("gender", lambda p: "MF"[p.gender == "M"]),
    ("id", lambda p: p.id + "x"), ("image_paths", lambda p: tuple(p.image_paths)[1:])])
def test_a_changed_patient_misses(cohort, field: str, value) -> None:
    _, patients = cohort
    assert key(changed(patients, 3, **{field: value(patients[3])})) != key(patients)


def test_a_changed_or_dropped_patient_set_misses(cohort) -> None:
    _, patients = cohort
    assert key(patients[1:]) != key(patients)
    assert key(patients[::-1]) != key(patients)


def test_a_changed_parameter_model_or_plan_misses(cohort) -> None:
    _, patients = cohort
    base = key(patients)
    assert key(patients, create_model("tree", random_state=1)) != base
    assert key(patients, create_model("tree", param_grid="none")) != base
    assert key(patients, name="logreg") != base
    assert key(patients, create_model("logreg"), name="tree") != base  # same name, other class
    for plan in (dict(folds=3), dict(repeats=2), dict(seed=1)):
        assert key(patients, **plan) != base


def test_other_library_versions_miss(cohort, monkeypatch) -> None:
    _, patients = cohort
    base = key(patients)
    real = cvcache.library_versions
    monkeypatch.setattr(cvcache, "library_versions", lambda: {**real(), "torch": "0.0"})
    assert key(patients) != base


def test_edited_lymphomil_source_misses(cohort, monkeypatch, tmp_path: Path) -> None:
    """The version stays put while a model's code is edited: the source digest does not."""
    from lymphomil.models import base as model_base
    from lymphomil.runtime import environment as runtime

    _, patients = cohort
    before = key(patients)
    monkeypatch.setattr(model_base, "source_digest", lambda: "0" * 16)
    assert key(patients) != before
    # the digest sees any file's bytes or name, not its compiled bytecode
    tree = tmp_path / "pkg"
    (tree / "models").mkdir(parents=True)
    (tree / "models" / "a.py").write_text("x = 1\n")
    digest = runtime.tree_digest(tree)
    (tree / "models" / "__pycache__").mkdir()
    (tree / "models" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"compiled")
    assert runtime.tree_digest(tree) == digest
    (tree / "models" / "a.py").write_text("x = 2\n")
    assert runtime.tree_digest(tree) != digest
    (tree / "models" / "a.py").rename(tree / "models" / "b.py")
    assert runtime.tree_digest(tree) not in (digest, runtime.tree_digest(tree / "models"))
    assert runtime.source_digest() == runtime.tree_digest(Path(runtime.__file__).parents[1])


def test_a_rewritten_image_misses(private_cohort) -> None:
    """New bytes in a cell image: a miss, even when the size and the mtime stay the same."""
    root, patients = private_cohort
    base = key(patients)
    path = Path(patients[0].image_paths[0])
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # same size, other content
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert key(patients) != base
    path.touch()  # and a plain rewrite (new mtime)
    assert key(patients) != base


def test_run_cv_hits_only_when_nothing_changed(cohort, tmp_path: Path) -> None:
    """Through the harness: a second identical run is read back (no fit, same numbers); a
    changed label refits, and its results are those of a run without any cache."""
    from lymphomil.flows.cv import run_cv

    _, patients = cohort
    y = labels_of(patients)
    cache = tmp_path / "cache"
    fits: list = []

    def cv(patients, y, use_cv_cache=True):
        return run_cv(["tree"], patients, y, **PLAN, cache_dir=cache, use_cv_cache=use_cv_cache,
                      on_fit=lambda n=1, rate=None, **_: fits.append(rate))[0]

    first = cv(patients, y)
    assert fits and "cached" not in fits
    fits.clear()
    again = cv(patients, y)
    assert fits == ["cached"]
    np.testing.assert_array_equal(again.proba, first.proba)

    flipped = y.copy()
    flipped[0] = 1 - flipped[0]
    relabelled = changed(patients, 0, label=int(flipped[0]))
    fits.clear()
    result = cv(relabelled, flipped)
    assert fits and "cached" not in fits
    fresh = cv(relabelled, flipped, use_cv_cache=False)
    np.testing.assert_array_equal(result.proba, fresh.proba)
    np.testing.assert_array_equal(result.y, flipped)
