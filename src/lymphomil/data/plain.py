"""A lab's own export, the *plain layout*: one CSV of patients and one folder of cell images per
patient (README, "A lab's own export").

* The CSV: one row per patient with an ID, a gender, a lymphocyte count, an age or a date of
  birth, and optionally a label (empty = unknown, to predict) and the patient's image folder.
  Its column names default to the challenge's (``ID``, ``LABEL``, ``GENDER``, ``DOB``,
  ``LYMPH_COUNT``) and ``AGE``/``FOLDER``; others are mapped with ``--columns
  id=Patient,count=Lymphocytes`` or a TOML file with a ``[columns]`` table
  (:func:`read_columns`). The values are checked as the challenge's are
  (:mod:`lymphomil.data.validate`).
* The images: ``IMAGES/<folder>/`` per patient, ``.jpg``, ``.jpeg``, ``.png``, ``.tif`` or
  ``.tiff`` (checked and decoded as a viewer shows them: :mod:`lymphomil.data.images`). A
  patient's folder is its FOLDER column when the CSV has one, else the folder named like its
  ID, else the one folder whose name is the ID in another case (``p12`` for ``P12``).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lymphomil.data.table import (
    COL_AGE,
    COL_COUNT,
    COL_DOB,
    COL_GENDER,
    COL_ID,
    FIELD_COLUMNS,
    Columns,
)
from lymphomil.runtime.errors import LymphomilError, did_you_mean

#: the image files of a plain layout (the challenge layout reads its own .jpg/.jpeg only)
PLAIN_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
COLUMNS_FIX = ("name the columns: --columns id=NAME,gender=NAME,count=NAME,dob=NAME (or "
               "age=NAME; label=NAME and folder=NAME are optional), or a TOML file with a "
               "[columns] table")


@dataclass(frozen=True)
class PlainLayout:
    """Where a lab's export lies: its CSV, the folder holding one image folder per patient,
    and the CSV's column names (column -> name) where they are not the defaults."""

    csv: Path
    images: Path
    names: tuple[tuple[str, str], ...] = field(default=())  # (field as --columns says, name)

    def __str__(self) -> str:  # messages name the CSV
        return str(self.csv)

    def columns(self) -> Columns:
        """The columns to read: the defaults, with the names mapped by the user."""
        names = {c: c for c in FIELD_COLUMNS.values()}
        names.update({FIELD_COLUMNS[key]: name for key, name in self.names})
        return Columns(tuple(names.items()), (COL_ID, COL_GENDER, COL_COUNT),
                       either=(COL_DOB, COL_AGE), fix=COLUMNS_FIX)

    def inputs(self) -> dict[str, Path]:
        """The layout's paths as inputs an output must never touch."""
        return {"data file": self.csv, "image folder": self.images}


def read_columns(spec: str | os.PathLike | Mapping[str, str] | None
                 ) -> tuple[dict[str, str], Path | None]:
    """(column names by field, image folder) from ``--columns``: ``id=Patient,count=Lymph``,
    or the path of a TOML file with a ``[columns]`` table (and optionally ``images =
    "folder"``, relative to the file), or a run config's ``columns`` table."""
    if isinstance(spec, Mapping):
        return _mapping(list(spec.items()), "columns"), None
    if spec is None or not str(spec).strip():
        return {}, None
    text = os.fspath(spec)
    if text.lower().endswith(".toml"):
        return _columns_file(Path(text))
    pairs = []
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise LymphomilError(f"--columns {part.strip()!r} is not FIELD=NAME",
                                 fix=COLUMNS_FIX)
        pairs.append((key.strip(), value.strip()))
    return _mapping(pairs, "--columns"), None


def _columns_file(path: Path) -> tuple[dict[str, str], Path | None]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LymphomilError("the columns file is not found", file=path,
                             fix=COLUMNS_FIX) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise LymphomilError(f"not a readable TOML file ({exc})", file=path,
                             fix=COLUMNS_FIX) from None
    unknown = sorted(set(document) - {"columns", "images"})
    table = document.get("columns", {})
    if unknown or not isinstance(table, dict):
        raise LymphomilError(f"unknown key(s) {', '.join(unknown) or 'columns'} (expected a "
                             "[columns] table and images = \"folder\")", file=path,
                             fix=COLUMNS_FIX)
    images = document.get("images")
    if images is not None and (not isinstance(images, str) or not images.strip()):
        raise LymphomilError("images must be the name of a folder", file=path, fix=COLUMNS_FIX)
    try:
        names = _mapping(list(table.items()), "[columns]")
    except LymphomilError as exc:
        raise LymphomilError(exc.problem, file=path, fix=exc.fix) from None
    return names, (path.parent / images if images else None)


