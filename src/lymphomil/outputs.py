"""Files that a later run may trust: atomic writes, checksums, safe loading.

Everything lymphomil writes goes through :func:`atomic_write_bytes` (temp file in the same folder,
fsync, rename), so a killed run leaves either the old file or the new one, never half of one.
A folder of outputs (a model, a run) gets a ``checksums.json`` written last; :func:`verify_dir`
refuses a folder whose files do not match it. Nothing here unpickles.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lymphomil.errors import LymphomilError

CHECKSUMS = "checksums.json"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: temp files are private (0600); finished ones get the permissions a plain open() would give
_UMASK = _current_umask()
FILE_MODE, DIR_MODE = 0o666 & ~_UMASK, 0o777 & ~_UMASK


def default_cache_root() -> Path:
    """``$LYMPHOMIL_CACHE_DIR``, else the user's cache folder (features, CV results, synth)."""
    from platformdirs import user_cache_dir

    return Path(os.environ.get("LYMPHOMIL_CACHE_DIR") or user_cache_dir("lymphomil")).expanduser()


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The lymphomil cache for a ``--cache-dir`` (or the default): features/, cv/, synthetic/."""
    return Path(cache_dir).expanduser() if cache_dir else default_cache_root()


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner()}.", suffix=".tmp", dir=path.parent)
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


def dumps_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=_json_default, allow_nan=True) + "\n"


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, dumps_json(data))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LymphomilError("file not found", file=path,
                             fix="check the path (a model folder is made by `lymphomil train`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise LymphomilError(f"not valid JSON ({exc})", file=path,
                             fix="the file is damaged: re-create it (re-run the command that made it)") from None


def write_checksums(folder: str | Path) -> Path:
    """Record the sha256 of every file under ``folder`` (written last: its presence = complete)."""
    folder = Path(folder)
    sums = {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != CHECKSUMS and not p.name.startswith(".")
    }
    return atomic_write_json(folder / CHECKSUMS, sums)


def verify_dir(folder: str | Path, what: str = "model") -> None:
    """Refuse a folder that is incomplete or whose files changed since they were written."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LymphomilError(f"{what} folder not found", file=folder,
                             fix=f"give the folder written by lymphomil ({what})")
    if not (folder / CHECKSUMS).is_file():
        raise LymphomilError(f"{what} folder is incomplete (no {CHECKSUMS}: the run that wrote it "
                             "did not finish)", file=folder, fix="re-create it")
    sums = read_json(folder / CHECKSUMS)
    for rel, expected in sums.items():
        target = folder / rel
        if not target.is_file():
            raise LymphomilError(f"{what} file {rel} is missing", file=folder, fix="re-create it")
        if sha256_file(target) != expected:
            raise LymphomilError(f"{what} file {rel} does not match its checksum (changed or "
                                 "damaged)", file=target, fix="re-create it; never edit it by hand")


#: lymphomil's own record in every output folder it writes: which files it wrote. Only a folder
#: with this record, holding no other file, is ever replaced or cleared (never one that merely
#: holds a metrics.json or a model.json).
OUTPUT_MARKER = ".lymphomil-output.json"


def _files_under(folder: Path) -> list[str]:
    """Every file (and link) under ``folder``, relative, sorted; folders themselves not listed."""
    out = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_dir():
            out.append(path.relative_to(folder).as_posix())
    return out


def write_output_marker(folder: str | Path, kind: str) -> Path:
    """Record the files of a finished output folder (called last, before the rename)."""
    folder = Path(folder)
    files = [f for f in _files_under(folder) if f != OUTPUT_MARKER]
    return atomic_write_json(folder / OUTPUT_MARKER, {"written_by": "lymphomil", "kind": kind,
                                                      "files": files})


def foreign_files(folder: str | Path) -> list[str] | None:
    """Files in ``folder`` that lymphomil did not write there; ``None`` when the folder has no
    readable marker at all (nothing in it is known to be lymphomil's)."""
    folder = Path(folder)
    try:
        record = json.loads((folder / OUTPUT_MARKER).read_text(encoding="utf-8"))
        listed = set(record["files"]) | {OUTPUT_MARKER}
        if record.get("written_by") != "lymphomil" or not all(isinstance(f, str) for f in listed):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [f for f in _files_under(folder) if f not in listed and not _our_temp(f)]


