"""Same data, config and seed → bit-identical outputs, across processes and thread counts.

Each run is a separate ``lymphomil`` process with its own empty feature cache, so feature
extraction (efficientnet-lite0 @112 for ``image-logreg``), CV, training and prediction are all
repeated. Wall-clock timings (``fit_seconds``) are the only fields allowed to differ.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LYMPHOMIL = Path(sys.executable).with_name("lymphomil")
MODELS = ("tree", "image-logreg")


def lymphomil(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, LYMPHOMIL_CACHE_DIR=str(cwd / "cache-default"))
    result = subprocess.run([str(LYMPHOMIL), *map(str, args)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _strip_timings(value):
    if isinstance(value, dict):
        return {k: _strip_timings(v) for k, v in value.items()
                if k not in ("fit_seconds", "seconds", "timings_seconds")}
    if isinstance(value, list):
        return [_strip_timings(v) for v in value]
    return value


def one_run(root: Path, work: Path, threads: int) -> dict[str, bytes]:
    """cv (tree + image-logreg) then train + predict image-logreg; the bytes of every output."""
    work.mkdir(parents=True)
    cache = work / "cache"
    models = [a for m in MODELS for a in ("-m", m)]
    lymphomil("cv", root, *models, "--folds", "3", "--repeats", "1", "--seed", "7",
              "--out", work / "cv", "--cache-dir", cache, "--threads", threads, cwd=work)
    lymphomil("train", root, "-m", "image-logreg", "--seed", "7", "--out", work / "model",
              "--cache-dir", cache, "--threads", threads, cwd=work)
    lymphomil("predict", work / "model", root, "--all", "--out", work / "pred.csv",
              "--cache-dir", cache, "--threads", threads, cwd=work)
    outputs = {f"cv/oof_{m}.csv": (work / "cv" / f"oof_{m}.csv").read_bytes() for m in MODELS}
    metrics = json.loads((work / "cv" / "metrics.json").read_text())
    outputs["cv/metrics.json (timings removed)"] = json.dumps(_strip_timings(metrics),
                                                              sort_keys=True).encode()
    outputs["pred.csv"] = (work / "pred.csv").read_bytes()
    outputs["model/arrays.safetensors"] = (work / "model" / "arrays.safetensors").read_bytes()
    return outputs


@pytest.fixture(scope="module")
def first_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return one_run(synthetic_root, tmp_path_factory.mktemp("det") / "a", threads=2)


@pytest.mark.slow
def test_two_processes_give_identical_bytes(synthetic_root: Path, tmp_path: Path,
                                            first_run: dict[str, bytes]) -> None:
    second = one_run(synthetic_root, tmp_path / "b", threads=2)
    for name, data in first_run.items():
        assert second[name] == data, f"{name} differs between two identical runs"


@pytest.mark.slow
def test_one_thread_matches_two_threads(synthetic_root: Path, tmp_path: Path,
                                        first_run: dict[str, bytes]) -> None:
    single = one_run(synthetic_root, tmp_path / "c", threads=1)
    for name, data in first_run.items():
        assert single[name] == data, f"{name} differs between --threads 1 and --threads 2"


def test_cv_twice_in_two_processes_is_bit_identical(synthetic_root: Path, tmp_path: Path) -> None:
    """The fast check (default suite): attributes-only tree, two processes, same bytes."""
    outs = []
    for name in ("a", "b"):
        work = tmp_path / name
        work.mkdir()
        lymphomil("cv", synthetic_root, "-m", "tree", "--folds", "3", "--repeats", "1",
                  "--out", work / "cv", "--cache-dir", work / "cache", cwd=work)
        outs.append((work / "cv" / "oof_tree.csv").read_bytes())
    assert outs[0] == outs[1]