def _mapping(pairs: list[tuple[Any, Any]], where: str) -> dict[str, str]:
    """Field (``id``, ``count``, ...) -> the column's name in the CSV, checked."""
    out: dict[str, str] = {}
    for key, value in pairs:
        key = str(key).strip().lower()
        if key not in FIELD_COLUMNS:
            raise LymphomilError(f"{where}: {key!r} is not a column lymphomil reads"
                                 + did_you_mean(key, FIELD_COLUMNS), fix=COLUMNS_FIX)
        if not isinstance(value, str) or not value.strip():
            raise LymphomilError(f"{where}: the column name for {key} is empty",
                                 fix=COLUMNS_FIX)
        if key in out:
            raise LymphomilError(f"{where}: {key} is named twice", fix=COLUMNS_FIX)
        out[key] = value.strip()
    return out


def plain_layout(csv: str | os.PathLike, images: str | os.PathLike | None = None,
                 columns: str | os.PathLike | Mapping[str, str] | None = None) -> PlainLayout:
    """The layout of a lab's export: its CSV, the image folder (``images``; default: the
    columns file's ``images``, else the CSV's own folder) and the column names
    (:func:`read_columns`)."""
    csv = Path(csv)
    names, from_file = read_columns(columns)
    folder = Path(images) if images is not None else from_file or csv.parent
    if not folder.is_dir():
        raise LymphomilError("image folder not found", file=folder,
                             fix="give the folder that holds one folder of cell images per "
                                 "patient (--images)")
    return PlainLayout(csv.resolve(), folder.resolve(), tuple(names.items()))


def data_source(data: str | os.PathLike, images: str | os.PathLike | None = None,
                columns: str | os.PathLike | Mapping[str, str] | None = None
                ) -> Path | PlainLayout:
    """What a command's DATA names: a challenge-layout folder, or the CSV of a lab's export
    (with ``--images`` and ``--columns``, which only a CSV takes)."""
    path = Path(data)
    if path.is_file() or path.suffix.lower() == ".csv":
        return plain_layout(path, images, columns)
    if images is not None or columns:
        raise LymphomilError("--images and --columns describe a lab's CSV, but DATA is not a "
                             "CSV file", file=path,
                             fix="give the CSV of the lab's patients as DATA, or leave out "
                                 "--images and --columns for a challenge-layout folder")
    return path


def data_inputs(source: Path | PlainLayout) -> dict[str, Path]:
    """The paths of a command's data, as inputs no output may touch."""
    if isinstance(source, PlainLayout):
        return source.inputs()
    return {"data folder": source}


def image_folders(images: Path) -> dict[str, Path]:
    """The patient folders under ``images`` by name (links read through; hidden ones left out)."""
    found = {}
    with os.scandir(images) as scan:
        for entry in scan:
            if not entry.name.startswith(".") and entry.is_dir():
                found[entry.name] = Path(entry.path)
    return found


def match_folder(folders: dict[str, Path], images: Path, patient_id: str,
                 named: str | None) -> tuple[Path | None, str]:
    """The image folder of one patient, or (None, why not): its FOLDER value ``named`` (a
    folder under ``images``), else the folder named like the ID, else the one folder named
    like it in another case."""
    if named is not None:
        if named in (".", "..") or "/" in named or "\\" in named:
            return None, (f"the image folder {named!r} is not a folder name inside {images} "
                          "(no path separators or '..')")
        if named in folders:
            return folders[named], ""
        return None, f"no image folder {named!r} in {images}" + did_you_mean(named, folders)
    if patient_id in folders:
        return folders[patient_id], ""
    same = sorted(name for name in folders if name.casefold() == patient_id.casefold())
    if len(same) == 1:
        return folders[same[0]], ""
    if same:
        return None, (f"no image folder named {patient_id!r} in {images}, and "
                      f"{len(same)} named like it in other cases ({', '.join(same)})")
    return None, (f"no image folder for patient {patient_id} in {images}"
                  + did_you_mean(patient_id, folders))


FOLDER_FIX = ("name the patient's folder of cell images like its ID (or give a FOLDER column: "
              "--columns folder=NAME), or remove the row")
