"""Where lymphomil keeps its caches (features, CV results, synthetic cohorts), and where a cache
may not go (never into the data folder)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_root() -> Path:
    """``$LYMPHOMIL_CACHE_DIR``, else the user's cache folder (features, CV results, synth)."""
    from platformdirs import user_cache_dir

    return Path(os.environ.get("LYMPHOMIL_CACHE_DIR") or user_cache_dir("lymphomil")).expanduser()


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The lymphomil cache for a ``--cache-dir`` (or the default): features/, cv/, synthetic/."""
    return Path(cache_dir).expanduser() if cache_dir else default_cache_root()



def check_cache_location(cache_dir: str | Path | None, data: str | Path | None) -> None:
    """The cache writes files: never inside the data folder (nor the data folder itself)."""
    from lymphomil.outputs.ownership import check_not_an_input

    if data is None:
        return
    check_not_an_input(cache_root(cache_dir), {"data folder": data}, "--cache-dir")
