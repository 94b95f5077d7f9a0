"""The caches a flow consults, behind one small interface, and one :func:`clear_all` behind
``lymphomil cache clear``.

Everything under the cache root (``--cache-dir``, else ``$LYMPHOMIL_CACHE_DIR``, else the user's
cache folder) is content-addressed and recomputed when missing:

* ``features/`` — the feature store (:func:`feature_store`; docs/design.md §3), attached to the
  patients a model reads (:func:`attach_features`, :func:`with_features`);
* ``cv/`` — CV results, stored fits, inner-CV and refit probabilities
  (:func:`cv_results`; :mod:`lymphomil.evaluation.cvcache` keys and reads them);
* ``run/`` — a rerun's exploration and fitted models (:func:`cached_explore`,
  :func:`cached_fit`), keyed by every patient's ID, label, attributes and image files, the
  model's class and parameters, the seed and the versions. A hit loads the saved folder (JSON +
  safetensors), which predicts exactly what the fit did: models are deterministic for a seed;
* ``validated/`` — the image memo: clean strict-decode verdicts per file (``data/images.py``,
  consulted by ``load_cohort``);
* ``figures/`` — the report's drawn figures by their inputs (``report/plots.py``).

An entry of ``run/`` is written whole (a staged folder with checksums) and checked when read; a
damaged or missing one is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from lymphomil.data import images
from lymphomil.data.cohort import LabelledSet, Patient, as_patient_array
from lymphomil.evaluation import cvcache
from lymphomil.features import attach_store
from lymphomil.features.cache import FeatureCache, feature_root, shared_cache
from lymphomil.models.base import PatientModel, encode_param, library_versions
from lymphomil.outputs import (
    cache_root,
    cv_cache,
    dumps_json,
    is_intact,
    listed_path_problem,
    read_json,
    write_cache_entry,
)
from lymphomil.report.explore import explore
from lymphomil.runtime.engine import Engine
from lymphomil.runtime.environment import package_versions
from lymphomil.runtime.errors import LymphomilError

RUN_FORMAT = 1
SUMMARY_JSON = "summary.json"
#: the report's figure memo under the cache root (report/plots.py's figure_cache)
FIGURES = "figures"
_RUN_ENTRY = re.compile(r"(explore|fit)-[0-9a-f]{32}")


def feature_store(cache_dir: Path | None = None) -> FeatureCache:
    """One FeatureCache per cache folder in a process, so the stages of a run (features, CV,
    train, predict) share its in-memory arrays instead of re-reading every file."""
    return shared_cache(feature_root(cache_dir))


def with_features(labelled: LabelledSet, models: Iterable[PatientModel],
                  cache_dir: Path | None = None) -> LabelledSet:
    """The same labelled set, its patients carrying the features ``models`` read
    (:func:`attach_features`): what fitting a model, its referral rule and its checks take."""
    return LabelledSet(labelled.cohort, attach_features(labelled.patients, models, cache_dir),
                       labelled.y)


def attach_features(patients: Sequence[Patient], models: Iterable[PatientModel],
                    cache_dir: Path | None = None, engine: Engine | None = None
                    ) -> np.ndarray:
    """Patients with the feature cache attached, everything the models need already computed."""
    needed = []
    for model in models:
        for item in model.required_features():
            if item not in needed:
                needed.append(item)
    store = feature_store(cache_dir)
    if needed:
        by_spec: dict = {}
        for spec, kind in needed:
            by_spec.setdefault(spec, []).append(kind)
        for spec, kinds in by_spec.items():
            store.ensure(patients, spec, kinds=tuple(kinds), engine=engine)
        return attach_store(patients, store)
    return as_patient_array(patients)  # no image features: the patients as they are


def cv_results(cache_dir: Path | None = None) -> Path:
    """The folder of CV results, stored fits, inner-CV and refit probabilities."""
    return cv_cache(cache_dir)


def figures(cache_dir: Path | None = None) -> Path:
    """The folder where the report keeps the figures it drew (by their inputs)."""
    return cache_root(cache_dir) / FIGURES


# --------------------------------------------------------------------------- run results

def _key(payload: dict, patients: Sequence) -> str:
    payload = {"format": RUN_FORMAT, **payload, "versions": library_versions(),
               "patients": cvcache.patients_fingerprint(patients)}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _entry(cache_dir: str | Path | None, kind: str, key: str) -> Path:
    return cache_root(cache_dir) / "run" / f"{kind}-{key}"


def _cached_summary(entry: Path) -> Any:
    """A cache entry's summary.json, or None when the entry is damaged or not valid JSON."""
    try:
        return read_json(entry / SUMMARY_JSON) if is_intact(entry) else None
    except LymphomilError:
        return None


