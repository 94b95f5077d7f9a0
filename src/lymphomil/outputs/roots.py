"""Where lymphomil keeps its caches (features, CV results, synthetic cohorts, image verdicts).
Where a cache may not go (never into the data folder) is :func:`lymphomil.outputs.ownership.
check_cache_location`'s to say."""

from __future__ import annotations

import os
from pathlib import Path

#: the folder of CV results, stored fits and inner-CV probabilities under the cache root
CV_CACHE = "cv"
#: the folders the cache writes under its root: an output never goes there
CACHE_PARTS = ("features", CV_CACHE, "synthetic", "validated")


def default_cache_root() -> Path:
    """``$LYMPHOMIL_CACHE_DIR``, else the user's cache folder (features, CV results, synth)."""
    from platformdirs import user_cache_dir

    return Path(os.environ.get("LYMPHOMIL_CACHE_DIR") or user_cache_dir("lymphomil")).expanduser()


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The lymphomil cache for a ``--cache-dir`` (or the default): features/, cv/, synthetic/."""
    return Path(cache_dir).expanduser() if cache_dir else default_cache_root()


def cv_cache(cache_dir: str | Path | None = None) -> Path:
    """The cache's folder of CV results (:mod:`lymphomil.evaluation.cvcache`), refits and inner
    CVs."""
    return cache_root(cache_dir) / CV_CACHE
