"""The process's compute settings: how many cores it may use and how many threads it fits with.

A bottom-layer module (nothing of lymphomil imported): the CLI, the pipeline and the engines'
workers all set threads through it, and the digests and extractor size their pools from it.
"""

from __future__ import annotations

import os
from typing import Sequence

_THREAD_LIMITS: list = []


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def package_versions(names: Sequence[str]) -> dict[str, str]:
    """Installed versions of the distributions ``names`` from their metadata (nothing imported;
    ``"absent"`` for one not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def set_threads(threads: int) -> None:
    """Fix torch's and the BLAS libraries' thread counts for model fitting.

    Same threads → same floating-point reductions → same answers; and small models on 2 cores
    run faster on one thread than on two that spin against another process. Feature extraction
    manages its own threads (one decoding while one computes).
    """
    import torch
    from threadpoolctl import threadpool_limits

    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    _THREAD_LIMITS[:] = [threadpool_limits(limits=threads)]  # kept alive: the limit holds
