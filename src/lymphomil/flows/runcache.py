"""What a rerun of `lymphomil run` takes from the cache when its inputs did not change (issue 24).

Content-addressed under ``<cache>/run/``, as the CV results are
(:mod:`lymphomil.evaluation.cvcache`):

* the **exploration** of a cohort (its tables and figures), keyed by every patient's ID, label,
  attributes and image files (path and sha256 of the bytes), the cohort's folder name and
  reference date, and the versions that draw it;
* a **fitted model** (the run's final model, the galleries' cell scorer), keyed by the model's
  class and parameters, the training patients (as the CV key has them), the seed and the
  versions. A hit loads the saved folder (JSON + safetensors), which predicts exactly what the
  fit did: models are deterministic for a fixed seed.

An entry is written whole (a staged folder with checksums) and checked when read; a damaged or
missing one is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from lymphomil.evaluation.cvcache import patients_fingerprint
from lymphomil.flows.steps import train_model
from lymphomil.models.base import PatientModel, encode_param, library_versions
from lymphomil.outputs import cache_root, dumps_json, read_json, staged_dir, verify_dir
from lymphomil.report.explore import explore
from lymphomil.runtime.environment import package_versions
from lymphomil.runtime.errors import LymphomilError

CACHE_FORMAT = 1
SUMMARY_JSON = "summary.json"


def _key(payload: dict, patients: Sequence) -> str:
    payload = {"format": CACHE_FORMAT, **payload, "versions": library_versions(),
               "patients": patients_fingerprint(patients)}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _entry(cache_dir: str | Path | None, kind: str, key: str) -> Path:
    return cache_root(cache_dir) / "run" / f"{kind}-{key}"


def _valid(folder: Path) -> bool:
    try:
        verify_dir(folder, "cache entry")
    except (LymphomilError, OSError):
        return False
    return True


def _store(entry: Path, fill: Callable[[Path], None]) -> None:
    """Write a cache entry whole; a cache that cannot be written only costs the next run time."""
    try:
        with staged_dir(entry, "cache entry") as staging:
            fill(staging)
    except (LymphomilError, OSError):
        pass


def cached_explore(cohort: Any, out_dir: Path, cache_dir: str | Path | None = None) -> dict:
    """:func:`lymphomil.report.explore.explore` of ``cohort`` into ``out_dir``, from the cache
    when the same cohort was explored before (the figures are what a warm run spent most on)."""
    key = _key({"kind": "explore", "root_name": Path(cohort.root).name,
                "reference_date": str(cohort.reference_date),
                "drawing": package_versions(("matplotlib", "pillow"))}, cohort.patients)
    entry = _entry(cache_dir, "explore", key)
    out_dir = Path(out_dir)
    if _valid(entry):
        summary = read_json(entry / SUMMARY_JSON)
        shutil.copytree(entry / "files", out_dir, dirs_exist_ok=True)
        summary["files"] = {name: out_dir / name for name in summary["files"]}
        return summary
    summary = explore(cohort, out_dir)

    def fill(staging: Path) -> None:
        shutil.copytree(out_dir, staging / "files")
        (staging / SUMMARY_JSON).write_text(dumps_json(
            {**summary, "files": sorted(summary["files"])}))

    _store(entry, fill)
    return summary


def cached_fit(model: PatientModel, patients: Sequence, y: Any, *, tag: str,
               cache_dir: str | Path | None, fit: Callable[[], PatientModel],
               save: Callable[[PatientModel, Path], None] | None = None,
               extra: dict | None = None) -> tuple[PatientModel, Path | None]:
    """``fit()`` (which fits ``model`` on ``patients``), or the model saved by an earlier fit
    with the same inputs. Returns (the fitted model, the cached model folder or None).

    ``save(model, folder)`` writes the fitted model (default: ``model.save``); ``extra`` is
    anything else its folder holds (the run's metadata), part of the key.
    """
    key = _key({"kind": tag, "class": type(model).__name__,
                "params": encode_param(model.get_params(deep=False)),
                "labels": [int(v) for v in y], "extra": extra or {}}, patients)
    entry = _entry(cache_dir, "fit", key)
    if _valid(entry) and _valid(entry / "model"):
        return PatientModel.load(entry / "model"), entry / "model"
    fitted = fit()
    save = save or (lambda m, folder: m.save(folder))
    _store(entry, lambda staging: save(fitted, staging / "model"))
    return fitted, None


def train_cached(model: PatientModel, labelled: Any, out: Path, *, name: str, reference_date,
                 cache_dir: str | Path | None = None, seed: int = 0,
                 extra: dict | None = None, referral: Any = None) -> PatientModel:
    """:func:`lymphomil.flows.steps.train_model` into ``out``, or the folder an earlier run trained
    from the same inputs (the referral rule among them), copied as it was written (metadata,
    referral rule and OOD checks included)."""
    out = Path(out)
    key_extra = {"name": name, "reference_date": str(reference_date), "seed": seed,
                 "metadata": extra or {},
                 "referral": None if referral is None else referral.model_dump(mode="json")}
    fitted, cached = cached_fit(
        model, labelled.patients, labelled.y, tag="train", cache_dir=cache_dir, extra=key_extra,
        fit=lambda: train_model(model, labelled, out, name=name, reference_date=reference_date,
                                cache_dir=cache_dir, seed=seed, extra=extra,
                                referral=referral),
        save=lambda _, folder: shutil.copytree(out, folder))
    if cached is not None:
        shutil.copytree(cached, out)
    return fitted


def clear(cache_dir: str | Path | None = None) -> tuple[int, int]:
    """Remove the entries this module wrote under ``<cache>/run/`` (names ``explore-<key>`` and
    ``fit-<key>``; anything else is left alone): (entries, bytes)."""
    import re

    root = cache_root(cache_dir) / "run"
    removed = freed = 0
    if not root.is_dir():
        return 0, 0
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and re.fullmatch(r"(explore|fit)-[0-9a-f]{32}", entry.name):
            freed += sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed, freed
