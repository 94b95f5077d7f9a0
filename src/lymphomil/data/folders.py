"""Discovering a cohort's image folders: each patient's folder found (links read through), its
JPEGs listed and checked, and every file that is not a usable cell image reported."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence as SequenceABC
from pathlib import Path
from typing import Any, Iterable, Iterator

from lymphomil.data.images import image_problem, kind_problem
from lymphomil.data.issues import DataIssue, IssueLog
from lymphomil.data.table import TEST_CSV, TEST_DIR, TRAIN_CSV, TRAIN_DIR

IMAGE_SUFFIXES = (".jpg", ".jpeg")


def link_problem(path: Path) -> str | None:
    """Why a symbolic link cannot be read (a loop, a missing target), or ``None``: a link is read
    through wherever it leads (a Kaggle copy links trainset/, patient folders or images to
    where the download lies; the features are keyed by the target's bytes, not its path)."""
    if not path.is_symlink():
        return None
    try:
        os.path.realpath(path, strict=True)
    except OSError as exc:  # a loop, or a target that does not exist
        return "is a symbolic link loop" if exc.errno == errno.ELOOP else \
            "is a broken symbolic link (its target does not exist)"
    except RuntimeError:  # older Pythons report a loop this way
        return "is a symbolic link loop"
    return None


def check_image(path: Path, full: bool = True) -> str | None:
    """Return why ``path`` is not a usable cell image, or ``None`` when it is.

    The file's kind first (a named pipe, a device or a link loop is refused without being
    opened), then its header (format, geometry) and, with ``full``, a strict decode: libjpeg's
    corrupt-data warnings (a file cut short with its end marker put back, bytes overwritten
    mid-stream) make it damaged. See :mod:`lymphomil.data.images`.
    """
    problem = link_problem(path)
    if problem:
        return problem
    return image_problem(path, decode=full)


class ImagePaths(SequenceABC):
    """A patient's image files as one folder + their names, a ``Path`` made on access.

    A ``Path`` keeps its parsed parts (~450 bytes); a name costs ~60: the table of a
    million-image cohort stays small on the process that schedules the work.
    """

    __slots__ = ("folder", "names")

    def __init__(self, folder: str | Path, names: Iterable[str]):
        self.folder = Path(folder)
        self.names = tuple(names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return tuple(self.folder / name for name in self.names[index])
        return self.folder / self.names[index]

    def __iter__(self) -> Iterator[Path]:
        folder = self.folder
        return (folder / name for name in self.names)

    def strings(self) -> list[str]:
        """The paths as strings, no ``Path`` built per image (~5 µs each, beside a 0.6 ms
        decode when a cohort streams through the extractor)."""
        folder = os.fspath(self.folder)
        return [os.path.join(folder, name) for name in self.names]

    def __add__(self, other: Iterable[Path]) -> tuple[Path, ...]:
        return tuple(self) + tuple(other)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (ImagePaths, tuple, list)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.folder, self.names))

    def __repr__(self) -> str:
        return f"ImagePaths({str(self.folder)!r}, {len(self.names)} images)"

    def __getstate__(self) -> tuple:
        return (self.folder, self.names)

    def __setstate__(self, state: tuple) -> None:
        self.folder, self.names = state


def path_strings(paths: Iterable[str | Path]) -> list[str]:
    """A patient's image paths as strings (a loader's ``ImagePaths`` makes them without a
    ``Path`` per image; a plain tuple or list works too)."""
    if isinstance(paths, ImagePaths):
        return paths.strings()
    return [os.fspath(p) for p in paths]


