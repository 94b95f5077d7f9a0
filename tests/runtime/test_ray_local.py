"""`--engine ray` on a local Ray with 2 CPUs: the same answers as `local`, and killed workers.

Same answers means bit-identical feature files, out-of-fold probabilities, metrics (fit times
aside) and predictions. Faults are real: a watcher SIGKILLs a Ray worker process while it runs
one of our tasks; Ray retries the task and the run completes with the same answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lymphomil.cli import app
from lymphomil.data.cohort import load_cohort

from .conftest import MODELS, PLAN, SPEC_TEXT, WorkerKiller, cache_digests, require_ray

ray = require_ray()
runner = CliRunner()


@pytest.fixture(scope="module")
def engine():
    from lymphomil.runtime.ray_engine import RayEngine

    if ray.is_initialized():
        ray.shutdown()
    engine = RayEngine(num_cpus=2, chunk_images=48)
    yield engine
    ray.shutdown()


def _without_times(payload: dict) -> dict:
    for entry in payload.values():
        entry["summary"].pop("fit_seconds")
    return payload


def _assert_same_cv(results, reference) -> None:
    for got, want in zip(results, reference, strict=True):
        assert got.model_name == want.model_name
        np.testing.assert_array_equal(got.proba, want.proba)  # bit-identical, not close
        np.testing.assert_array_equal(got.folds, want.folds)
        assert _without_times({"m": got.to_dict()}) == _without_times({"m": want.to_dict()})


@pytest.mark.slow  # the kill tests below make the same comparisons (a kill aside), by default
def test_features_and_cv_match_the_local_engine(engine, synthetic_root: Path, tmp_path: Path,
                                                local_reference: dict) -> None:
    from lymphomil.data.cohort import labelled_patients
    from lymphomil.flows.caches import attach_features
    from lymphomil.flows.cv import run_cv
    from lymphomil.flows.patients import configure_model

    cohort = load_cohort(synthetic_root)
    attach_features(cohort.patients, [configure_model("image-logreg", SPEC_TEXT)], tmp_path,
                    engine=engine)
    labelled = labelled_patients(cohort)
    results = run_cv(MODELS, labelled.patients, labelled.y, **PLAN, features=SPEC_TEXT,
                     cache_dir=tmp_path, engine=engine)
    assert cache_digests(tmp_path) == local_reference["digests"]
    assert len(local_reference["digests"]) == len(cohort.patients)
    _assert_same_cv(results, local_reference["results"])


def test_a_worker_killed_during_extraction_is_retried(engine, synthetic_root: Path,
                                                      tmp_path: Path,
                                                      local_reference: dict) -> None:
    from lymphomil.features.cache import FeatureCache
    from lymphomil.features.spec import FeatureSpec

    cohort = load_cohort(synthetic_root)
    cache = FeatureCache(tmp_path / "features")
    with WorkerKiller("extract_chunk") as killer:
        cache.ensure(cohort.patients, FeatureSpec.parse(SPEC_TEXT), engine=engine)
    assert killer.killed, "no extraction task was seen running: the test did not test a kill"
    assert cache_digests(tmp_path) == local_reference["digests"]
    assert len(local_reference["digests"]) == len(cohort.patients)


def test_a_worker_killed_during_cross_validation_is_retried(engine, synthetic_root: Path,
                                                            local_reference: dict,
                                                            tmp_path: Path) -> None:
    import shutil

    from lymphomil.data.cohort import labelled_patients
    from lymphomil.flows.cv import run_cv

    # the reference's features, not its stored fits (the CV would reuse them and run nothing)
    shutil.copytree(Path(local_reference["cache"]) / "features", tmp_path / "features")
    labelled = labelled_patients(load_cohort(synthetic_root))
    with WorkerKiller("run_fit") as killer:
        results = run_cv(MODELS, labelled.patients, labelled.y, **PLAN, features=SPEC_TEXT,
                         cache_dir=tmp_path, engine=engine)
    assert killer.killed, "no fit task was seen running: the test did not test a kill"
    _assert_same_cv(results, local_reference["results"])


def test_cli_run_on_ray_matches_local(engine, synthetic_root: Path, local_reference: dict,
                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    """`lymphomil run --engine ray` (joining the running Ray) writes the local run's answers.
    The local run reads the local reference's features (copied in); the Ray run extracts its own.
    One repeat: the kill test above compares the repeated CV on Ray with the local one."""
    import shutil

    base = tmp_path_factory.mktemp("runs")
    shutil.copytree(local_reference["cache"] / "features", base / "cache-local" / "features")
    outputs = {}
    for name in ("local", "ray"):
        out = base / name
        result = runner.invoke(app, ["run", str(synthetic_root), "--out", str(out),
                                     "--candidates", "tree,image-logreg", "--features", SPEC_TEXT,
                                     "--folds", "3", "--repeats", "1", "--engine", name,
                                     "--cache-dir", str(base / f"cache-{name}")],
                               catch_exceptions=False)
        assert result.exit_code == 0, result.output
        outputs[name] = out
    assert ray.is_initialized()  # a Ray the run joined is left running for its owner
    for name in ("submission.csv", "predictions.csv", "cv/oof_tree.csv", "cv/oof_image-logreg.csv"):
        assert (outputs["ray"] / name).read_bytes() == (outputs["local"] / name).read_bytes(), name
    metrics = [_without_times(json.loads((outputs[n] / "cv/metrics.json").read_text()))
               for n in ("local", "ray")]
    assert metrics[0] == metrics[1]
    assert cache_digests(base / "cache-ray") == cache_digests(base / "cache-local")


def test_a_node_with_other_library_versions_is_refused_clearly(engine) -> None:
    """A worker whose versions differ from the driver's raises the user-facing error (not a
    Ray traceback), for fits as for feature chunks."""
    from lymphomil.evaluation.crossval import FoldTask
    from lymphomil.runtime.errors import LymphomilError

    real = engine.environment
    engine.environment = dict(real, torch="0.0.1")
    try:
        with pytest.raises(LymphomilError, match=r"other library versions than the driver: "
                                                 r"torch \S+ \(driver 0\.0\.1\)"):
            engine.run_fits(lambda shared, task: task,
                            [FoldTask(0, 0, 0, 0, np.zeros(1), np.zeros(1))])
    finally:
        engine.environment = real


def test_an_interrupted_extraction_resumes_from_the_cache(engine, synthetic_root: Path,
                                                          tmp_path: Path,
                                                          local_reference: dict) -> None:
    """Whatever an earlier (killed) run finished is not recomputed: Ray gets only the rest."""
    from lymphomil.features.cache import FeatureCache
    from lymphomil.features.spec import FeatureSpec

    cohort = load_cohort(synthetic_root)
    spec = FeatureSpec.parse(SPEC_TEXT)
    FeatureCache(tmp_path / "features").ensure(cohort.patients[:10], spec)  # the part done before
    cache = FeatureCache(tmp_path / "features")
    cache.ensure(cohort.patients, spec, engine=engine)
    assert cache.last_run["cached_patients"] == 10
    assert cache.last_run["computed_patients"] == len(cohort.patients) - 10
    assert cache_digests(tmp_path) == local_reference["digests"]