def _our_temp(relative: str) -> bool:
    """A temp file of an interrupted atomic write (``.NAME.HOST-PID.xxx.tmp``)."""
    name = relative.rsplit("/", 1)[-1]
    return name.startswith(".") and name.endswith(".tmp")


def ensure_replaceable(out: str | Path, marker: str | None = None, what: str = "output") -> None:
    """Refuse to replace ``out`` unless lymphomil wrote everything in it.

    Decided by lymphomil's own record (:data:`OUTPUT_MARKER`, the list of files it wrote),
    never by the presence of a common file name (``marker`` is ignored; kept for callers).
    """
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise LymphomilError("the output path is a broken symbolic link", file=out,
                             fix="give a folder path")
    if out.exists() and not out.is_dir():
        raise LymphomilError("the output path is a file, not a folder", file=out,
                             fix="give a folder path (new, or one lymphomil wrote)")
    if not out.is_dir():
        return
    try:
        empty = not any(out.iterdir())
    except OSError as exc:
        raise LymphomilError(f"cannot read the output folder ({exc.strerror or exc})", file=out,
                             fix="check its permissions, or give another --out") from None
    if empty:
        return
    foreign = foreign_files(out)
    if foreign is None:
        raise LymphomilError(
            f"the output folder exists and was not written by lymphomil (no {OUTPUT_MARKER} "
            "listing its files); lymphomil replaces only folders it wrote", file=out,
            fix=f"choose another --out folder (a new or empty one), or move this folder away")
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                          else "")
        raise LymphomilError(
            f"the output folder holds file(s) lymphomil did not write: {shown}; replacing the "
            f"{what} folder would delete them", file=out,
            fix="move those files out of the folder, or choose another --out folder")


def check_not_an_input(out: str | Path, inputs: dict[str, str | Path | None],
                       option: str = "--out") -> None:
    """An output may never be one of the command's inputs, lie inside an input folder, or hold
    an input (replacing it would delete that input)."""
    target = Path(os.path.realpath(Path(out).expanduser()))
    for name, path in inputs.items():
        if path is None:
            continue
        source = Path(os.path.realpath(Path(path).expanduser()))
        if target == source:
            raise LymphomilError(f"{option} is the {name} itself", file=out,
                                 fix=f"write the output elsewhere: {option} must not be an input")
        # an output inside the cache folder is allowed (the cache only adds its own files)
        if (target.is_relative_to(source) and name != "cache folder"
                and (source.is_dir() or not source.exists())):
            raise LymphomilError(f"{option} lies inside the {name} ({source})", file=out,
                                 fix=f"write the output outside the {name}")
        if source.is_relative_to(target):
            raise LymphomilError(f"{option} holds the {name} ({source}): writing the output "
                                 "there would replace it", file=out,
                                 fix=f"give {option} a folder that does not contain the inputs")


# --------------------------------------------------------------------------- locks

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
            if host == _host() and pid == os.getpid():  # ours, from an earlier call
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
            json.dump({"host": _host(), "pid": os.getpid()}, handle)
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
    except (OSError, ValueError, KeyError, TypeError):
        # half-written by a process that died at once, or not ours: stale after a minute
        with contextlib.suppress(OSError):
            if time.time() - lock.stat().st_mtime < 60:
                return ("?", -1)
        return None


def _stale(owner: tuple[str, int]) -> bool:
    host, pid = owner
    return host == _host() and pid > 0 and not _pid_alive(pid)


def release_output_lock(final: str | Path) -> None:
    lock = _lock_path(Path(final))
    key = str(lock.absolute())
    depth = _LOCKS_HELD.get(key, 0)
    if depth > 1:
        _LOCKS_HELD[key] = depth - 1
        return
    _LOCKS_HELD.pop(key, None)
    if depth == 1 and _lock_owner(lock) == (_host(), os.getpid()):
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
    """Before any work: ``out`` is not an input, may be replaced (folders), and is locked for this
    command (released by :func:`release_claims`, which the CLI calls when a command ends)."""
    out = Path(out)
    check_not_an_input(out, inputs or {}, option)
    if folder:
        ensure_replaceable(out, None, what)
    elif out.is_dir():
        raise LymphomilError(f"{option} is a folder, not a file", file=out,
                             fix=f"give {option} a file path, e.g. predictions.csv")
    acquire_output_lock(out)
    _CLAIMS.append(out)
    return out