def is_utf8(name: str) -> bool:
    """False for a file name whose bytes are not UTF-8 (Python holds them as surrogates)."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def printable(name: str | Path) -> str:
    """A file name as text a message, a JSON file or a report can hold: bytes that are not
    UTF-8 shown as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def list_images(folder: Path, patient_id: str, log: IssueLog, check: bool = True,
                pool: Any = None, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> ImagePaths:
    """The patient's images (``suffixes``: the challenge's JPEGs, or a lab's export's kinds)
    sorted by name; hidden files ignored, anything else reported.

    Every entry's kind is checked from the directory listing (no open, no extra system call
    for a plain file): a named pipe, a device or a link loop named ``x.jpg`` is refused even
    without ``check``. With ``check`` each image is decoded strictly (in ``pool`` when given).
    """
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    candidates: list[tuple[str, Path]] = []
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            continue  # .DS_Store, ._foo.jpg, editor files: never cells
        if not is_utf8(name):  # its bytes cannot be written in a cache key, a CSV or a report
            log.report(DataIssue("the file name is not UTF-8 text (shown here with its other "
                                 "bytes as \\xNN)",
                                 "rename the file with a UTF-8 name (e.g. convmv -f latin1 -t "
                                 "utf8 --notest FILE)", file=printable(entry.path),
                                 patient_id=patient_id))
            continue
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir:
            log.report(DataIssue(f"unexpected sub-folder {name!r} in a patient folder",
                                 "move it out of the patient's folder", file=str(path),
                                 patient_id=patient_id))
            continue
        if os.path.splitext(name)[1].lower() not in suffixes:
            kinds = ", ".join(suffixes[::2] if suffixes == IMAGE_SUFFIXES else suffixes)
            log.report(DataIssue(f"not a {kinds} file ({name!r})",
                                 f"keep only the patient's cell images ({kinds}) in the folder",
                                 file=str(path), patient_id=patient_id))
            continue
        problem = link_problem(path) if entry.is_symlink() else None
        if problem is None and not entry.is_file(follow_symlinks=False):
            problem = kind_problem(path)  # a pipe, a device, a link to one: never opened
        candidates.append((name, path) if problem is None else (name, problem))  # type: ignore
    if check:
        todo = [(i, item[1]) for i, item in enumerate(candidates) if isinstance(item[1], Path)]
        run = pool.map if pool is not None else map
        for (i, path), problem in zip(todo, run(lambda p: image_problem(p), [p for _, p in todo])):
            if problem is not None:
                candidates[i] = (candidates[i][0], problem)
    images = []
    for name, outcome in candidates:
        if isinstance(outcome, str):
            log.report(DataIssue(f"image {outcome}",
                                 "replace or remove this image (or run with --on-error skip "
                                 "to leave it out)", file=str(folder / name),
                                 patient_id=patient_id))
            continue
        images.append(name)
    return ImagePaths(folder, images)


def split_conflict(root: Path, csv_path: Path, patient_id: str, label: int
                   ) -> tuple[str, str] | None:
    """Why a row's split is contradictory (problem, fix), or None: never a silent choice."""
    both = all((root / sub / patient_id).is_dir() for sub in (TRAIN_DIR, TEST_DIR))
    if both:
        return (f"patient {patient_id} has an image folder under both {TRAIN_DIR}/ and "
                f"{TEST_DIR}/", f"keep one of {TRAIN_DIR}/{patient_id}/ and "
                f"{TEST_DIR}/{patient_id}/ (labelled patients in {TRAIN_DIR}/)")
    if csv_path == root / TEST_CSV and label in (0, 1):
        return (f"labelled row (LABEL {label}) in the test CSV {TEST_CSV}, which holds the "
                "patients to predict", f"set LABEL -1, or move the row to {TRAIN_CSV}")
    if csv_path == root / TRAIN_CSV and label == -1:
        return (f"row without a label (LABEL -1) in the training CSV {TRAIN_CSV}",
                f"give its label (0 or 1), or move the row to {TEST_CSV}")
    return None


def no_folder_problem(root: Path, patient_id: str) -> str:
    """Why a patient has no image folder; a link that cannot be followed is named as one."""
    for rel in (TRAIN_DIR, f"{TRAIN_DIR}/{patient_id}", TEST_DIR, f"{TEST_DIR}/{patient_id}"):
        path = root / rel
        if path.is_symlink():
            problem = link_problem(path) or (
                "is a symbolic link to a file, not a folder" if not path.is_dir() else None)
            if problem:
                return f"no image folder for patient {patient_id}: {rel} {problem}"
    return f"no image folder for patient {patient_id}"


def find_folder(root: Path, patient_id: str, label: int) -> Path | None:
    """The patient's image folder; ``trainset/``, ``testset/`` or the folder itself may be a
    symbolic link (read through: the usual Kaggle copy)."""
    order = (TRAIN_DIR, TEST_DIR) if label in (0, 1) else (TEST_DIR, TRAIN_DIR)
    for sub in order:
        folder = root / sub / patient_id
        if folder.is_dir():
            return folder
    return None
