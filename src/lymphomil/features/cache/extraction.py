"""Filling the feature cache: what is missing is extracted (per-patient claims shared with other
processes, one extraction at a time per cache) and each patient's files written atomically."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from lymphomil.data.folders import path_strings
from lymphomil.features.cache.files import (
    FLOAT16_MAX,
    SPEC_JSON,
    Plan,
    encode_features,
    file_kind,
)
from lymphomil.features.claims import claim_path, share_work
from lymphomil.features.spec import FeatureSpec
from lymphomil.outputs import atomic_write_bytes, atomic_write_json, sweep_stale_temp_files
from lymphomil.runtime import progress_protocol


class CacheExtraction:
    """The extraction half of :class:`~lymphomil.features.cache.FeatureCache` (its keys, plans
    and checks of what is on disk live there: ``resolve``, ``spec_key``, ``_plans``,
    ``_disk_kinds``, ``_valid_on_disk``)."""

    def ensure(self, patients: Iterable[Any], spec: FeatureSpec | str | dict,
               kinds: Iterable[str] = ("pooled",), engine: Any = None) -> None:
        """Extract whatever is not cached yet (its images counted on the installed progress).

        ``engine``: where the extraction runs (:mod:`lymphomil.runtime.engine`); ``None`` = here.
        """
        start = time.perf_counter()
        patients = list(patients)
        spec = self.resolve(spec)
        disk = self._disk_kinds(spec, kinds)
        _, _, folder = self.spec_key(spec)
        plans = self._plans(patients, folder)
        todo = self.missing(plans, spec, disk)
        hashed = time.perf_counter()
        computed_images = 0
        if todo:
            # once per cohort, not per patient or Ray task: a killed extraction's temp files
            sweep_stale_temp_files(folder)
            todo_patients, todo_plans = [patients[i] for i in todo], [plans[i] for i in todo]
            computed_images = (self.extract(todo_patients, todo_plans, spec, disk, progress=True)
                               if engine is None else
                               engine.extract_features(self, todo_patients, todo_plans, spec, disk))
        elapsed = time.perf_counter() - start
        self.last_run = {
            "patients": len(patients), "images": sum(len(p.image_paths) for p in patients),
            "cached_patients": len(patients) - len(todo), "computed_patients": len(todo),
            "computed_images": computed_images, "seconds": elapsed,
            "hash_seconds": hashed - start,
            "images_per_s": computed_images / max(elapsed - (hashed - start), 1e-9)
            if computed_images else 0.0,
            "folder": str(folder),
        }

    def _backbone(self, spec: FeatureSpec) -> Any:
        # deferred for start-up: the backbones import torch; a cached call never builds one
        from lymphomil.features.backbones import create_backbone

        key = (spec.backbone, spec.weights)
        with self._lock:
            if key not in self._backbones:
                self._backbones[key] = create_backbone(spec.backbone, spec.weights)
            return self._backbones[key]

    def prepare_folder(self, spec: FeatureSpec) -> tuple[dict, str, Path]:
        """The spec's folder, created with its spec.json; (key, hash, folder)."""
        key, spec_hash, folder = self.spec_key(spec)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / SPEC_JSON).is_file():
            atomic_write_json(folder / SPEC_JSON, dict(key, spec_hash=spec_hash))
        return key, spec_hash, folder

    def missing(self, plans: Sequence[Plan], spec: FeatureSpec,
                disk_kinds: Sequence[str]) -> list[int]:
        """Indices of the plans whose files are not all valid on disk (what is left to do)."""
        _, spec_hash, _ = self.spec_key(spec)
        return [i for i, plan in enumerate(plans)
                if not all(self._valid_on_disk(plan, k, spec_hash) for k in disk_kinds)]

    def extract(self, patients: Sequence[Any], plans: Sequence[Plan], spec: FeatureSpec,
                disk_kinds: Sequence[str], progress: bool) -> int:
        """Compute and store the features of ``patients`` (their ``plans`` from :meth:`ensure`
        or :meth:`missing`) in this process; the number of images computed. What an engine
        runs, here or on a worker."""
        if not plans:
            return 0
        with self._extract_lock:
            return self._extract_shared(patients, plans, spec, disk_kinds, progress)

    def _extract_shared(self, patients: Sequence[Any], plans: Sequence[Plan], spec: FeatureSpec,
                        disk_kinds: Sequence[str], progress: bool) -> int:
        """Per-patient claims (:mod:`lymphomil.features.claims`): another process extracting the
        same features into this cache shares the work; what it finished is read, not redone."""
        _, spec_hash, folder = self.prepare_folder(spec)
        sizes = [len(p.image_paths) for p in patients]
        paths = [claim_path(folder, plan.patient_id, plan.content_hash) for plan in plans]

        def state(i: int) -> list:
            out = []
            for kind in disk_kinds:
                try:
                    info = os.stat(plans[i].path(kind))
                    out.append((info.st_ino, info.st_mtime_ns, info.st_size))
                except OSError:
                    out.append(None)
            return out

        # asked for, so not good enough as they are (missing, or failed a checksum on load):
        # done only once another process has written them anew (an atomic write: a new inode)
        before = [state(i) for i in range(len(plans))]

        def done(i: int) -> bool:
            now = state(i)
            return (all(a is not None and a != b for a, b in zip(now, before[i]))
                    and all(self._valid_on_disk(plans[i], k, spec_hash) for k in disk_kinds))

        def run(advance: Callable[..., None] | None) -> int:
            def compute(chunk: list[int]) -> int:
                return self._extract_locked([patients[i] for i in chunk],
                                            [plans[i] for i in chunk], spec, disk_kinds,
                                            False, advance)

            elsewhere = None if advance is None else (lambda i: advance(sizes[i], "shared"))
            return share_work(sizes, paths, done, compute, elsewhere)

        if progress and self.on_progress is None:
            with progress_protocol.task(f"features {spec.label()}", sum(sizes),
                                        "images") as advance:
                return run(advance)
        return run(None)

    def _extract_locked(self, patients: Sequence[Any], plans: Sequence[Plan], spec: FeatureSpec,
                        disk_kinds: Sequence[str], progress: bool,
                        advance: Callable[..., None] | None = None) -> int:
        # deferred for start-up: the extractor imports torch; a cached call extracts nothing
        from lymphomil.features.extract import Extractor, Job

        key, spec_hash, folder = self.prepare_folder(spec)
        kinds = tuple(sorted(set(disk_kinds) | {"pooled"}))  # the plain view comes free
        memo = (spec, kinds, self.batch_size, self.workers, self.on_error, self.threads_per_stream)
        with self._lock:  # one inference copy per spec: single-patient loads stay cheap
            if memo not in self._extractors:
                self._extractors[memo] = Extractor(self._backbone(spec), spec.crop, spec.precision,
                                                   kinds, self.batch_size, self.workers,
                                                   self.on_error, self.threads_per_stream)
            extractor = self._extractors[memo]
        issues_before = len(extractor.issues)
        jobs = [Job(plan.patient_id, path_strings(patient.image_paths), plan)
                for patient, plan in zip(patients, plans)]
        total = sum(len(job.paths) for job in jobs)

        def write(job: Job, arrays: dict[str, np.ndarray], bad: list[int]) -> None:
            plan: Plan = job.context  # type: ignore[assignment]
            keep = [i for i in range(len(plan.names)) if i not in set(bad)]
            for kind, array in arrays.items():
                if bad:
                    array = array[:, keep] if kind == "views" else array[keep]
                meta = {"spec_hash": spec_hash, "spec": key, "content_hash": plan.content_hash,
                        "kind": file_kind(kind), "patient_id": plan.patient_id,
                        "names": list(plan.names),
                        "digests": list(plan.digests), "skipped": [plan.names[i] for i in bad]}
                stored = array
                if (kind in ("map", "trunk") and np.isfinite(array).all()
                        and np.abs(array).max() < FLOAT16_MAX):
                    stored = array.astype(np.float16)
                # not kept in memory: extraction streams (flat memory); load() reads it back
                atomic_write_bytes(plan.path(kind), encode_features(stored, meta))

        if progress and self.on_progress is None:
            with progress_protocol.task(f"features {spec.label()}", total, "images") as advance:
                self._run(extractor, jobs, write, total, advance)
        else:
            self._run(extractor, jobs, write, total, advance)
        self.issues.extend(extractor.issues[issues_before:])
        return total

    def _run(self, extractor: Any, jobs: list, write: Callable, total: int,
             advance: Callable[..., None] | None) -> None:
        start = time.perf_counter()
        done = [0]

        def on_images(n: int) -> None:
            done[0] += n
            rate = done[0] / max(time.perf_counter() - start, 1e-9)
            if advance is not None:
                advance(n, f"{rate:,.0f} img/s")
            if self.on_progress is not None:
                self.on_progress(done[0], total, rate)

        extractor.run(jobs, write, on_images)
