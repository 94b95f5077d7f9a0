"""Two processes that need the same features share the work instead of both computing it.

Before computing a patient, a process claims it: an exclusive ``flock`` on
``.<patient>-<content>.claim.tmp`` in the spec folder (released by the kernel when the process
dies, so a killed claimant never blocks anyone). Patients another process holds are skipped;
when only those are left, the process waits for one of them and then finds its files written
(or, if that process died, claims and computes it). Claims are taken a chunk of about
:data:`CHUNK_IMAGES` images at a time, so two runs started together split the cohort. A file
computed twice by a race is harmless: writes are atomic and the bytes identical.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Sequence

#: images claimed at a time (about 32 batches: the tail of a chunk costs little)
CHUNK_IMAGES = 512


def claim_path(folder: Path, patient_id: str, content_hash: str) -> Path:
    return Path(folder) / f".{patient_id}-{content_hash}.claim.tmp"


def _take(path: Path, block: bool) -> tuple[bool, int | None]:
    """(granted, fd). A folder where no claim file can be made grants it (no sharing then)."""
    import fcntl

    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError:
        return True, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return False, None
    except BaseException:
        os.close(fd)
        raise
    return True, fd


def _release(path: Path, fd: int | None) -> None:
    import fcntl

    if fd is None:
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # while still held: a waiter then finds the files written
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def share_work(sizes: Sequence[int], paths: Sequence[Path], done: Callable[[int], bool],
               compute: Callable[[list[int]], int],
               on_done_elsewhere: Callable[[int], None] | None = None,
               chunk_images: int = CHUNK_IMAGES) -> int:
    """Compute every item ``i`` (``sizes[i]`` images, claim file ``paths[i]``) that is not
    ``done(i)``, a claimed chunk at a time with ``compute(indices)`` (returns images computed);
    ``on_done_elsewhere(i)`` for each item another process finished. The images computed here."""
    pending = list(range(len(sizes)))
    computed = 0
    while pending:
        chunk: list[int] = []
        held: list[tuple[Path, int | None]] = []
        waiting: list[int] = []
        images = 0
        try:
            for i in pending:
                if done(i):
                    if on_done_elsewhere is not None:
                        on_done_elsewhere(i)
                    continue
                if chunk and images >= chunk_images:
                    waiting.append(i)
                    continue
                granted, fd = _take(paths[i], block=False)
                if not granted:
                    waiting.append(i)
                    continue
                held.append((paths[i], fd))
                if done(i):  # finished between the check and the claim
                    if on_done_elsewhere is not None:
                        on_done_elsewhere(i)
                    continue
                chunk.append(i)
                images += sizes[i]
            if chunk:
                computed += compute(chunk)
            elif waiting:  # all that is left is another process's: wait for one of them
                granted, fd = _take(paths[waiting[0]], block=True)
                held.append((paths[waiting[0]], fd))
        finally:
            for path, fd in held:
                _release(path, fd)
        pending = waiting
    return computed
