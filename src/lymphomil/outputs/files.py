"""Files a later run may trust: atomic writes, JSON, checksums (nothing here unpickles).

Everything lymphomil writes goes through :func:`atomic_write_bytes` (temp file in the same folder,
fsync, rename), so a killed run leaves either the old file or the new one, never half of one.
A folder of outputs (a model, a run) gets a ``checksums.json`` written last; :func:`verify_dir`
refuses a folder whose files do not match it. The temp names carry this machine and process, so
a later run can clear what a killed one left (:func:`sweep_stale_temp_files`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lymphomil.runtime.errors import LymphomilError

CHECKSUMS = "checksums.json"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: temp files are private (0600); finished ones get the permissions a plain open() would give
_UMASK = _current_umask()
FILE_MODE, DIR_MODE = 0o666 & ~_UMASK, 0o777 & ~_UMASK



def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file and a rename (POSIX-atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the owner in the name lets a later run clear what a killed one left (sweep_stale_temp_files)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}.", suffix=".tmp",
                               dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def strict(value: Any) -> Any:
    """``value`` with every non-finite number (NaN, ±inf; numpy's too) as None: strict JSON
    (RFC 8259) has no NaN, and other programs' readers refuse Python's bare ``NaN``."""
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(item) for item in value]
    if isinstance(value, np.ndarray):
        return strict(value.tolist())
    return value


def dumps_json(data: Any, compact: bool = False) -> str:
    """Strict JSON text of ``data`` (a missing figure is ``null``, never ``NaN``): every JSON
    file lymphomil writes goes through here; ``compact``: no indentation."""
    if compact:
        return json.dumps(strict(data), separators=(",", ":"), sort_keys=True,
                          default=_json_default, allow_nan=False)
    return json.dumps(strict(data), indent=2, sort_keys=True, default=_json_default,
                      allow_nan=False) + "\n"


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, dumps_json(data))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LymphomilError("file not found", file=path,
                             fix="check the path (a model folder is made by `lymphomil "
                                 "train`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise LymphomilError(f"not valid JSON ({exc})", file=path,
                             fix="the file is damaged: re-create it (re-run the command that "
                                 "made it)") from None


def write_checksums(folder: str | Path) -> Path:
    """Record the sha256 of every file under ``folder`` (written last: its presence = complete)."""
    folder = Path(folder)
    sums = {rel: sha256_file(folder / rel) for rel in sorted(listed_files(folder))}
    return atomic_write_json(folder / CHECKSUMS, sums)


_SHA256 = re.compile(r"[0-9a-f]{64}")


def listed_path_problem(folder: Path, name: str) -> str | None:
    """Why a name in ``checksums.json`` is not a plain file inside ``folder`` (a relative path,
    no '..', no symbolic link on the way), or None: a folder's own files must never lead
    lymphomil outside it."""
    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or "\0" in name or any(
            part in ("", ".", "..") for part in parts):
        return "is not a plain relative path inside the folder"
    path = folder
    for part in parts:
        path = path / part
        if path.is_symlink():
            return "is (or lies below) a symbolic link"
    if not path.is_file():
        return None  # reported as missing
    if not os.path.realpath(path).startswith(os.path.realpath(folder) + os.sep):
        return "lies outside the folder"
    return None


def listed_files(folder: Path, links: bool = False) -> set[str]:
    """The files :func:`write_checksums` lists in ``folder`` (relative, '/'-separated); with
    ``links``, every symbolic link too (which a verified folder must not hold)."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if (p.is_file() or (links and p.is_symlink())) and p.name != CHECKSUMS
            and not p.name.startswith(".")}


def is_intact(folder: str | Path) -> bool:
    """Whether ``folder`` is whole and unchanged (:func:`verify_dir` finds nothing wrong): what
    a cache asks before it reuses an entry it wrote."""
    try:
        verify_dir(folder, "cache entry")
    except (LymphomilError, OSError):
        return False
    return True


def verify_dir(folder: str | Path, what: str = "model") -> dict[str, str]:
    """Refuse a folder that is incomplete, whose files changed since they were written, whose
    ``checksums.json`` is not a JSON object of names and sha256 digests, names a path outside
    the folder or a link, or leaves out a file the folder holds. Returns the listed files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LymphomilError(f"{what} folder not found", file=folder,
                             fix=f"give the folder written by lymphomil ({what})")
    if not (folder / CHECKSUMS).is_file():
        raise LymphomilError(f"{what} folder is incomplete (no {CHECKSUMS}: the run that wrote it "
                             "did not finish)", file=folder, fix="re-create it")
    sums = read_json(folder / CHECKSUMS)
    if not isinstance(sums, dict) or not all(
            isinstance(v, str) and _SHA256.fullmatch(v) for v in sums.values()):
        raise LymphomilError("the file is not a list of the folder's files and their sha256 (a "
                             "JSON object of names and 64 hex digits)", file=folder / CHECKSUMS,
                             fix=f"re-create the {what} folder; never edit it by hand")
    for rel, expected in sums.items():
        problem = listed_path_problem(folder, rel)
        if problem:
            raise LymphomilError(f"{CHECKSUMS} names {rel!r}, which {problem}",
                                 file=folder / CHECKSUMS,
                                 fix=f"re-create the {what} folder; never edit it by hand")
        target = folder / rel
        if not target.is_file():
            raise LymphomilError(f"{what} file {rel} is missing", file=folder, fix="re-create it")
        if sha256_file(target) != expected:
            raise LymphomilError(f"{what} file {rel} does not match its checksum (changed or "
                                 "damaged)", file=target, fix="re-create it; never edit it by hand")
    unlisted = sorted(listed_files(folder, links=True) - set(sums))
    if unlisted:
        raise LymphomilError(f"the {what} folder holds file(s) its {CHECKSUMS} does not list: "
                             f"{', '.join(unlisted[:5])}", file=folder / unlisted[0],
                             fix=f"move them out, or re-create the {what} folder")
    return sums


#: lymphomil's own record in every output folder it writes: which files it wrote. Only a folder


def host_name() -> str:
    """This machine's name, safe in a file name: which leftovers are ours to judge (another
    machine's PIDs on a shared filesystem mean nothing here)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname()) or "host"


def owner_tag() -> str:
    """This process as ``host-pid``."""
    return f"{host_name()}-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def left_by_dead_processes(folder: Path, patterns: Sequence[re.Pattern[str]]
                            ) -> Iterator[tuple[Path, re.Pattern[str]]]:
    """Entries of ``folder`` (no symlinks) whose name matches one of ``patterns`` with a PID
    (group 1) of this machine that no longer runs; with the pattern that matched."""
    if not folder.is_dir():
        return
    for entry in sorted(folder.iterdir()):
        for pattern in patterns:
            match = pattern.fullmatch(entry.name)
            if match and not entry.is_symlink() and not pid_alive(int(match.group(1))):
                yield entry, pattern
                break



def sweep_stale_temp_files(folder: str | Path) -> list[Path]:
    """Remove the temp files (``.NAME.HOST-PID.*.tmp``) that killed processes on this machine
    left in ``folder`` while writing with :func:`atomic_write_bytes`. A live process's, another
    machine's and any other name's are left alone; no file a reader trusts is touched."""
    pattern = re.compile(rf"\..+\.{re.escape(host_name())}-(\d+)\.[a-z0-9_]+\.tmp")  # mkstemp's
    removed: list[Path] = []
    for entry, _ in left_by_dead_processes(Path(folder), (pattern,)):
        if entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed

