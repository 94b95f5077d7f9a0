"""Issue 22 item 4: SIGINT/SIGTERM at any point exit 130/143 with one line (no abort from a worker
thread), and a re-run resumes: the feature extraction reuses every patient finished before the
signal, the CV every finished fit, with results equal to an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.reliability.test_sweep import invoke

CLI = [sys.executable, "-m", "lymphomil.cli"]
# slow enough to be caught mid-way: one stream, tiny batches, a real network
FEATURES = ["features", "{data}", "--backbone", "resnet50-thin", "--workers", "1",
            "--batch-size", "2", "--cache-dir", "{cache}"]
CV = ["cv", "{data}", "-m", "logreg", "--folds", "2", "--repeats", "2", "--cache-dir", "{cache}",
      "--json"]


def _argv(template: list[str], data: Path, cache: Path) -> list[str]:
    return [part.format(data=data, cache=cache) for part in template]


def _signal_once(argv: list[str], folder: Path, pattern: str, sig: int, minimum: int = 2,
                 timeout: float = 240) -> tuple[subprocess.CompletedProcess, int]:
    """Run the CLI; send ``sig`` once ``minimum`` files match ``pattern`` under ``folder``;
    (the finished process, the number of matching files at the signal)."""
    process = subprocess.Popen([*CLI, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=dict(os.environ, COLUMNS="200"))
    deadline = time.monotonic() + timeout
    count = 0
    try:
        while (count := len(list(folder.rglob(pattern)))) < minimum:
            if process.poll() is not None:
                pytest.fail("finished before the signal: " + process.communicate()[1][-2000:])
            assert time.monotonic() < deadline, "the command did not get going"
            time.sleep(0.02)
        process.send_signal(sig)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err), count


@pytest.mark.parametrize("sig,code,word", [
    (signal.SIGINT, 130, "interrupted"),
    pytest.param(signal.SIGTERM, 143, "terminated", marks=pytest.mark.slow)])  # same path
def test_a_signal_during_extraction_exits_cleanly_and_the_rerun_resumes(
        small: Path, tmp_path: Path, sig: int, code: int, word: str) -> None:
    cache = tmp_path / "cache"
    done, at_signal = _signal_once(_argv(FEATURES, small, cache), cache,
                                   "*.pooled.safetensors", sig)
    assert done.returncode == code, done.stderr[-2000:]
    assert "terminate called" not in done.stderr and "Traceback" not in done.stderr
    assert "Aborted" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if word in line]
    assert len(lines) == 1, done.stderr[-2000:]
    assert not list(cache.rglob("*.tmp")), "a claim or a temp file outlived the signal"
    rerun = invoke(*_argv(FEATURES, small, cache))
    assert rerun.exit_code == 0, rerun.output
    hits = int(" ".join(rerun.output.split()).split("cache hits ")[1].split("/")[0])
    assert hits >= at_signal  # every patient finished before the signal is reused


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 patients, 12-16 cells each: a few seconds of extraction, caught mid-way."""
    from lymphomil.data.synth import write_synthetic_cohort

    folder = tmp_path_factory.mktemp("interrupts") / "cohort"
    return write_synthetic_cohort(folder, n_patients=8, seed=2, images_per_patient=(12, 16))


def _comparable(payload: dict) -> dict:
    """The CV figures without the wall-clock seconds (which no two runs share)."""
    for model in payload.values():
        model["summary"].pop("fit_seconds")
    return payload


