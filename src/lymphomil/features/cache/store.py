"""The feature store itself: :class:`FeatureCache` keys a spec and a patient to its files, reads
them verified into a byte-bounded in-memory LRU, and reports and clears its folders."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from lymphomil.data.digests import image_digests
from lymphomil.data.folders import path_strings
from lymphomil.data.issues import DataIssue
from lymphomil.features.cache.extraction import CacheExtraction
from lymphomil.features.cache.files import (
    CACHE_FORMAT,
    SPEC_JSON,
    SUFFIX,
    Plan,
    decode_features,
    default_root,
    file_kind,
)
from lymphomil.features.env import (
    DECODER,
    library_versions,
    resolve_precision,
)
from lymphomil.features.spec import KINDS, FeatureSpec
from lymphomil.features.weights import weights_digest
from lymphomil.runtime.errors import LymphomilError

DEFAULT_MEMORY_BYTES = 1 << 30  # in-memory LRU bound

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


class FeatureCache(CacheExtraction):
    """On-disk, content-addressed feature store; implements ``FeatureStore`` (spec.py).

    ``workers`` parallel extraction streams (default: one per core), ``batch_size`` images per
    forward pass, ``on_progress(done, total, images_per_s)`` instead of the installed progress
    (:mod:`lymphomil.runtime.progress_protocol`: silent unless the caller installed one),
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

    def _plans(self, patients: Sequence[Any], folder: Path) -> list[Plan]:
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
            plans.append(Plan(pid, content.hexdigest()[:16], names, ds, folder))
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

    def _read(self, plan: Plan, kind: str, spec_hash: str) -> np.ndarray | None:
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
            array, meta = decode_features(data)
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

    def _valid_on_disk(self, plan: Plan, kind: str, spec_hash: str) -> bool:
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
