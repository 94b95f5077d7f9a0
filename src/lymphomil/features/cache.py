"""The content-addressed instance-feature cache (docs/design.md §3): extract once, read everywhere.

Layout::

    <root>/<backbone>-<crop>px-<precision>-<spec hash>/spec.json
    <root>/<backbone>-<crop>px-<precision>-<spec hash>/<patient>-<content hash>.<kind>.safetensors

* The **spec hash** covers everything that changes the numbers: backbone, the sha256 of its
  weights, crop, precision, the decoder, the cache format, the versions of the libraries
  that compute it (torch, Pillow and what builds the backbone: ``features.env.library_versions``)
  and a batch size other than the default 16. TTA is not in it: the plain view is its own kind,
  and the TTA views are another (named ``views8`` on disk since TTA became the 8 dihedral views:
  the 4-flip ``views`` files of before are never read as 8-view ones).
* The **content hash** covers the patient's image file names (bag order) and each file's bytes,
  so a changed, added or removed image invalidates exactly that patient.
* Each file is written atomically (temp file + rename) as soon as its patient is done, so a
  killed run resumes where it stopped and never trusts half a file. Its safetensors metadata
  holds the full provenance and a checksum of the array; a file that fails to parse, does not
  match its key, or fails its checksum is recomputed.

Kinds on disk: ``pooled`` (n, d) plain view, ``views`` (8, n, d) TTA views (the dihedral group:
flips and rotations; file kind ``views8``), ``map`` (n, d, h, w) and ``trunk`` (n, d_t, h_t, w_t;
the activation before the backbone's last stage, :mod:`lymphomil.features.trunk`), both stored as
float16 where they fit.
``d`` is the backbone's pooled size (768 for ``dinov2-s``: CLS + mean patch token; its map has
384 channels). ``load(kind="pooled")`` with ``spec.tta`` returns the mean of the 8 views.
Everything is returned as read-only float32 arrays and kept in a
byte-bounded in-memory LRU, so cross-validation folds do not re-read files.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from lymphomil import progress_protocol
from lymphomil.data.digests import forget_digests, image_digests  # noqa: F401 (re-exported)
from lymphomil.errors import DataIssue, LymphomilError
from lymphomil.features.env import (
    DECODER,
    library_versions,
    resolve_precision,
)
from lymphomil.features.spec import KINDS, FeatureSpec
from lymphomil.outputs import atomic_write_bytes, atomic_write_json, sweep_stale_temp_files

CACHE_FORMAT = 1
#: the name a kind has in file names and file metadata. "views" became the 8 dihedral views
#: (was 4 flips): the new name keeps every 4-view file written before from being read as one
FILE_KINDS = {"views": "views8"}
ENV_CACHE_DIR = "LYMPHOMIL_CACHE_DIR"
SPEC_JSON = "spec.json"
SUFFIX = ".safetensors"
DEFAULT_MEMORY_BYTES = 1 << 30  # in-memory LRU bound
FLOAT16_MAX = 65504.0


def file_kind(kind: str) -> str:
    """A kind's name on disk (:data:`FILE_KINDS`)."""
    return FILE_KINDS.get(kind, kind)


def default_root() -> Path:
    """``features/`` under the lymphomil cache (``$LYMPHOMIL_CACHE_DIR`` or
    ``~/.cache/lymphomil``)."""
    return feature_root(None)


def feature_root(cache_dir: str | Path | None) -> Path:
    """Where features live for a ``--cache-dir`` (the lymphomil cache root: features/, cv/, …)."""
    from lymphomil.outputs import cache_root

    return cache_root(cache_dir) / "features"


def path_strings(paths: Iterable[str | Path]) -> list[str]:
    """A patient's image paths as strings (a loader's ``ImagePaths`` makes them without a
    ``Path`` per image; a plain tuple or list works too)."""
    from lymphomil.data.cohort import ImagePaths

    if isinstance(paths, ImagePaths):
        return paths.strings()
    return [os.fspath(p) for p in paths]


