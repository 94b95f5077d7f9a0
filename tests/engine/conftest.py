"""Helpers for the engine tests: identical-output checks and a real worker killer."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest

#: features the engine tests extract (a real backbone, small crop: fast on 2 cores)
SPEC_TEXT = "efficientnet-lite0@64"


def require_ray():
    """Ray, or a skip where the extra is not installed (``make test`` sets
    LYMPHOMIL_REQUIRE_RAY=1 so that CI fails instead of skipping)."""
    if os.environ.get("LYMPHOMIL_REQUIRE_RAY") == "1":
        import ray

        return ray
    return pytest.importorskip("ray")


def cache_digests(cache_dir: Path) -> dict[str, str]:
    """sha256 of every feature file under a cache folder, by relative path."""
    root = Path(cache_dir) / "features"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.safetensors"))}


class WorkerKiller:
    """SIGKILLs the first Ray worker seen running ``task`` (its process title ``ray::task``)."""

    def __init__(self, task: str):
        self.title = f"ray::{task}".encode()
        self.killed: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set() and not self.killed:
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    title = (entry / "cmdline").read_bytes().split(b"\0")[0].strip()
                except OSError:
                    continue
                if title == self.title:
                    try:
                        os.kill(int(entry.name), signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    self.killed.append(int(entry.name))
                    return
            time.sleep(0.005)

    def __enter__(self) -> "WorkerKiller":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
