"""The feature cache: hits, misses, invalidation, resume after a kill, corrupt entries,
precision."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lymphomil.data.cohort import load_cohort
from lymphomil.data.synth import write_synthetic_cohort
from lymphomil.features import FeatureCache, FeatureSpec, attach_store
from lymphomil.features.cache import SUFFIX
from lymphomil.runtime.errors import LymphomilError
from tests.killing import kill_extraction_midway

SPEC = FeatureSpec(backbone="small-cnn", weights="none", crop=64, precision="fp32")


@pytest.fixture
def cohort_root(tmp_path: Path) -> Path:
    """A tiny cohort of our own (tests modify its images)."""
    return write_synthetic_cohort(tmp_path / "cohort", n_patients=6, seed=1,
                                  images_per_patient=(3, 7))


def _patients(root: Path) -> list:
    return load_cohort(root).patients


def _files(cache: FeatureCache, kind: str = "pooled") -> list[Path]:
    return sorted(cache.root.rglob(f"*.{kind}{SUFFIX}"))


def test_hit_then_miss_then_load(cohort_root: Path, tmp_path: Path) -> None:
    patients = _patients(cohort_root)
    cache = FeatureCache(tmp_path / "cache", workers=2, batch_size=4)
    cache.ensure(patients, SPEC)
    assert cache.last_run["computed_patients"] == len(patients)
    assert len(_files(cache)) == len(patients)
    first = {p.id: cache.load(p, SPEC).copy() for p in patients}
    assert all(first[p.id].shape == (p.n_images, 256) for p in patients)
    assert all(first[p.id].dtype == np.float32 for p in patients)

    again = FeatureCache(tmp_path / "cache", batch_size=4)  # a new process sees the same files
    again.ensure(patients, SPEC)
    assert again.last_run["cached_patients"] == len(patients)
    assert again.last_run["computed_images"] == 0
    for p in patients:
        np.testing.assert_array_equal(again.load(p, SPEC), first[p.id])

    # another crop is another spec: a miss, in another folder
    other = FeatureSpec(backbone="small-cnn", weights="none", crop=48, precision="fp32")
    again.ensure(patients[:2], other)
    assert again.last_run["computed_patients"] == 2
    assert len(again.info()["specs"]) == 2


def test_load_computes_one_missing_patient_and_bag_works(cohort_root: Path, tmp_path: Path) -> None:
    patients = attach_store(_patients(cohort_root), FeatureCache(tmp_path / "cache"))
    bag = patients[0].bag(SPEC)
    assert bag.shape == (patients[0].n_images, 256)
    assert not bag.flags.writeable  # the in-memory copy is shared: read-only
    assert len(list((tmp_path / "cache").rglob(f"*{SUFFIX}"))) == 1


def test_changed_image_recomputes_only_its_patient(cohort_root: Path, tmp_path: Path) -> None:
    patients = _patients(cohort_root)
    cache = FeatureCache(tmp_path / "cache", batch_size=4)
    cache.ensure(patients, SPEC)
    before = {p.id: cache.load(p, SPEC).copy() for p in patients}
    target = patients[2]
    image = Image.open(target.image_paths[0]).convert("RGB").transpose(Image.Transpose.ROTATE_90)
    image.save(target.image_paths[0], quality=90)

    fresh = FeatureCache(tmp_path / "cache", batch_size=4)
    reloaded = _patients(cohort_root)
    fresh.ensure(reloaded, SPEC)
    assert fresh.last_run["computed_patients"] == 1
    assert fresh.last_run["cached_patients"] == len(patients) - 1
    after = fresh.load(reloaded[2], SPEC)
    assert not np.allclose(after[0], before[target.id][0])
    np.testing.assert_allclose(after[1:], before[target.id][1:], rtol=1e-5, atol=1e-6)


def test_corrupt_entries_are_recomputed(cohort_root: Path, tmp_path: Path) -> None:
    patients = _patients(cohort_root)
    cache = FeatureCache(tmp_path / "cache")
    cache.ensure(patients, SPEC)
    reference = {p.id: cache.load(p, SPEC).copy() for p in patients}
    files = _files(cache)
    files[0].write_bytes(files[0].read_bytes()[:-100])  # truncated
    data = bytearray(files[1].read_bytes())
    data[-8] ^= 0xFF  # one flipped bit in the array: only the checksum sees it
    files[1].write_bytes(bytes(data))
    files[2].write_bytes(b"garbage")

    fresh = FeatureCache(tmp_path / "cache")
    fresh.ensure(patients, SPEC)
    assert fresh.last_run["computed_patients"] == 2  # the truncated and the garbage file
    for p in patients:  # the flipped bit is caught by load's checksum and recomputed there
        np.testing.assert_array_equal(fresh.load(p, SPEC), reference[p.id])
    assert FeatureCache(tmp_path / "cache").info()["specs"][0]["files"]["pooled"] == len(patients)


def test_fp32_is_deterministic_across_runs(cohort_root: Path, tmp_path: Path) -> None:
    patients = _patients(cohort_root)
    a, b = FeatureCache(tmp_path / "a", workers=2), FeatureCache(tmp_path / "b", workers=1)
    a.ensure(patients, SPEC)
    b.ensure(patients[::-1], SPEC)  # other batch neighbours, other thread layout
    for p in patients:
        np.testing.assert_array_equal(a.load(p, SPEC), b.load(p, SPEC))


def test_tta_views_map_and_kinds(cohort_root: Path, tmp_path: Path) -> None:
    patients = _patients(cohort_root)[:2]
    cache = FeatureCache(tmp_path / "cache")
    tta = dataclasses.replace(SPEC, tta=True)
    cache.ensure(patients, tta, kinds=("pooled", "map"))
    p = patients[0]
    views = cache.load(p, tta, "views")
    assert views.shape == (8, p.n_images, 256)  # the 8 dihedral views
    np.testing.assert_allclose(cache.load(p, tta), views.mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(cache.load(p, SPEC), views[0])  # plain view, same files
    fmap = cache.load(p, SPEC, "map")
    assert fmap.shape == (p.n_images, 256, 4, 4) and fmap.dtype == np.float32
    np.testing.assert_allclose(fmap.mean(axis=(2, 3)), views[0], rtol=1e-2, atol=1e-3)  # fp16 map
    with pytest.raises(LymphomilError, match="unknown feature kind"):
        cache.load(p, SPEC, "logits")


def test_bf16_agrees_with_fp32(cohort_root: Path, tmp_path: Path) -> None:
    patients = _patients(cohort_root)[:2]
    cache = FeatureCache(tmp_path / "cache")
    specs = [FeatureSpec("efficientnet-lite0", "imagenet", 112, False, p) for p in ("fp32", "bf16")]
    for patient in patients:
        fp32, bf16 = (cache.load(patient, s) for s in specs)
        cosine = (fp32 * bf16).sum(1) / (np.linalg.norm(fp32, axis=1)
                                         * np.linalg.norm(bf16, axis=1))
        assert cosine.min() > 0.99


def test_broken_image_follows_the_error_policy(cohort_root: Path, tmp_path: Path) -> None:
    patient = _patients(cohort_root)[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff" + b"\x00" * 500 + b"\xff\xd9")  # passes the cheap checks
    patient = dataclasses.replace(patient, image_paths=patient.image_paths + (broken,))
    with pytest.raises(LymphomilError, match="broken.jpg"):
        FeatureCache(tmp_path / "raise").load(patient, SPEC)
    skipping = FeatureCache(tmp_path / "skip", on_error="skip")
    bag = skipping.load(patient, SPEC)
    assert bag.shape == (patient.n_images - 1, 256)  # left out of its bag, as the loader does
    assert [Path(i.file).name for i in skipping.issues] == ["broken.jpg"]


def test_info_and_clear(cohort_root: Path, tmp_path: Path) -> None:
    patients = _patients(cohort_root)
    cache = FeatureCache(tmp_path / "cache")
    cache.ensure(patients, SPEC)
    info = cache.info()
    assert info["files"] == len(patients) and info["bytes"] > 0
    assert (info["specs"][0]["backbone"] == "small-cnn"
            and info["specs"][0]["patients"] == len(patients))
    (tmp_path / "cache" / "keep-me.txt").write_text("not ours")
    freed = cache.clear()
    assert freed >= info["bytes"] and cache.info()["files"] == 0
    assert (tmp_path / "cache" / "keep-me.txt").exists()


def test_default_root_honours_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LYMPHOMIL_CACHE_DIR", str(tmp_path / "env-cache"))
    assert FeatureCache().root == tmp_path / "env-cache" / "features"  # cv/ etc. sit beside it
    monkeypatch.delenv("LYMPHOMIL_CACHE_DIR")
    assert FeatureCache().root.name == "features" and "lymphomil" in str(FeatureCache().root)


_KILLABLE = textwrap.dedent("""
    import sys, time
    from lymphomil.data.cohort import load_cohort
    from lymphomil.features import FeatureCache, FeatureSpec
    patients = load_cohort(sys.argv[1]).patients
    cache = FeatureCache(sys.argv[2], workers=1, batch_size=2,
                         on_progress=lambda done, total, rate: time.sleep(0.15))
    cache.ensure(patients, FeatureSpec("small-cnn", "none", 64, False, "fp32"))