# --------------------------------------------------------------------------- safetensors I/O


def _encode(array: np.ndarray, metadata: dict[str, Any]) -> bytes:
    from safetensors.numpy import save

    array = np.ascontiguousarray(array)
    meta = dict(metadata, dtype=str(array.dtype), shape=list(array.shape),
                data_sha256=hashlib.sha256(memoryview(array).cast("B")).hexdigest())
    return save({"features": array}, metadata={"lymphomil": json.dumps(meta, sort_keys=True)})


def _read_header(data: bytes | memoryview) -> dict[str, Any]:
    """The lymphomil metadata of a safetensors file (raises ValueError when it is not one)."""
    if len(data) < 8:
        raise ValueError("file shorter than a safetensors header")
    (size,) = struct.unpack("<Q", bytes(data[:8]))
    if size > len(data) - 8 or size > 10_000_000:
        raise ValueError("safetensors header runs past the end of the file")
    header = json.loads(bytes(data[8:8 + size]))
    tensor = header["features"]
    start, end = tensor["data_offsets"]
    if 8 + size + end != len(data) or start != 0:
        raise ValueError("file size does not match its header (truncated?)")
    return json.loads(header["__metadata__"]["lymphomil"])


def _decode(data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    from safetensors.numpy import load

    meta = _read_header(data)
    array = load(data)["features"]
    if (hashlib.sha256(memoryview(np.ascontiguousarray(array)).cast("B")).hexdigest()
            != meta["data_sha256"]):
        raise ValueError("array checksum mismatch (damaged file)")
    return array, meta


# --------------------------------------------------------------------------- the cache


@dataclass(frozen=True)
class _Plan:
    """Where one patient's files live for one spec."""

    patient_id: str
    content_hash: str
    names: tuple[str, ...]
    digests: tuple[str, ...]
    folder: Path

    def path(self, kind: str) -> Path:
        return self.folder / f"{self.patient_id}-{self.content_hash}.{file_kind(kind)}{SUFFIX}"


_PROCESS_CACHES: dict[tuple, "FeatureCache"] = {}
_PROCESS_LOCK = threading.Lock()


def shared_cache(root: str | Path, memory_bytes: int = DEFAULT_MEMORY_BYTES,
                 on_error: str = "raise") -> "FeatureCache":
    """This process's one FeatureCache for ``root``: the stages of a run (and the tasks a Ray
    worker runs) share its in-memory arrays instead of re-reading every file."""
    key = (str(Path(root).expanduser().absolute()), int(memory_bytes), on_error)
    with _PROCESS_LOCK:
        if key not in _PROCESS_CACHES:
            _PROCESS_CACHES[key] = FeatureCache(key[0], memory_bytes=memory_bytes,
                                                on_error=on_error)
        return _PROCESS_CACHES[key]


#: images per forward pass unless told otherwise (another value is part of the spec key)
DEFAULT_BATCH_SIZE = 16


class FeatureCache:
    """On-disk, content-addressed feature store; implements ``FeatureStore`` (spec.py).

    ``workers`` parallel extraction streams (default: one per core), ``batch_size`` images per
    forward pass, ``on_progress(done, total, images_per_s)`` instead of the installed progress
    (:mod:`lymphomil.progress_protocol`: silent unless the caller installed one),
    ``on_error`` what to do with an image that cannot be decoded at extraction time ("raise",
    or "skip": leave it out of its patient's bag and record it in :attr:`issues`, as the cohort
    loader does).
    """

    def __init__(self, root: str | Path | None = None, workers: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE,
                 on_progress: Callable[[int, int, float], None] | None = None,
                 memory_bytes: int = DEFAULT_MEMORY_BYTES, on_error: str = "raise",
                 threads_per_stream: int | None = None):
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.workers = workers
        self.batch_size = batch_size
        self.on_progress = on_progress
        self.memory_bytes = int(memory_bytes)
        self.on_error = on_error
        self.threads_per_stream = threads_per_stream
        self.issues: list[DataIssue] = []
        self.last_run: dict[str, Any] = {}
        self._lru: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._lru_bytes = 0
        self._lock = threading.RLock()
        self._spec_keys: dict[FeatureSpec, tuple[dict, str, Path]] = {}
        self._backbones: dict[tuple[str, str], Any] = {}
        self._extractors: dict[tuple, Any] = {}
        self._extract_lock = threading.Lock()  # one extraction at a time (they share the cores)

    def __reduce__(self):
        """Sent to another process (a Ray worker) as its root: the receiver uses its own
        :func:`shared_cache` for that folder (which must be the same path there)."""
        return (shared_cache, (str(self.root.absolute()), self.memory_bytes, self.on_error))

    # ---------------------------------------------------------------- keys

    def resolve(self, spec: FeatureSpec | str | dict) -> FeatureSpec:
        spec = FeatureSpec.parse(spec)
        precision = resolve_precision(spec.precision)
        if precision != spec.precision:
            spec = FeatureSpec(spec.backbone, spec.weights, spec.crop, spec.tta, precision)
        return spec

    def spec_key(self, spec: FeatureSpec) -> tuple[dict, str, Path]:
        """(key dict, hash, folder) of a resolved spec; the weights are hashed, not built."""
        spec = self.resolve(spec)
        cached = self._spec_keys.get(spec)
        if cached is None:
            from lymphomil.features.weights import weights_digest

            key = {
                "format": CACHE_FORMAT,
                "backbone": spec.backbone,
                "weights_digest": weights_digest(spec.backbone, spec.weights),
                "crop": spec.crop,
                "precision": spec.precision,
                "decoder": DECODER,
                "versions": library_versions(spec.backbone),
            }
            if self.batch_size != DEFAULT_BATCH_SIZE:
                # the forward pass's batch size moves the numbers in the 6th decimal (oneDNN
                # picks kernels by shape: resnet50-thin, 4e-6 between batches of 3 and 4); the
                # default's key is unchanged, so caches made with it stay valid
                key["batch_size"] = self.batch_size
            digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
            folder = self.root / f"{spec.backbone}-{spec.crop}px-{spec.precision}-{digest}"
            cached = self._spec_keys[spec] = (key, digest, folder)
        return cached

    def _plans(self, patients: Sequence[Any], folder: Path) -> list[_Plan]:
        all_paths = [p for patient in patients for p in path_strings(patient.image_paths)]
        digests = iter(image_digests(all_paths, tolerant=self.on_error == "skip"))
        del all_paths
        plans = []
        for patient in patients:
            pid = str(patient.id)
            if not pid or pid.startswith(".") or any(c in pid for c in "/\\\0"):
                raise LymphomilError(f"patient ID {pid!r} cannot name a cache file",
                                     fix="use plain IDs (letters, digits, '_', '-', '.')")
            names = getattr(patient.image_paths, "names", None) or \
                tuple(Path(p).name for p in patient.image_paths)
            ds = tuple(next(digests) for _ in names)
            content = hashlib.sha256("".join(f"{n}\0{d}\n" for n, d in zip(names, ds)).encode())
            plans.append(_Plan(pid, content.hexdigest()[:16], names, ds, folder))
        return plans

    @staticmethod
    def _disk_kinds(spec: FeatureSpec, kinds: Iterable[str]) -> list[str]:
        out = []
        for kind in kinds:
            if kind not in KINDS:
                raise LymphomilError(f"unknown feature kind {kind!r}",
                                     fix=f"use {', '.join(KINDS)}")
            disk = "views" if (kind == "pooled" and spec.tta) else kind
            if disk not in out:
                out.append(disk)
        return out

    # ---------------------------------------------------------------- reading

    def _remember(self, path: Path, array: np.ndarray) -> None:
        with self._lock:
            if path in self._lru:
                self._lru_bytes -= self._lru.pop(path).nbytes
            if array.nbytes > self.memory_bytes:
                return
            self._lru[path] = array
            self._lru_bytes += array.nbytes
            while self._lru_bytes > self.memory_bytes:
                _, old = self._lru.popitem(last=False)
                self._lru_bytes -= old.nbytes

    def _read(self, plan: _Plan, kind: str, spec_hash: str) -> np.ndarray | None:
        """The verified array of one file, or None when it is missing or not trustworthy."""
        path = plan.path(kind)
        with self._lock:
            if path in self._lru:
                self._lru.move_to_end(path)
                return self._lru[path]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError:
            return None
        try:
            array, meta = _decode(data)
            if (meta.get("spec_hash") != spec_hash or meta.get("content_hash") != plan.content_hash
                    or meta.get("kind") != file_kind(kind)
                    or tuple(meta.get("names", ())) != plan.names):
                raise ValueError("provenance does not match the requested features")
        except Exception:  # any parse/validation failure: a damaged entry, recompute it
            return None
        array = np.asarray(array, dtype=np.float32)
        array.setflags(write=False)
        self._remember(path, array)
        return array

    def _valid_on_disk(self, plan: _Plan, kind: str, spec_hash: str) -> bool:
        """Cheap check (header, key, size) used to decide what to extract."""
        path = plan.path(kind)
        with self._lock:
            if path in self._lru:
                return True
        try:
            with open(path, "rb") as handle:
                head = handle.read(8)
                if len(head) < 8:
                    return False
                (size,) = struct.unpack("<Q", head)
                if size > 10_000_000:
                    return False
                meta_bytes = handle.read(size)
                handle.seek(0, os.SEEK_END)
                total = handle.tell()
            header = json.loads(meta_bytes)
            start, end = header["features"]["data_offsets"]
            meta = json.loads(header["__metadata__"]["lymphomil"])
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return False  # not ours, damaged, or a header nested too deep: recompute it
        if not isinstance(meta, dict) or not all(isinstance(v, int) for v in (start, end)):
            return False
        return (8 + size + end == total and start == 0 and meta.get("spec_hash") == spec_hash
                and meta.get("content_hash") == plan.content_hash
                and meta.get("kind") == file_kind(kind))

    def load(self, patient: Any, spec: FeatureSpec | str | dict,
             kind: str = "pooled") -> np.ndarray:
        """One patient's features (cache hit, or computed now): float32, read-only.

        ``pooled`` (n, d) — the mean of the 8 dihedral views when ``spec.tta``; ``views`` (8, n, d);
        ``map`` (n, d, h, w).
        """
        spec = self.resolve(spec)
        disk = self._disk_kinds(spec, [kind])[0]
        _, spec_hash, folder = self.spec_key(spec)
        plan = self._plans([patient], folder)[0]
        array = self._read(plan, disk, spec_hash)
        if array is None:
            self.extract([patient], [plan], spec, [disk], progress=False)
            array = self._read(plan, disk, spec_hash)
            if array is None:
                raise LymphomilError(f"features of patient {plan.patient_id} could not be read "
                                     "back after extraction", file=plan.path(disk),
                                     fix="check that the cache folder is writable and not full")
        if kind == "pooled" and spec.tta:
            array = array.mean(axis=0)  # (n, d) mean over the 8 views
            array.setflags(write=False)
        return array

    # ---------------------------------------------------------------- extraction

    def ensure(self, patients: Iterable[Any], spec: FeatureSpec | str | dict,
               kinds: Iterable[str] = ("pooled",), engine: Any = None) -> None:
        """Extract whatever is not cached yet (its images counted on the installed progress).

        ``engine``: where the extraction runs (:mod:`lymphomil.engine`); ``None`` = here.
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

    def missing(self, plans: Sequence[_Plan], spec: FeatureSpec,
                disk_kinds: Sequence[str]) -> list[int]:
        """Indices of the plans whose files are not all valid on disk (what is left to do)."""
        _, spec_hash, _ = self.spec_key(spec)
        return [i for i, plan in enumerate(plans)
                if not all(self._valid_on_disk(plan, k, spec_hash) for k in disk_kinds)]

    def extract(self, patients: Sequence[Any], plans: Sequence[_Plan], spec: FeatureSpec,
                disk_kinds: Sequence[str], progress: bool) -> int:
        """Compute and store the features of ``patients`` (their ``plans`` from :meth:`ensure`
        or :meth:`missing`) in this process; the number of images computed. What an engine
        runs, here or on a worker."""
        if not plans:
            return 0
        with self._extract_lock:
            return self._extract_shared(patients, plans, spec, disk_kinds, progress)

    def _extract_shared(self, patients: Sequence[Any], plans: Sequence[_Plan], spec: FeatureSpec,
                        disk_kinds: Sequence[str], progress: bool) -> int:
        """Per-patient claims (:mod:`lymphomil.features.claims`): another process extracting the
        same features into this cache shares the work; what it finished is read, not redone."""
        from lymphomil.features.claims import claim_path, share_work

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

    def _extract_locked(self, patients: Sequence[Any], plans: Sequence[_Plan], spec: FeatureSpec,
                        disk_kinds: Sequence[str], progress: bool,
                        advance: Callable[..., None] | None = None) -> int:
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
            plan: _Plan = job.context  # type: ignore[assignment]
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
                atomic_write_bytes(plan.path(kind), _encode(stored, meta))

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

    # ---------------------------------------------------------------- housekeeping

    def _spec_folders(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and (p / SPEC_JSON).is_file())

    def info(self) -> dict[str, Any]:
        """Size and entries per spec folder under the root."""
        specs, total_bytes, total_files = [], 0, 0
        for folder in self._spec_folders():
            files: dict[str, int] = {}
            patients, size, temp = set(), 0, 0
            for entry in folder.iterdir():
                if entry.name.endswith(".tmp"):
                    temp += 1
                    size += entry.stat().st_size
                    continue
                if not entry.name.endswith(SUFFIX):
                    continue
                stem = entry.name[:-len(SUFFIX)]
                base, _, kind = stem.rpartition(".")
                files[kind] = files.get(kind, 0) + 1
                patients.add(base.rsplit("-", 1)[0])
                size += entry.stat().st_size
            try:
                spec = json.loads((folder / SPEC_JSON).read_text())
            except (OSError, ValueError, RecursionError):
                spec = {}
            if not isinstance(spec, dict):  # not what the cache writes: show nothing of it
                spec = {}
            specs.append({"folder": folder.name, "backbone": spec.get("backbone"),
                          "crop": spec.get("crop"), "precision": spec.get("precision"),
                          "weights_digest": str(spec.get("weights_digest", ""))[:16],
                          "patients": len(patients), "files": files, "bytes": size,
                          "temp_files": temp})
            total_bytes += size
            total_files += sum(files.values())
        return {"root": str(self.root), "bytes": total_bytes, "files": total_files, "specs": specs}

    def clear(self) -> int:
        """Delete the files this cache wrote in its spec folders (spec.json, feature files by
        their content-addressed names, temp files of its writes); bytes freed. Anything else a
        spec folder holds is left, and the folder with it (:attr:`kept`)."""
        import re

        ours = re.compile(r"(.+-[0-9a-f]{16}\.[a-z]+\.safetensors|\..+\.tmp|spec\.json)")
        freed = 0
        self.kept: list[Path] = []
        for folder in self._spec_folders():
            for path in sorted(folder.iterdir()):
                if path.is_file() and not path.is_symlink() and ours.fullmatch(path.name):
                    freed += path.stat().st_size
                    path.unlink()
                else:
                    self.kept.append(path)
            try:
                folder.rmdir()
            except OSError:  # something else is in it: not ours to delete
                pass
        with self._lock:
            self._lru.clear()
            self._lru_bytes = 0
        return freed
