"""A content-addressed cache of cross-validation results (what makes a warm `run` fast).

The key covers everything the out-of-fold predictions depend on: the model's class and every
hyper-parameter, each patient's ID, label, attributes and image files (path and sha256 of the
bytes: a rewrite that keeps the size and puts the mtime back still misses), the
fold plan (folds, repeats, seed), the library versions and lymphomil's own source (a digest of
its files: an edited model misses). Models are deterministic for a fixed
seed, so a hit returns exactly what refitting would. Entries are JSON + safetensors written
atomically; a damaged entry is ignored and recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lymphomil.data.digests import image_digests
from lymphomil.data.folders import path_strings
from lymphomil.evaluation.crossval import CVResult
from lymphomil.models.base import PatientModel, encode_param, library_versions
from lymphomil.outputs import atomic_write_bytes, atomic_write_json, sweep_stale_temp_files

CACHE_FORMAT = 1


def patients_fingerprint(patients: Sequence) -> list:
    """What a cache key knows of the patients: attributes, label and each image's path and
    sha256 (the digests in one pass, paths as strings: no ``Path`` built per image)."""
    paths = [path_strings(p.image_paths) for p in patients]
    digests = iter(image_digests([path for group in paths for path in group]))
    return [[p.id, p.label, p.gender, p.age, p.lymph_count,
             [[path, next(digests)] for path in group]] for p, group in zip(patients, paths)]


def cv_key(model: PatientModel, name: str, patients: Sequence, folds: int, repeats: int,
           seed: int) -> str:
    payload = {  # key order is immaterial: the JSON below sorts it
        "format": CACHE_FORMAT, "name": name, "patients": patients_fingerprint(patients),
        "class": type(model).__name__, "params": encode_param(model.get_params(deep=False)),
        "folds": folds, "repeats": repeats, "seed": seed, "versions": library_versions(),
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load_cached(root: Path, key: str) -> CVResult | None:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    meta_path, arrays_path = root / f"{key}.json", root / f"{key}.safetensors"
    if not (meta_path.is_file() and arrays_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        arrays = load_file(str(arrays_path))
        if meta.get("arrays_sha256") != hashlib.sha256(arrays_path.read_bytes()).hexdigest():
            return None
        return CVResult(meta["model_name"], meta["patient_ids"], arrays["y"], arrays["folds"],
                        arrays["proba"], arrays["hard"].astype(bool), arrays["fit_seconds"],
                        meta["params"], meta["seed"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError,
            SafetensorError):
        return None  # damaged (or not a JSON object): recompute


def cached_rows(root: Path, key: str, name: str, ids: list,
                compute: Callable[[], tuple[np.ndarray, dict[str, Any]]],
                valid: Callable[[np.ndarray, dict[str, Any]], bool], *, seed: int = 0
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """(rows, params): (k, n) per-patient values (inner out-of-fold probabilities, refits, OOD
    flags) kept in the CV-result cache under ``key``: read back when stored for the same
    patient ids and ``valid(rows, params)``, else ``compute()`` and stored."""
    cached = load_cached(root, key)
    if cached is not None and list(cached.patient_ids) == list(ids):
        rows, params = np.asarray(cached.proba, dtype=float), dict(cached.params)
        if rows.ndim == 2 and rows.shape[1] == len(ids) and valid(rows, params):
            return rows, params
    rows, params = compute()
    rows = np.asarray(rows, dtype=float)
    store(root, key, CVResult(name, list(ids), np.full(len(ids), -1),
                              np.zeros(rows.shape, dtype=int), rows,
                              np.zeros(rows.shape, dtype=bool), np.zeros((rows.shape[0], 1)),
                              params, seed))
    return rows, params


def store(root: Path, key: str, result: CVResult) -> None:
    from safetensors.numpy import save

    blob = save({"y": np.asarray(result.y, dtype=np.int64),
                 "folds": np.asarray(result.folds, dtype=np.int64),
                 "proba": np.asarray(result.proba, dtype=np.float64),
                 "hard": np.asarray(result.hard, dtype=np.uint8),
                 "fit_seconds": np.asarray(result.fit_seconds, dtype=np.float64)})
    sweep_stale_temp_files(root)  # what a killed CV left half-written
    atomic_write_bytes(root / f"{key}.safetensors", blob)
    # the JSON is written last and names the arrays' digest: a torn pair is never trusted
    atomic_write_json(root / f"{key}.json", {
        "model_name": result.model_name, "patient_ids": result.patient_ids,
        "params": result.params, "seed": result.seed,
        "arrays_sha256": hashlib.sha256(blob).hexdigest()})
    _record(root, key)


# --------------------------------------------------------------------------- single fits

FITS = "fits"
_FIT_FILE = re.compile(r"[0-9a-f]{32}\.fit\.json")


class FitStore:
    """Each finished (model, repeat, fold) fit of a CV, one small JSON file under ``cv/fits/``
    keyed by the model's CV key (model, params, data, plan, versions) and the task's repeat,
    fold and seed, written atomically as the fit ends: a re-run after an interrupt does only the
    missing fits. Probabilities are stored as JSON floats (exact round trip), so a resumed CV
    equals an uninterrupted one bit for bit."""

    def __init__(self, root: Path, keys: dict[str, str]):
        self.root = Path(root) / FITS
        self.keys = keys  # model name -> cv_key
        self.reused = 0

    def _path(self, model_name: str, task) -> Path | None:
        key = self.keys.get(model_name)
        if key is None:
            return None
        text = f"{key}|{task.repeat}|{task.fold}|{task.seed}"
        return self.root / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.fit.json"

    def get(self, model_name: str, task) -> tuple[np.ndarray, float] | None:
        path = self._path(model_name, task)
        if path is None or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            proba = [float(p) for p in record["proba"]]
            if record["test"] != [int(i) for i in task.test] or len(proba) != len(task.test):
                return None
            seconds = float(record["seconds"])
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return None  # damaged: refit
        self.reused += 1
        return np.asarray(proba, dtype=np.float64), seconds

    def put(self, model_name: str, task, result: tuple[np.ndarray, float]) -> None:
        path = self._path(model_name, task)
        if path is None:
            return
        proba, seconds = result
        atomic_write_json(path, {"test": [int(i) for i in task.test],
                                 "proba": [float(p) for p in np.asarray(proba).ravel()],
                                 "seconds": float(seconds), "seed": int(task.seed)})


def clear_fits(root: Path) -> tuple[int, int]:
    """Remove the single-fit files (by their names: nothing else in ``fits/``); (files, bytes)."""
    folder = Path(root) / FITS
    removed = freed = 0
    if not folder.is_dir():
        return 0, 0
    for path in sorted(folder.iterdir()):
        if _FIT_FILE.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                freed += path.stat().st_size
                path.unlink()
                removed += 1
    sweep_stale_temp_files(folder)
    with contextlib.suppress(OSError):
        folder.rmdir()  # only when empty
    return removed, freed


# --------------------------------------------------------------------------- the manifest

#: the CV cache's own list of the entries it wrote: `cache clear` removes these and nothing else
MANIFEST = ".lymphomil-cache.json"
_KEY = re.compile(r"[0-9a-f]{32}")


@contextlib.contextmanager
def _manifest_lock(root: Path):
    """One writer of the manifest at a time (processes of a run, parallel runs)."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lymphomil-cache.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_manifest(root: Path) -> list[str]:
    try:
        record = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        keys = record["entries"]
        return [k for k in keys if isinstance(k, str) and _KEY.fullmatch(k)]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return []