def test_ctrl_c_during_cv_then_the_rerun_does_only_the_missing_fits(synthetic_root: Path,
                                                                    tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    done, at_signal = _signal_once(_argv(CV, synthetic_root, cache), cache / "cv" / "fits",
                                   "*.fit.json", signal.SIGINT, minimum=1)
    assert done.returncode == 130, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    rerun = subprocess.run([*CLI, *_argv(CV, synthetic_root, cache)], capture_output=True,
                           text=True, timeout=600, env=dict(os.environ, COLUMNS="200"))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    text = " ".join(rerun.stderr.split())
    reused = int(text.split("reused ")[1].split(" of 4")[0])
    assert reused >= at_signal, text
    fresh = subprocess.run([*CLI, *_argv(CV, synthetic_root, tmp_path / "fresh")],
                           capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert _comparable(json.loads(rerun.stdout)) == _comparable(json.loads(fresh.stdout))


def test_stored_fits_give_the_same_numbers_bit_for_bit(tmp_path: Path, monkeypatch) -> None:
    """run_cv with every fit stored, then again with fitting forbidden: identical arrays; with
    half the fit files gone, exactly those are refitted."""
    from lymphomil.data.cohort import labelled_patients, load_cohort
    from lymphomil.data.synth import write_synthetic_cohort
    from lymphomil.evaluation import crossval
    from lymphomil.flows.cv import run_cv

    data = write_synthetic_cohort(tmp_path / "data", n_patients=24, seed=5,
                                  images_per_patient=(1, 2))
    labelled = labelled_patients(load_cohort(data))
    plan = dict(folds=3, repeats=2, seed=7, cache_dir=tmp_path / "cache")
    first = run_cv(["tree"], labelled.patients, labelled.y, **plan)
    fits = sorted((tmp_path / "cache" / "cv" / "fits").glob("*.fit.json"))
    assert len(fits) == 6

    real_fit = crossval.fit_fold
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(crossval, "fit_fold", counted)
    second = run_cv(["tree"], labelled.patients, labelled.y, **plan)
    assert not calls
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.proba, b.proba)  # bit for bit
        assert a.to_dict() == b.to_dict()
    for path in fits[::2]:
        path.unlink()
    third = run_cv(["tree"], labelled.patients, labelled.y, **plan)
    assert len(calls) == 3
    for a, b in zip(first, third):
        np.testing.assert_array_equal(a.proba, b.proba)


def test_a_damaged_fit_file_is_refitted(tmp_path: Path) -> None:
    from lymphomil.data.cohort import labelled_patients, load_cohort
    from lymphomil.data.synth import write_synthetic_cohort
    from lymphomil.flows.cv import run_cv

    data = write_synthetic_cohort(tmp_path / "data", n_patients=16, seed=5,
                                  images_per_patient=(1, 2))
    labelled = labelled_patients(load_cohort(data))
    plan = dict(folds=2, repeats=1, seed=1, cache_dir=tmp_path / "cache")
    first = run_cv(["tree"], labelled.patients, labelled.y, **plan)[0]
    fits = sorted((tmp_path / "cache" / "cv" / "fits").glob("*.fit.json"))
    fits[0].write_text('{"proba": [0.5], "test": [0]')  # torn
    fits[1].write_text(json.dumps({"proba": [], "test": [], "seconds": 0}))  # another task's
    again = run_cv(["tree"], labelled.patients, labelled.y, **plan)[0]
    np.testing.assert_array_equal(first.proba, again.proba)


def test_cache_clear_removes_the_stored_fits(tmp_path: Path) -> None:
    fits = tmp_path / "cache" / "cv" / "fits"
    fits.mkdir(parents=True)
    (fits / ("a" * 32 + ".fit.json")).write_text("{}")
    (fits / "mine.txt").write_text("keep")
    result = invoke("cache", "clear", "--yes", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert not (fits / ("a" * 32 + ".fit.json")).exists()
    assert (fits / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("delay", [0.5, 1.0, 2.5])
def test_a_signal_at_any_point_of_the_start_is_one_line(synthetic_root: Path, tmp_path: Path,
                                                        delay: float) -> None:
    """While the command line loads, parses, reads the cohort or builds the network: exit 130
    and one line, never a traceback or click's `Aborted!`."""
    process = subprocess.Popen([*CLI, *_argv(FEATURES, synthetic_root, tmp_path / "cache")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "Aborted" not in err and "terminate called" not in err
    assert len([line for line in err.splitlines() if "interrupted" in line]) == 1, err