def release_claims() -> None:
    while _CLAIMS:
        release_output_lock(_CLAIMS.pop())


def _host() -> str:
    """This machine's name, safe in a file name: which leftovers are ours to judge (another
    machine's PIDs on a shared filesystem mean nothing here)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname()) or "host"


def _owner() -> str:
    """This process as ``host-pid``."""
    return f"{_host()}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _left_by_dead_processes(folder: Path, patterns: Sequence[re.Pattern[str]]
                            ) -> Iterator[tuple[Path, re.Pattern[str]]]:
    """Entries of ``folder`` (no symlinks) whose name matches one of ``patterns`` with a PID
    (group 1) of this machine that no longer runs; with the pattern that matched."""
    if not folder.is_dir():
        return
    for entry in sorted(folder.iterdir()):
        for pattern in patterns:
            match = pattern.fullmatch(entry.name)
            if match and not entry.is_symlink() and not _pid_alive(int(match.group(1))):
                yield entry, pattern
                break


def sweep_stale_staging(final: str | Path) -> list[Path]:
    """Clear what killed runs on this machine left beside ``final``: staging folders
    (``.NAME.HOST-PID.*.tmp``) and replaced folders (``.NAME.old.HOST-PID``) whose process is
    gone. A replaced folder is put back when a kill between the two renames left ``final``
    missing (it was complete; its checksums still guard it). A live process's, another
    machine's and any other name's are left alone."""
    final = Path(final)
    host = re.escape(_host())
    name = re.escape(final.name)
    staging = re.compile(rf"\.{name}\.{host}-(\d+)\.[a-z0-9_]+\.tmp")  # mkdtemp's names
    replaced = re.compile(rf"\.{name}\.old\.{host}-(\d+)")
    removed: list[Path] = []
    for entry, pattern in _left_by_dead_processes(final.parent, (staging, replaced)):
        if not entry.is_dir():
            continue
        if pattern is replaced and not os.path.lexists(final):
            os.replace(entry, final)  # the previous output, whole: back under its name
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def sweep_stale_temp_files(folder: str | Path) -> list[Path]:
    """Remove the temp files (``.NAME.HOST-PID.*.tmp``) that killed processes on this machine
    left in ``folder`` while writing with :func:`atomic_write_bytes`. A live process's, another
    machine's and any other name's are left alone; no file a reader trusts is touched."""
    pattern = re.compile(rf"\..+\.{re.escape(_host())}-(\d+)\.[a-z0-9_]+\.tmp")  # mkstemp's
    removed: list[Path] = []
    for entry, _ in _left_by_dead_processes(Path(folder), (pattern,)):
        if entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


@contextlib.contextmanager
def staged_dir(final: str | Path, kind: str = "output") -> Iterator[Path]:
    """Build a folder under a temp name and move it into place only when complete.

    A previous folder at ``final`` is replaced only after the new one is fully written. The temp
    names carry this machine and process, so the next run can clear what a killed one left.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(final):
        sweep_stale_staging(final)
        ensure_replaceable(final, None, kind)  # before any work, and again before the rename
        with _staging(final) as staging:
            yield staging
            write_checksums(staging)
            write_output_marker(staging, kind)
            ensure_replaceable(final, None, kind)
            _put_in_place(staging, final)


@contextlib.contextmanager
def _staging(final: Path) -> Iterator[Path]:
    owner = _owner()
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
    owner = _owner()
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


def check_cache_location(cache_dir: str | Path | None, data: str | Path | None) -> None:
    """The cache writes files: never inside the data folder (nor the data folder itself)."""
    if data is None:
        return
    check_not_an_input(cache_root(cache_dir), {"data folder": data}, "--cache-dir")
