"""Helpers for the engine tests: identical-output checks and a real worker killer."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest

#: features the engine tests extract (a real backbone, small crop: fast on 2 cores)
SPEC_TEXT = "efficientnet-lite0@64"
#: the models the engine tests cross-validate: an attribute model and an image model (a tree: the
#: engines are compared, not the models, and logreg's Table-2 grid took seconds a fit)
MODELS = ["tree", "image-logreg"]
#: the cross-validation plan of the engine tests
PLAN = dict(folds=3, repeats=2, seed=0)


@pytest.fixture(scope="session")
def local_reference(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Features, CV and predictions of the local engine, computed once a session for the
    single-machine and the two-node Ray tests; read-only."""
    from lymphomil.data.cohort import labelled_patients, load_cohort
    from lymphomil.flows.caches import attach_features
    from lymphomil.flows.cv import run_cv
    from lymphomil.flows.patients import configure_model

    cache = tmp_path_factory.mktemp("local") / "cache"
    cohort = load_cohort(synthetic_root)
    attach_features(cohort.patients, [configure_model("image-logreg", SPEC_TEXT)], cache)
    labelled = labelled_patients(cohort)
    results = run_cv(MODELS, labelled.patients, labelled.y, **PLAN, features=SPEC_TEXT,
                     cache_dir=cache)
    return {"cache": cache, "digests": cache_digests(cache), "results": results}


def require_ray():
    """Ray, or a skip where the extra is not installed (``make test`` sets
    LYMPHOMIL_REQUIRE_RAY=1 so that CI fails instead of skipping)."""
    if os.environ.get("LYMPHOMIL_REQUIRE_RAY") == "1":
        import ray

        return ray
    return pytest.importorskip("ray")


def cache_digests(cache_dir: Path) -> dict[str, str]:
    """sha256 of every feature file under a cache folder, by relative path."""
    root = Path(cache_dir) / "features"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.safetensors"))}


class WorkerKiller:
    """SIGKILLs the first Ray worker seen running ``task`` (its process title ``ray::task``)."""

    def __init__(self, task: str):
        self.title = f"ray::{task}".encode()
        self.killed: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set() and not self.killed:
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    title = (entry / "cmdline").read_bytes().split(b"\0")[0].strip()
                except OSError:
                    continue
                if title == self.title:
                    try:
                        os.kill(int(entry.name), signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    self.killed.append(int(entry.name))
                    return
            time.sleep(0.005)

    def __enter__(self) -> "WorkerKiller":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
