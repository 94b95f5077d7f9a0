"""Fixtures shared by the whole suite: a small synthetic cohort (made once) and the shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lymphomil.data.synth import write_synthetic_cohort

#: the challenge's data beside the repository (docs/design.md §1); read in place, never copied
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/dlmi-lymphocytosis"


SLOW_TESTS = Path(__file__).with_name("slow_tests.txt")


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` the tests listed in slow_tests.txt (measured there), so that the default
    run (`make test`) stays short and `make test-slow` runs them."""
    names = {line.strip() for line in SLOW_TESTS.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")}
    for item in items:
        if item.nodeid in names or item.nodeid.split("[")[0] in names:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def session_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """The lymphomil cache of the whole session (``$LYMPHOMIL_CACHE_DIR``, inherited by the
    subprocesses): no test reads or writes the user's cache. There the image-verdict memo
    (validated/) grew with every test cohort of every earlier session and was rewritten whole by
    each command (7.8 MB, ~45 ms a write here), and warm features hid the cost of a fresh
    machine."""
    folder = tmp_path_factory.mktemp("lymphomil-cache")
    with pytest.MonkeyPatch.context() as patch:  # put back after the session
        patch.setenv("LYMPHOMIL_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture
def register_for_test(monkeypatch: pytest.MonkeyPatch):
    """``register(cls)``: a test model class loadable by name for one test only; the global
    registry of classes is put back after it (no test leaks a model into the others)."""
    from lymphomil.models import base

    def register(cls):
        base._ensure_registered()
        monkeypatch.setitem(base._CLASSES, cls.__name__, cls)
        return cls

    return register


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 synthetic patients (seed 0, 16–24 cells each), written once per session; read-only."""
    folder = tmp_path_factory.mktemp("synthetic") / "cohort"
    return write_synthetic_cohort(folder, n_patients=24, seed=0, images_per_patient=(16, 24))


@pytest.fixture(scope="session")
def synthetic_features(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder (``--cache-dir``) holding the features of the synthetic cohort that the
    default image models read (fusion-mean, image-logreg-thin, and cell-topk, which ranks a run
    report's cells), extracted once a session. A test whose subject is not extraction copies them
    into its own cache with :func:`seed_features` (its CV cache stays empty)."""
    from lymphomil.data.cohort import load_cohort
    from lymphomil.flows.caches import attach_features
    from lymphomil.flows.patients import configure_model

    folder = tmp_path_factory.mktemp("synthetic-features")
    models = [configure_model(name) for name in ("fusion-mean", "image-logreg-thin", "cell-topk")]
    attach_features(load_cohort(synthetic_root).patients, models, folder)
    return folder


def seed_features(synthetic_features: Path, cache_dir: Path) -> Path:
    """``cache_dir`` (a ``--cache-dir``) holding a copy of the session's synthetic features."""
    import shutil

    shutil.copytree(synthetic_features / "features", Path(cache_dir) / "features")
    return Path(cache_dir)


@pytest.fixture(scope="session")
def small_image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic patients of 4-6 cells (seed 3): a cohort an image model reads in seconds;
    read-only."""
    folder = tmp_path_factory.mktemp("small-image") / "cohort"
    return write_synthetic_cohort(folder, n_patients=12, seed=3, images_per_patient=(4, 6))


@pytest.fixture(scope="session")
def image_model_dir(small_image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image model (fusion-mean, its image part on small-cnn features with the seed-0
    weights at 32 px: no weights file, fast) trained once a session on
    :func:`small_image_root`, so a change of an image's pixels changes its P; its folder holds
    sub-models, the referral rule and the OOD checks; read-only (copy it to change it)."""
    from typer.testing import CliRunner

    from lymphomil.cli import app

    out = tmp_path_factory.mktemp("image-model") / "model"
    result = CliRunner().invoke(app, ["train", str(small_image_root), "-m", "fusion-mean",
                                      "--features", IMAGE_MODEL_FEATURES, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


IMAGE_MODEL_FEATURES = "small-cnn:none@32"


@pytest.fixture
def shared_data() -> Path:
    """The shared challenge folder; the test is skipped where it is absent, and fails there
    under LYMPHOMIL_REQUIRE_SHARED=1 (CI sets it: .ci/run), so CI never passes without it."""
    return shared_folder(SHARED_DATA)


def shared_folder(folder: Path) -> Path:
    if not folder.is_dir():
        message = f"shared data not found at {folder}"
        if os.environ.get("LYMPHOMIL_REQUIRE_SHARED") == "1":
            pytest.fail(message + " (LYMPHOMIL_REQUIRE_SHARED=1: CI needs it)", pytrace=False)
        pytest.skip(message)
    return folder
