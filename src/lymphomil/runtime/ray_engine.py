"""The Ray engine (``--engine ray``): the same idempotent pieces, run as Ray tasks.

Imported only when asked for (``pip install "lymphomil[ray]"``); see docs/scale.md.

* **Connection**: ``RAY_ADDRESS`` (or ``address=``) joins a running cluster; otherwise a local
  Ray is started with this machine's cores.
* **Features**: the patients still missing from the cache are cut into chunks of roughly equal
  image counts; one 1-CPU task per chunk runs one extraction stream with one intra-op thread
  (exactly one of the local engine's streams) and writes each finished patient's files
  atomically into the cache folder, which every node must see at the same path (a shared
  filesystem). Only counts and problems come back, so the driver's memory stays flat.
* **Cross-validation**: one task per (model, repeat, fold) with ``--threads`` CPUs; the models,
  patients and labels go into the object store once. Patients carry their feature store as its
  folder (``FeatureCache.__reduce__``): a worker reads the same cache files.
* **Faults**: tasks are retried when their worker dies (``max_retries``); a retried feature
  chunk first skips the patients already written, so work is never redone or half-trusted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import ray

from lymphomil.data.issues import DataIssue
from lymphomil.features.cache import FeatureCache
from lymphomil.features.env import NUMERIC_LIBRARIES
from lymphomil.features.spec import FeatureSpec
from lymphomil.runtime import progress_protocol
from lymphomil.runtime.environment import cpu_count, package_versions, set_threads, source_digest
from lymphomil.runtime.errors import LymphomilError

#: task retries after a worker dies (Ray's default for tasks, stated so it cannot drift)
MAX_RETRIES = 3
#: object store for a local Ray we start (task arguments are small: paths, indices, models)
LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2


class _Images:
    """What the extractor needs of a patient: its image paths (no attributes, no store)."""

    def __init__(self, image_paths: Sequence[str]):
        self.image_paths = tuple(Path(p) for p in image_paths)


def environment() -> dict[str, str]:
    """The versions that change the numbers: every node must match the driver's (read from
    package metadata: the driver of a feature run never needs to import torch)."""
    import platform

    names = ("lymphomil", "numpy", "scikit-learn", *NUMERIC_LIBRARIES)
    return {"python": platform.python_version(), "lymphomil-source": source_digest(),
            **package_versions(names)}


def check_environment(expected: dict[str, str]) -> None:
    """Refuse to work on a node whose libraries differ from the driver's (its features or fits
    would differ, or land in a cache folder the driver never reads)."""
    here = environment()
    differ = {k: (here.get(k), v) for k, v in expected.items() if here.get(k) != v}
    if differ:
        what = ", ".join(f"{k} {mine} (driver {theirs})"
                         for k, (mine, theirs) in sorted(differ.items()))
        raise LymphomilError(f"Ray node {ray.util.get_node_ip_address()} runs other library "
                             f"versions than the driver: {what}",
                             fix="install the same lymphomil environment on every node "
                                 "(the same pip install and pins), then restart its Ray")


_WORKER_CACHES: dict[tuple, Any] = {}


def _worker_cache(root: str, batch_size: int, on_error: str) -> Any:
    """One single-stream FeatureCache per worker process (its model is built once)."""
    key = (root, batch_size, on_error)
    if key not in _WORKER_CACHES:
        _WORKER_CACHES[key] = FeatureCache(root, workers=1, threads_per_stream=1,
                                           batch_size=batch_size, on_error=on_error)
    return _WORKER_CACHES[key]


@ray.remote(num_cpus=1)
def extract_chunk(root: str, spec: dict, disk_kinds: list[str], items: list[tuple[list[str], Any]],
                  batch_size: int, on_error: str, expected: dict[str, str]) -> dict:
    """Extract one chunk of patients into the cache at ``root``; counts and problems back."""
    import torch

    check_environment(expected)
    torch.set_num_threads(1)
    cache = _worker_cache(root, batch_size, on_error)
    feature_spec = FeatureSpec.from_dict(spec)
    plans = [plan for _, plan in items]
    todo = cache.missing(plans, feature_spec, disk_kinds)  # a retried chunk skips finished ones
    before = len(cache.issues)
    start = time.perf_counter()
    cache.extract([_Images(items[i][0]) for i in todo], [plans[i] for i in todo], feature_spec,
                   disk_kinds, progress=False)
    return {"images": sum(len(paths) for paths, _ in items),
            "computed_images": sum(len(items[i][0]) for i in todo),
            "seconds": time.perf_counter() - start,
            "issues": [issue.to_dict() for issue in cache.issues[before:]],
            "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


@ray.remote
def run_fit(fit: Callable[[Any, Any], Any], shared: Any, task: Any, threads: int,
            expected: dict[str, str]) -> Any:
    """One cross-validation fit with the same thread limits as the local engine."""
    check_environment(expected)
    set_threads(threads)
    return fit(shared, task)


def image_chunks(sizes: Sequence[int], target: int) -> list[list[int]]:
    """Consecutive index groups of about ``target`` images each (a patient is never split)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    count = 0
    for index, size in enumerate(sizes):
        current.append(index)
        count += size
        if count >= target:
            chunks.append(current)
            current, count = [], 0
    if current:
        chunks.append(current)
    return chunks


