"""What lymphomil may replace: its own output folders and files, never what a user owns.

* A **folder** lymphomil writes (a run, a CV, a model, an explore, a synthetic cohort) carries
  :data:`OUTPUT_MARKER`: its kind and the sha256 of every file it wrote. A command replaces a
  folder only when the marker is of the command's own kind, the folder holds nothing else and
  none of the listed files changed since (anything else is refused, nothing is touched).
* A **single file** (``predict --out``, ``--report``) is replaced only when the record beside it
  (``.NAME.lymphomil.json``, :func:`file_record_path`) says lymphomil wrote exactly these bytes;
  an empty file is taken as free (nothing to lose).
* Never through a symbolic link, never over a FIFO, device or socket, never inside the data
  folder or another lymphomil output folder; every output is staged and renamed into place.
* One writer per output: ``.NAME.lock`` beside it (:mod:`lymphomil.outputs.locks`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from lymphomil.outputs.files import (
    atomic_write_bytes,
    atomic_write_json,
    listed_path_problem,
    sha256_file,
)
from lymphomil.outputs.roots import CACHE_PARTS, cache_root
from lymphomil.runtime.errors import LymphomilError

#: lymphomil's own record in every output folder it writes: its kind and the files it wrote.
#: Only a folder with this record, holding no other file, is ever replaced or cleared (never one
#: that merely holds a metrics.json or a model.json).
OUTPUT_MARKER = ".lymphomil-output.json"
#: the kinds of output folder; a command replaces only its own kind
KINDS = ("run", "cv", "model", "explore", "cohort")
#: what each kind is made by (for messages)
MADE_BY = {"run": "`lymphomil run`", "cv": "`lymphomil cv --out`", "model": "`lymphomil train`",
           "explore": "`lymphomil explore`", "cohort": "`lymphomil synth`"}
#: markers written before kinds were recorded say "output": a model folder or a synthetic cohort,
#: told apart by the file each holds
_LEGACY_KIND_FILES = {"model": "model.json", "cohort": ".lymphomil-synth.json"}


def _files_under(folder: Path) -> list[str]:
    """Every file (and link) under ``folder``, relative, sorted; folders themselves not listed."""
    out = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_dir():
            out.append(path.relative_to(folder).as_posix())
    return out


def write_output_marker(folder: str | Path, kind: str) -> Path:
    """Record the kind and files (with their sha256) of a finished output folder (called last,
    before the rename)."""
    folder = Path(folder)
    files = [f for f in _files_under(folder) if f != OUTPUT_MARKER]
    sums = {f: sha256_file(folder / f) for f in files
            if not (folder / f).is_symlink() and (folder / f).is_file()}
    return atomic_write_json(folder / OUTPUT_MARKER, {"written_by": "lymphomil", "kind": kind,
                                                      "files": files, "sha256": sums})


def read_output_marker(folder: str | Path) -> dict[str, Any] | None:
    """The folder's marker, or ``None`` when it has no readable one of lymphomil's."""
    try:
        record = json.loads((Path(folder) / OUTPUT_MARKER).read_text(encoding="utf-8"))
        files = record["files"]
        if (record.get("written_by") != "lymphomil" or not isinstance(files, list)
                or not all(isinstance(f, str) for f in files)):
            return None
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return record


def foreign_files(folder: str | Path) -> list[str] | None:
    """Files in ``folder`` that lymphomil did not write there; ``None`` when the folder has no
    readable marker at all (nothing in it is known to be lymphomil's)."""
    folder = Path(folder)
    record = read_output_marker(folder)
    if record is None:
        return None
    listed = set(record["files"]) | {OUTPUT_MARKER}
    return [f for f in _files_under(folder) if f not in listed and not _our_temp(f)]


def changed_files(folder: str | Path) -> list[str]:
    """Files the marker lists whose bytes are not those lymphomil wrote (a user's edit), or that
    became a link or something other than a file."""
    folder = Path(folder)
    record = read_output_marker(folder) or {}
    sums = record.get("sha256")
    if not isinstance(sums, dict):
        return []  # a marker from before the sums were recorded: the checksums.json guards it
    changed = []
    for rel, expected in sums.items():
        if listed_path_problem(folder, str(rel)):
            changed.append(str(rel))  # a name that leads out of the folder: never followed
            continue
        path = folder / str(rel)
        if not os.path.lexists(path):
            continue  # removed: nothing of the user's to lose
        if path.is_symlink() or not path.is_file() or sha256_file(path) != expected:
            changed.append(str(rel))
    return changed


def folder_kind(folder: str | Path) -> str | None:
    """The kind of a lymphomil output folder (``None``: not one of ours)."""
    record = read_output_marker(folder)
    if record is None:
        return None
    kind = str(record.get("kind", "output"))
    if kind == "output":  # written before the kind was recorded
        for legacy, name in _LEGACY_KIND_FILES.items():
            if (Path(folder) / name).is_file():
                return legacy
    return kind


def _our_temp(relative: str) -> bool:
    """A temp file of an interrupted atomic write (``.NAME.HOST-PID.xxx.tmp``)."""
    name = relative.rsplit("/", 1)[-1]
    return name.startswith(".") and name.endswith(".tmp")


def _special(path: Path) -> str | None:
    """'a FIFO', 'a device', 'a socket' for a special file at ``path`` (not following links)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None


def _refuse_link_or_special(out: Path, option: str, what: str) -> None:
    if out.is_symlink():
        raise LymphomilError(
            f"the {what} path is a symbolic link (to {os.readlink(out)}): lymphomil never writes "
            "through a link, and replacing the output would replace the link itself", file=out,
            fix=f"give {option} the real path, or remove the link")
    special = _special(out)
    if special:
        raise LymphomilError(f"the {what} path is {special}, not a file or folder lymphomil "
                             "wrote; it is left alone", file=out,
                             fix=f"give {option} another path")


def ensure_replaceable(out: str | Path, what: str = "output", kind: str | None = None,
                       option: str = "--out") -> None:
    """Refuse to replace ``out`` unless it is new, empty, or a lymphomil folder of ``kind``
    (when given) holding only the files lymphomil wrote there, unchanged (the ownership marker
    lymphomil wrote says which: a common file name proves nothing). Nothing is touched when it
    refuses."""
    out = Path(out)
    _refuse_link_or_special(out, option, what)
    if out.exists() and not out.is_dir():
        raise LymphomilError("the output path is a file, not a folder", file=out,
                             fix="give a folder path (new, or one lymphomil wrote)")
    if not out.is_dir():
        return
    try:
        empty = not any(out.iterdir())
    except OSError as exc:
        raise LymphomilError(f"cannot read the output folder ({exc.strerror or exc})", file=out,
                             fix=f"check its permissions, or give another {option}") from None
    if empty:
        return
    foreign = foreign_files(out)
    if foreign is None:
        raise LymphomilError(
            f"the output folder exists and was not written by lymphomil (no {OUTPUT_MARKER} "
            "listing its files); lymphomil replaces only folders it wrote, and nothing was "
            "changed", file=out,
            fix=f"choose another {option} folder (a new or empty one), or move this folder away")
    found = folder_kind(out)
    if kind is not None and found != kind:
        raise LymphomilError(
            f"the output folder is a lymphomil {found} folder (made by "
            f"{MADE_BY.get(str(found), 'another command')}); this command replaces only "
            f"{kind} folders, so it is left as it is", file=out,
            fix=f"choose another {option} folder for the {what}")
    if foreign:
        raise LymphomilError(
            f"the output folder holds file(s) lymphomil did not write: {_shown(foreign)}; "
            f"replacing the {what} folder would delete them, so nothing was changed", file=out,
            fix=f"move those files out of the folder, or choose another {option} folder")
    changed = changed_files(out)
    if changed:
        raise LymphomilError(
            f"file(s) in the output folder changed since lymphomil wrote them: "
            f"{_shown(changed)}; replacing the {what} folder would lose those edits, so "
            "nothing was changed", file=out,
            fix=f"copy the edited files elsewhere and delete the folder, or choose another "
                f"{option} folder")


def _shown(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_not_inside_output(out: str | Path, option: str = "--out") -> None:
    """An output never goes inside a folder lymphomil wrote (a run, a model…): it would become a
    file that folder's record does not list, or replace one its checksums guard."""
    target = Path(os.path.realpath(Path(out).expanduser()))
    for parent in target.parents:
        kind = folder_kind(parent) if (parent / OUTPUT_MARKER).is_file() else None
        if kind is not None:
            raise LymphomilError(
                f"{option} lies inside a lymphomil {kind} folder ({parent}); writing there "
                "would change that folder behind its record", file=out,
                fix=f"write the output outside {parent}")


# --------------------------------------------------------------------------- single files

def file_record_path(path: str | Path) -> Path:
    """The record beside a single output file: ``.NAME.lymphomil.json``."""
    path = Path(path)
    return path.with_name(f".{path.name}.lymphomil.json")


def _file_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(file_record_path(path).read_text(encoding="utf-8"))
        if record.get("written_by") != "lymphomil":
            return None
        return record
    except (OSError, ValueError, AttributeError, RecursionError):
        return None


def owned_file(path: str | Path) -> bool:
    """``path`` is a regular file whose bytes lymphomil wrote (its record names their sha256)."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    record = _file_record(path)
    if record is None:
        return False
    accepted = {value for value in (record.get("sha256"), record.get("previous"))
                if isinstance(value, str)}  # a record edited to hold anything proves nothing
    return sha256_file(path) in accepted


def ensure_file_replaceable(out: str | Path, what: str = "output", option: str = "--out") -> None:
    """Refuse to replace the single file ``out`` unless it is new, empty, or a file lymphomil
    wrote and nobody changed since (its record beside it)."""
    out = Path(out)
    _refuse_link_or_special(out, option, what)
    if out.is_dir():
        raise LymphomilError(f"{option} is a folder, not a file", file=out,
                             fix=f"give {option} a file path, e.g. predictions.csv")
    if not out.exists():
        return
    if out.stat().st_size == 0 or owned_file(out):
        return
    if _file_record(out) is not None:
        problem = "was changed since lymphomil wrote it"
    else:
        problem = (f"exists and was not written by lymphomil (no record "
                   f"{file_record_path(out).name} beside it)")
    raise LymphomilError(f"the {what} file {problem}; replacing it would lose its content, so "
                         "it was left as it is", file=out,
                         fix=f"give {option} a new file name, or move the file away")


def write_owned_file(path: str | Path, data: bytes, kind: str) -> Path:
    """Write a single output file atomically with its record. The record (new and previous
    sha256) goes first: a kill between the two writes leaves a file the record still accepts."""
    path = Path(path)
    previous = sha256_file(path) if owned_file(path) else None
    atomic_write_json(file_record_path(path), {
        "written_by": "lymphomil", "kind": kind, "file": path.name,
        "sha256": hashlib.sha256(data).hexdigest(), "previous": previous})
    return atomic_write_bytes(path, data)


def remove_owned_file(path: str | Path) -> bool:
    """Remove a single output file lymphomil wrote (unchanged) and its record: what an earlier
    run wrote that this one does not (e.g. a skipped list) must not outlive it."""
    path = Path(path)
    if not owned_file(path):
        return False
    path.unlink()
    with contextlib.suppress(FileNotFoundError):
        file_record_path(path).unlink()
    return True


def _with_data_folders(inputs: dict[str, str | Path | None]) -> dict[str, str | Path | None]:
    out = dict(inputs)
    for name, path in inputs.items():
        if name.startswith("data") and path is not None and Path(path).is_file():
            out.setdefault(f"folder of the {name.replace('folder', 'file')}", Path(path).parent)
    return out


def check_not_an_input(out: str | Path, inputs: dict[str, str | Path | None],
                       option: str = "--out") -> None:
    """An output may never be one of the command's inputs, lie inside an input folder, or hold
    an input (replacing it would delete that input). The data given as a file (a lab's CSV)
    protects its folder too: that is the lab's export, where nothing is written."""
    target = Path(os.path.realpath(Path(out).expanduser()))
    for name, path in _with_data_folders(inputs).items():
        if path is None:
            continue
        source = Path(os.path.realpath(Path(path).expanduser()))
        if target == source:
            raise LymphomilError(f"{option} is the {name} itself", file=out,
                                 fix=f"write the output elsewhere: {option} must not be an input")
        # an output inside the cache folder is allowed (the cache only adds its own files), but
        # not in one of the cache's own folders (cv/ holds the stored fits, features/ …)
        if name == "cache folder" and target.is_relative_to(source) and target != source:
            part = target.relative_to(source).parts[0]
            if part in CACHE_PARTS:
                raise LymphomilError(f"{option} lies in the cache's own {part}/ folder "
                                     f"({source / part}), where the cache writes its files",
                                     file=out, fix=f"write the output elsewhere, e.g. "
                                                   f"{source / 'results'}")
        if (target.is_relative_to(source) and name != "cache folder"
                and (source.is_dir() or not source.exists())):
            raise LymphomilError(f"{option} lies inside the {name} ({source})", file=out,
                                 fix=f"write the output outside the {name}")
        if source.is_relative_to(target):
            raise LymphomilError(f"{option} holds the {name} ({source}): writing the output "
                                 "there would replace it", file=out,
                                 fix=f"give {option} a folder that does not contain the inputs")


def check_cache_location(cache_dir: str | Path | None, data: str | Path | None) -> None:
    """The cache writes files: never inside the data folder (nor the data folder itself)."""
    if data is None:
        return
    check_not_an_input(cache_root(cache_dir), {"data folder": data}, "--cache-dir")


