"""The process's compute settings (how many cores it may use, how many threads it fits with)
and what identifies the code that computes (library versions, lymphomil's own source).

A bottom-layer module (nothing of lymphomil imported): the CLI, the flows and the engines'
workers all set threads through it, and the digests and extractor size their pools from it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path
from typing import Sequence

_THREAD_LIMITS: list = []
_TORCH_THREADS: list[int] = []  # what set_threads asked for, applied when torch is imported


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


def tree_digest(root: str | Path) -> str:
    """First 16 hex digits of a sha256 over every file under ``root`` (its path below ``root``
    and its bytes), compiled bytecode left out: two trees digest alike only when every source
    file is the same."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()
                       and p.suffix != ".pyc" and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def source_digest() -> str:
    """The digest of lymphomil's installed source (:func:`tree_digest`, once per process).
    ``__version__`` stays put while a developer edits a model, so the caches of computed
    results (CV, run) and the Ray nodes' check key on this too: a result is reused only by the
    code that computed it."""
    return tree_digest(Path(__file__).resolve().parents[1])  # lymphomil/, not runtime/


def set_threads(threads: int) -> None:
    """Fix torch's and the BLAS libraries' thread counts for model fitting.

    Same threads → same floating-point reductions → same answers; and small models on 2 cores
    run faster on one thread than on two that spin against another process. Feature extraction
    manages its own threads (one decoding while one computes).
    """
    from threadpoolctl import threadpool_limits

    threads = max(1, int(threads))
    _TORCH_THREADS[:] = [threads]
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    elif not any(isinstance(f, _TorchThreadsOnImport) for f in sys.meta_path):
        # a command whose models need no torch (fusion-mean) never pays torch's import
        sys.meta_path.insert(0, _TorchThreadsOnImport())
    _THREAD_LIMITS[:] = [threadpool_limits(limits=threads)]  # kept alive: the limit holds


class _TorchThreadsOnImport(importlib.abc.MetaPathFinder):
    """Sets torch's threads (:func:`set_threads`) as torch finishes importing, before any op."""

    def find_spec(self, name, path, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_set_threads(module):
            exec_module(module)
            module.set_num_threads(_TORCH_THREADS[-1])

        spec.loader.exec_module = exec_then_set_threads  # this spec's loader only
        return spec