def _record(root: Path, key: str) -> None:
    with _manifest_lock(root):
        keys = _read_manifest(root)
        if key not in keys:
            atomic_write_json(root / MANIFEST, {"written_by": "lymphomil", "entries": keys + [key]})


def entry_files(root: Path) -> list[Path]:
    """The files of the entries the manifest lists (those that exist)."""
    files = []
    for key in _read_manifest(root):
        for suffix in (".json", ".safetensors"):
            path = root / f"{key}{suffix}"
            if path.is_file() and not path.is_symlink():
                files.append(path)
    return files


def clear(root: Path) -> tuple[int, int, list[Path]]:
    """Remove the entries the manifest lists, then the manifest: (files, bytes, files kept).

    Anything else in the folder (someone's notes, another tool's files) is left where it is
    and returned, so the caller can say so."""
    removed = freed = 0
    if not root.is_dir():
        return 0, 0, []
    with _manifest_lock(root):
        for path in entry_files(root):
            with contextlib.suppress(FileNotFoundError):
                freed += path.stat().st_size
                path.unlink()
                removed += 1
        with contextlib.suppress(FileNotFoundError):
            (root / MANIFEST).unlink()
    sweep_stale_temp_files(root)
    fits, fit_bytes = clear_fits(root)
    kept = [p for p in sorted(root.iterdir()) if p.name not in (".lymphomil-cache.lock",)]
    return removed + fits, freed + fit_bytes, kept