def cached_explore(cohort: Any, out_dir: Path, cache_dir: str | Path | None = None) -> dict:
    """:func:`lymphomil.report.explore.explore` of ``cohort`` into ``out_dir``, from the cache
    when the same cohort was explored before (the figures are what a warm run spent most on)."""
    key = _key({"kind": "explore", "root_name": Path(cohort.root).name,
                "reference_date": str(cohort.reference_date),
                "drawing": package_versions(("matplotlib", "pillow"))}, cohort.patients)
    entry = _entry(cache_dir, "explore", key)
    out_dir = Path(out_dir)
    summary = _cached_summary(entry)
    if isinstance(summary, dict) and isinstance(summary.get("files"), list) and all(
            isinstance(name, str) and not listed_path_problem(entry / "files", name)
            for name in summary["files"]):  # anything else: explored again
        shutil.copytree(entry / "files", out_dir, dirs_exist_ok=True)
        summary["files"] = {name: out_dir / name for name in summary["files"]}
        return summary
    summary = explore(cohort, out_dir)

    def fill(staging: Path) -> None:
        shutil.copytree(out_dir, staging / "files")
        (staging / SUMMARY_JSON).write_text(dumps_json(
            {**summary, "files": sorted(summary["files"])}))

    write_cache_entry(entry, fill)
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
    if is_intact(entry) and is_intact(entry / "model"):
        return PatientModel.load(entry / "model"), entry / "model"
    fitted = fit()
    save = save or (lambda m, folder: m.save(folder))
    write_cache_entry(entry, lambda staging: save(fitted, staging / "model"))
    return fitted, None


# --------------------------------------------------------------------------- clearing

@dataclass
class Cleared:
    """What :func:`clear_all` removed under the cache root, per cache, and what it left alone."""

    root: Path
    bytes: int = 0
    #: files (CV results, the image memo, figures) or entries (run results) removed; the
    #: feature cache counts its bytes only
    counts: dict[str, int] = field(default_factory=dict)
    #: files under the cache that it did not write, left where they are
    kept: list[Path] = field(default_factory=list)


def clear_all(cache_dir: str | Path | None = None) -> Cleared:
    """Delete what every cache wrote under the cache root, and nothing else: the feature files
    (by their content-addressed names), the CV results the CV cache's manifest lists and its
    stored fits, the run results (``explore-<key>``, ``fit-<key>``), the image memo and the
    report's figures (by the names they write)."""
    cleared = Cleared(cache_root(cache_dir))
    store = FeatureCache(feature_root(cache_dir))
    cleared.bytes += store.clear()
    cleared.kept += list(getattr(store, "kept", []))
    files, size, kept = cvcache.clear(cv_cache(cache_dir))
    cleared.counts["CV results"], cleared.bytes = files, cleared.bytes + size
    cleared.kept += kept
    for name, folder, pattern in (
            ("run results", cache_root(cache_dir) / "run", _RUN_ENTRY),
            ("image memo", images.memo_folder(cache_dir), images.MEMO_FILE),
            ("figures", figures(cache_dir), re.compile(r"[0-9a-f]{32}\.png"))):
        count, size = _remove_matching(folder, pattern)
        cleared.counts[name], cleared.bytes = count, cleared.bytes + size
    return cleared


def _remove_matching(folder: Path, pattern: re.Pattern) -> tuple[int, int]:
    """Remove the entries of ``folder`` whose names ``pattern`` matches: (entries, bytes)."""
    removed = freed = 0
    if not folder.is_dir():
        return 0, 0
    for entry in sorted(folder.iterdir()):
        if not pattern.fullmatch(entry.name) or entry.is_symlink():
            continue
        if entry.is_dir():
            freed += sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
            shutil.rmtree(entry, ignore_errors=True)
        else:
            freed += entry.stat().st_size
            entry.unlink(missing_ok=True)
        removed += 1
    return removed, freed


def info(cache_dir: str | Path | None = None) -> dict:
    """The feature cache's entries per spec and the CV results' files and bytes."""
    summary = FeatureCache(feature_root(cache_dir)).info()
    files = cvcache.entry_files(cv_cache(cache_dir))  # only those are the cache's
    summary["cv_results"] = (len(files), sum(p.stat().st_size for p in files))
    return summary