""")


def test_resume_after_a_kill(tmp_path: Path) -> None:
    root = write_synthetic_cohort(tmp_path / "cohort", n_patients=10, seed=2,
                                  images_per_patient=(4, 6))
    patients = _patients(root)
    cache_dir = tmp_path / "cache"
    finished = kill_extraction_midway(_KILLABLE, [str(root), str(cache_dir)], cache_dir,
                                      f"*.pooled{SUFFIX}")
    assert 2 <= finished < len(patients)

    cache = FeatureCache(cache_dir, batch_size=2)  # the killed run's (part of the key)
    cache.ensure(patients, SPEC)
    assert cache.last_run["cached_patients"] == finished  # every finished patient is reused
    assert cache.last_run["computed_patients"] == len(patients) - finished
    reference = FeatureCache(tmp_path / "reference")
    for p in patients:  # no half-written file was trusted: all equal a clean run
        np.testing.assert_array_equal(cache.load(p, SPEC), reference.load(p, SPEC))


def test_the_next_extraction_clears_a_killed_writers_temp_files(cohort_root: Path,
                                                                tmp_path: Path) -> None:
    from lymphomil.outputs import host_name

    patients = _patients(cohort_root)
    cache = FeatureCache(tmp_path / "cache")
    cache.ensure(patients[:1], SPEC)
    folder = _files(cache)[0].parent
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # what a SIGKILL inside atomic_write_bytes leaves: a half-written temp file named for its owner
    leftover = folder / f".{patients[1].id}-x.pooled{SUFFIX}.{host_name()}-{dead.pid}.abc123de.tmp"
    leftover.write_bytes(b"half")
    live = folder / f".{patients[1].id}-x.pooled{SUFFIX}.{host_name()}-{os.getpid()}.fgh456ij.tmp"
    live.write_bytes(b"being written")
    assert cache.info()["specs"][0]["temp_files"] == 2

    cache.ensure(patients, SPEC)
    assert not leftover.exists() and live.exists()  # a live writer's file is its own
    assert cache.info()["specs"][0]["temp_files"] == 1


def test_image_digests_are_the_files_sha256_and_follow_changes(tmp_path: Path) -> None:
    import hashlib

    from lymphomil.features.cache import forget_digests, image_digests

    files = []
    for i in range(80):  # above the threaded cut-off
        path = tmp_path / f"{i:03d}.bin"
        path.write_bytes(os.urandom(100 + 997 * i))
        files.append(path)
    expected = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    forget_digests()
    assert image_digests(files, threads=1) == expected
    forget_digests()
    assert image_digests([str(p) for p in files], threads=3) == expected
    files[5].write_bytes(b"changed, and of another size")  # the memo must not hide a change
    assert (image_digests(files[:6])[5]
            == hashlib.sha256(b"changed, and of another size").hexdigest())
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert image_digests([empty]) == [hashlib.sha256(b"").hexdigest()]
    with pytest.raises(LymphomilError, match="cannot read the image"):
        image_digests([tmp_path / "missing.jpg"])


def test_path_strings_keep_the_bag_order(cohort_root: Path) -> None:
    from lymphomil.data.folders import path_strings

    patient = _patients(cohort_root)[0]
    strings = path_strings(patient.image_paths)
    assert strings == [str(p) for p in patient.image_paths]
    assert path_strings(tuple(patient.image_paths)) == strings
