"""One writer per output, and outputs put in place whole: ``.NAME.lock`` beside an output (a lock
left by a dead process on this machine is taken over), the command's claims, and staged folders
renamed into place (with their marker and checksums) once complete."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from lymphomil.outputs.files import (
    DIR_MODE,
    host_name,
    left_by_dead_processes,
    owner_tag,
    pid_alive,
    write_checksums,
)
from lymphomil.outputs.ownership import (
    KINDS,
    check_not_an_input,
    check_not_inside_output,
    ensure_file_replaceable,
    ensure_replaceable,
    write_output_marker,
)
from lymphomil.runtime.errors import LymphomilError

_LOCKS_HELD: dict[str, int] = {}  # lock file -> depth (re-entrant within one process)
_CLAIMS: list[Path] = []  # outputs claimed by the running command (released at its end)


def _lock_path(final: Path) -> Path:
    return final.parent / f".{final.name}.lock"


def acquire_output_lock(final: str | Path) -> Path:
    """Take ``final``'s lock (``.NAME.lock`` beside it, holding host and PID). A second writer
    stops with a message; a lock left by a dead process on this machine is taken over."""
    final = Path(final)
    lock = _lock_path(final)
    key = str(lock.absolute())
    if _LOCKS_HELD.get(key):
        _LOCKS_HELD[key] += 1
        return lock
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LymphomilError(f"cannot create the output's folder ({exc.strerror or exc})",
                             file=lock.parent, fix="check the path and its permissions") from None
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is None or _stale(owner):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock)
                continue
            host, pid = owner
            if host == host_name() and pid == os.getpid():  # ours, from an earlier call
                _LOCKS_HELD[key] = 1
                return lock
            raise LymphomilError(
                f"another lymphomil process (PID {pid} on {host}) is writing this output",
                file=final, fix=f"wait for it to finish, or give another --out; if that process "
                                f"is gone, delete {lock}") from None
        except OSError as exc:
            raise LymphomilError(f"cannot write in the output's folder ({exc.strerror or exc})",
                                 file=lock.parent,
                                 fix="check its permissions and free space, or give another "
                                     "--out") from None
        with os.fdopen(fd, "w") as handle:
            json.dump({"host": host_name(), "pid": os.getpid()}, handle)
        _LOCKS_HELD[key] = 1
        return lock
    raise LymphomilError("cannot take the output's lock", file=lock,  # pragma: no cover
                         fix=f"delete {lock} if no lymphomil process is running")


def _lock_owner(lock: Path) -> tuple[str, int] | None:
    try:
        record = json.loads(lock.read_text(encoding="utf-8"))
        return str(record["host"]), int(record["pid"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        # half-written by a process that died at once, or not ours: stale after a minute
        with contextlib.suppress(OSError):
            if time.time() - lock.stat().st_mtime < 60:
                return ("?", -1)
        return None


def _stale(owner: tuple[str, int]) -> bool:
    host, pid = owner
    return host == host_name() and pid > 0 and not pid_alive(pid)


def release_output_lock(final: str | Path) -> None:
    lock = _lock_path(Path(final))
    key = str(lock.absolute())
    depth = _LOCKS_HELD.get(key, 0)
    if depth > 1:
        _LOCKS_HELD[key] = depth - 1
        return
    _LOCKS_HELD.pop(key, None)
    if depth == 1 and _lock_owner(lock) == (host_name(), os.getpid()):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)


@contextlib.contextmanager
def output_lock(final: str | Path) -> Iterator[None]:
    acquire_output_lock(final)
    try:
        yield
    finally:
        release_output_lock(final)


def claim_output(out: str | Path, what: str, inputs: dict[str, str | Path | None] | None = None,
                 folder: bool = True, option: str = "--out") -> Path:
    """Before any work: ``out`` is not an input nor inside another output, may be replaced
    (folders: of kind ``what`` when it is one of :data:`KINDS`; files: see
    :func:`ensure_file_replaceable`), and is locked for this command (released by
    :func:`release_claims`, which the CLI calls when a command ends)."""
    out = Path(out)
    check_not_an_input(out, inputs or {}, option)
    check_not_inside_output(out, option)
    if folder:
        ensure_replaceable(out, what, what if what in KINDS else None, option)
    else:
        ensure_file_replaceable(out, what, option)
    acquire_output_lock(out)
    _CLAIMS.append(out)
    return out


def release_claims() -> None:
    while _CLAIMS:
        release_output_lock(_CLAIMS.pop())


def sweep_stale_staging(final: str | Path) -> list[Path]:
    """Clear what killed runs on this machine left beside ``final``: staging folders
    (``.NAME.HOST-PID.*.tmp``) and replaced folders (``.NAME.old.HOST-PID``) whose process is
    gone. A replaced folder is put back when a kill between the two renames left ``final``
    missing (it was complete; its checksums still guard it). A live process's, another
    machine's and any other name's are left alone."""
    final = Path(final)
    host = re.escape(host_name())
    name = re.escape(final.name)
    staging = re.compile(rf"\.{name}\.{host}-(\d+)\.[a-z0-9_]+\.tmp")  # mkdtemp's names
    replaced = re.compile(rf"\.{name}\.old\.{host}-(\d+)")
    removed: list[Path] = []
    for entry, pattern in left_by_dead_processes(final.parent, (staging, replaced)):
        if not entry.is_dir():
            continue
        if pattern is replaced and not os.path.lexists(final):
            os.replace(entry, final)  # the previous output, whole: back under its name
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed





def write_cache_entry(entry: str | Path, fill: Callable[[Path], None]) -> None:
    """Write a cache entry whole (``fill(staging)`` in a :func:`staged_dir`); one that cannot be
    written is left out, as a cache that cannot be written only costs the next run time."""
    try:
        with staged_dir(entry, "cache entry") as staging:
            fill(staging)
    except (LymphomilError, OSError):
        pass


@contextlib.contextmanager
def staged_dir(final: str | Path, kind: str = "output") -> Iterator[Path]:
    """Build a folder under a temp name and move it into place only when complete.

    A previous folder at ``final`` is replaced only after the new one is fully written, and only
    when it is lymphomil's of the same ``kind`` (:func:`ensure_replaceable`). The temp names
    carry this machine and process, so the next run can clear what a killed one left.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    check = kind if kind in KINDS else None
    with output_lock(final):
        sweep_stale_staging(final)
        ensure_replaceable(final, kind, check)  # before any work, and before the rename
        with _staging(final) as staging:
            yield staging
            write_checksums(staging)
            write_output_marker(staging, kind)
            ensure_replaceable(final, kind, check)
            _put_in_place(staging, final)


@contextlib.contextmanager
def _staging(final: Path) -> Iterator[Path]:
    owner = owner_tag()
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.{owner}.", suffix=".tmp",
                                        dir=final.parent))
    except OSError as exc:
        raise LymphomilError(f"cannot write in the output's folder ({exc.strerror or exc})",
                             file=final.parent, fix="check its permissions and free space, or "
                                                    "give another --out") from None
    os.chmod(staging, DIR_MODE)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _put_in_place(staging: Path, final: Path) -> None:
    owner = owner_tag()
    try:
        if final.exists():
            trash = final.with_name(f".{final.name}.old.{owner}")
            os.replace(final, trash)
            os.replace(staging, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