def fetch(ref: Any, retries: int = MAX_RETRIES) -> Any:
    """``ray.get`` with the task's own user-facing error re-raised as itself."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, LymphomilError):
            raise cause from None
        raise
    except ray.exceptions.WorkerCrashedError:
        raise LymphomilError(f"a Ray worker died {retries + 1} times running the same task",
                             fix="check the workers' memory and logs (ray status; "
                                 "/tmp/ray/session_latest/logs), "
                                 "or run with --engine local") from None


class RayEngine:
    """Runs feature chunks and CV fits as Ray tasks (see the module docstring)."""

    name = "ray"

    def __init__(self, address: str | None = None, fit_threads: int = 1,
                 chunk_images: int | None = None, max_retries: int = MAX_RETRIES,
                 num_cpus: int | None = None):
        self.fit_threads = max(1, int(fit_threads))
        self.chunk_images = chunk_images
        self.max_retries = int(max_retries)
        self.started_here = False
        self.last_nodes: set[str] = set()
        self.environment = environment()
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home
            address = address or os.environ.get("RAY_ADDRESS") or None
            options: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                                           logging_level="ERROR")
            if address:
                ray.init(address=address, **options)
            else:
                ray.init(address="local", num_cpus=num_cpus or cpu_count(),
                         object_store_memory=LOCAL_OBJECT_STORE_BYTES, **options)
            self.started_here = True

    @staticmethod
    def cluster_cpus() -> int:
        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def describe(self) -> str:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        return f"ray: {len(nodes)} node(s), {self.cluster_cpus()} CPUs"

    # ---------------------------------------------------------------- features

    def extract_features(self, cache: Any, patients: Sequence[Any], plans: Sequence[Any],
                         spec: Any, disk_kinds: Sequence[str]) -> int:
        cache.prepare_folder(spec)  # spec.json once, by the driver
        sizes = [len(p.image_paths) for p in patients]
        total = sum(sizes)
        target = self.chunk_images or min(2048, max(64, total // (4 * self.cluster_cpus()) + 1))
        root = str(Path(cache.root).absolute())
        task = extract_chunk.options(max_retries=self.max_retries)
        chunks = image_chunks(sizes, target)
        # a bounded number in flight: every CPU stays busy, and the driver never holds the
        # task arguments of the whole cohort at once (its memory stays flat)
        limit = 2 * self.cluster_cpus() + 2
        in_flight: dict[Any, int] = {}
        submitted = 0

        def submit() -> None:
            nonlocal submitted
            chunk = chunks[submitted]
            submitted += 1
            items = [([str(path) for path in patients[i].image_paths], plans[i]) for i in chunk]
            ref = task.remote(root, spec.to_dict(), list(disk_kinds), items, cache.batch_size,
                              cache.on_error, self.environment)
            in_flight[ref] = chunk[0]

        issues: list[tuple[int, dict]] = []
        start = time.perf_counter()
        done_images = 0
        self.last_nodes = set()
        with progress_protocol.task(f"features {spec.label()} ({self.describe()})", total,
                                    "images") as advance:
            while submitted < len(chunks) and len(in_flight) < limit:
                submit()
            while in_flight:
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    first = in_flight.pop(ref)
                    result = fetch(ref, self.max_retries)
                    if submitted < len(chunks):
                        submit()
                    done_images += result["images"]
                    self.last_nodes.add(result["node"])
                    issues.extend((first, issue) for issue in result["issues"])
                    rate = done_images / max(time.perf_counter() - start, 1e-9)
                    advance(result["images"], f"{rate:,.0f} img/s")
        # problems in patient order, whatever order the chunks finished in
        cache.issues.extend(DataIssue(**issue) for _, issue in sorted(issues, key=lambda t: t[0]))
        return total

    # ---------------------------------------------------------------- fits

    def run_fits(self, fit: Callable[[Any, Any], Any], tasks: Sequence[Any],
                 on_done: Callable[[int, Any], None] | None = None,
                 shared: Any = None) -> list[Any]:
        """``fit(shared, task)`` for every task as Ray tasks; results in task order."""
        shared_ref = ray.put(shared)
        remote = run_fit.options(num_cpus=self.fit_threads, max_retries=self.max_retries)
        refs = [remote.remote(fit, shared_ref, task, self.fit_threads, self.environment)
                for task in tasks]
        index_of = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        waiting = list(refs)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            for ref in ready:
                index = index_of[ref]
                results[index] = fetch(ref, self.max_retries)
                if on_done is not None:
                    on_done(index, results[index])
        return results

    def close(self) -> None:
        if self.started_here and ray.is_initialized():
            ray.shutdown()
