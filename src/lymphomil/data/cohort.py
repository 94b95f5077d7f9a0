"""Read and validate a cohort: the challenge's folder layout (docs/design.md §1) or a lab's
own export, one CSV and a folder of image folders (:mod:`lymphomil.data.plain`).

It turns either into a list of validated :class:`Patient` records, each with its cell images in
a stable order, and it never drops a patient silently: every problem is either raised
(``on_error='raise'``) with the file, the row and the fix, or recorded (``on_error='skip'``) in
:attr:`Cohort.issues`. The file and column names live in :mod:`lymphomil.data.table`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from lymphomil.data.folders import (
    find_folder,
    is_utf8,
    link_problem,
    list_images,
    no_folder_problem,
    printable,
    split_conflict,
)
from lymphomil.data.images import memo_in
from lymphomil.data.issues import DataIssue, IssueLog
from lymphomil.data.plain import (
    FOLDER_FIX,
    PLAIN_SUFFIXES,
    PlainLayout,
    image_folders,
    match_folder,
    plain_layout,
)
from lymphomil.data.reference_date import DEFAULT_REFERENCE_DATE
from lymphomil.data.table import (
    COL_FOLDER,
    ROOT_CSV,
    TEST_DIR,
    TRAIN_DIR,
    Row,
    read_table,
    read_tables,
)
from lymphomil.data.validate import check_csvs_agree, parse_row
from lymphomil.runtime.errors import LymphomilError

LABELS = {-1: "unknown", 0: "reactive", 1: "malignant"}


@dataclass(frozen=True, eq=False)
class Patient:
    """One patient: validated attributes, its cell images, and (optionally) a feature store.

    ``features`` is attached by the harness so that image models can ask for their instance
    features (``patient.bag(spec)``) without decoding JPEGs themselves (docs/design.md §2–§3).
    """

    id: str
    label: int  # 1 malignant, 0 reactive, -1 unknown
    gender: str  # "M" or "F"
    dob: date | None  # None where a lab's export gave the age instead
    age: float  # years at the cohort's reference date (or as the lab's export gave it)
    lymph_count: float  # 10^9 cells/L
    split: str  # "train" (labelled folder) or "test"
    image_paths: Sequence[Path]  # an ImagePaths from the loader (a tuple works too)
    features: Any = field(default=None, repr=False, compare=False)

    @property
    def n_images(self) -> int:
        return len(self.image_paths)

    @property
    def is_labelled(self) -> bool:
        return self.label in (0, 1)

    def with_features(self, store: Any) -> "Patient":
        return replace(self, features=store)

    def bag(self, spec: Any, kind: str = "pooled") -> np.ndarray:
        """Instance features of this patient's cells from the attached store ((n, d) for pooled)."""
        if self.features is None:
            raise LymphomilError(f"patient {self.id} has no feature store attached",
                                 fix="build the patient set with lymphomil.features.attach_store()")
        return self.features.load(self, spec, kind)


@dataclass
class Cohort:
    """The validated patients of one folder, plus every problem recorded while reading it."""

    root: Path
    patients: list[Patient]
    issues: list[DataIssue]
    reference_date: date
    ignored_folders: list[str] = field(default_factory=list)

    @property
    def labelled(self) -> list[Patient]:
        return [p for p in self.patients if p.is_labelled]

    @property
    def unlabelled(self) -> list[Patient]:
        return [p for p in self.patients if not p.is_labelled]

    @property
    def skipped_ids(self) -> list[str]:
        """Patients from the CSV that did not make it into :attr:`patients`."""
        kept = {p.id for p in self.patients}
        seen: dict[str, None] = {}
        for issue in self.issues:
            if issue.patient_id and issue.patient_id not in kept:
                seen.setdefault(issue.patient_id)
        return list(seen)

    def skipped_table(self) -> list[dict]:
        return [i.to_dict() for i in self.issues]


def load_cohort(root: str | Path | PlainLayout, *,
                reference_date: date = DEFAULT_REFERENCE_DATE, on_error: str = "raise",
                check_images: bool = True, cache_dir: str | Path | None = None) -> Cohort:
    """Read a challenge-layout folder, or a lab's export (a :class:`PlainLayout`, or the path
    of its CSV: images beside it, default column names), into a validated :class:`Cohort`.

    Rows are validated one by one; under ``on_error='skip'`` a bad row or a patient without
    usable images is left out and recorded, a bad image file is left out of its bag and recorded.
    Clean image verdicts are remembered in ``cache_dir`` (``--cache-dir``; default: the user's
    cache), so a later read decodes only new or changed images.
    """
    if isinstance(root, PlainLayout) or Path(root).is_file():
        log = IssueLog(on_error)
        with memo_in(cache_dir), _decode_pool(check_images) as pool:
            return _load_plain(root, reference_date, log, check_images, pool)
    root = Path(root)
    if not root.is_dir():
        link = link_problem(root) if root.is_symlink() else None
        raise LymphomilError("data folder not found" + (f": the path {link}" if link else ""),
                             file=root,
                             fix="give the path of the challenge folder (dlmi-lymphocytosis/)")
    root = root.resolve()
    log = IssueLog(on_error)
    # clean verdicts kept for later commands (see lymphomil.data.images)
    with memo_in(cache_dir), _decode_pool(check_images) as pool:
        return _load(root, reference_date, log, check_images, pool)


@contextmanager
def _decode_pool(check: bool) -> Iterator[Any]:
    """Threads for the strict decode of every image (libjpeg-turbo releases the GIL)."""
    if not check:
        yield None
        return
    from concurrent.futures import ThreadPoolExecutor

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=max(1, min(8, cores))) as pool:
        yield pool


def _load(root: Path, reference_date: date, log: IssueLog, check_images: bool,
          pool: Any) -> Cohort:
    patients: list[Patient] = []
    seen: dict[str, Row] = {}
    tables = read_tables(root)
    check_csvs_agree(root, tables, reference_date)
    # the patients' rows: clinical_annotation.csv's alone when it is there (the others were
    # only compared with it), else trainset/'s and testset/'s
    patient_files = [root / ROOT_CSV] if root / ROOT_CSV in tables else list(tables)
    for csv_path in patient_files:
        for row in tables[csv_path]:
            parsed = parse_row(row, reference_date, seen, log)
            if parsed is None:
                continue
            pid, label, gender, dob, age, count = parsed
            split_problem = split_conflict(root, csv_path, pid, label)
            if split_problem:
                log.report(DataIssue(split_problem[0], split_problem[1], file=str(csv_path),
                                     row=row.line, patient_id=pid))
                continue
            folder = find_folder(root, pid, label)
            if folder is None:
                log.report(DataIssue(
                    no_folder_problem(root, pid),
                    f"add the folder {TRAIN_DIR}/{pid}/ (or {TEST_DIR}/{pid}/) with its cell "
                    "images, or remove the row", file=str(csv_path), row=row.line, patient_id=pid))
                continue
            images = list_images(folder, pid, log, check=check_images, pool=pool)
            if not images:
                log.report(DataIssue(f"no usable .jpg cell images in {folder}",
                                     "add the patient's cell images or remove the row",
                                     file=str(csv_path), row=row.line, patient_id=pid))
                continue
            split = "train" if folder.parent.name == TRAIN_DIR else "test"
            patients.append(Patient(pid, label, gender, dob, age, count, split, images))
    all_ids = set(seen)
    ignored = []
    for sub in (TRAIN_DIR, TEST_DIR):
        if not (root / sub).is_dir():
            continue
        for folder in sorted((root / sub).iterdir()):
            if folder.is_dir() and not folder.name.startswith(".") and folder.name not in all_ids:
                name = printable(folder.name)
                ignored.append(f"{sub}/{name}")
                log.report(DataIssue(f"image folder {sub}/{name} has no row in the CSV",
                                     "add the patient's row to the CSV or move the folder away"
                                     + ("" if is_utf8(folder.name) else " (and give it a UTF-8 "
                                                                         "name)"),
                                     file=printable(folder), patient_id=name))
    return Cohort(root, patients, log.issues, reference_date, ignored)


def _load_plain(root: str | Path | PlainLayout, reference_date: date, log: IssueLog,
                check_images: bool, pool: Any) -> Cohort:
    """A lab's export (:mod:`lymphomil.data.plain`; the path of its CSV: images beside it,
    default column names): the same checks and messages as :func:`_load`, its image folders
    found by name or by the FOLDER column."""
    layout = root if isinstance(root, PlainLayout) else plain_layout(root)
    if not layout.csv.is_file():
        raise LymphomilError("data file not found", file=layout.csv,
                             fix="give the CSV of the lab's patients")
    patients: list[Patient] = []
    seen: dict[str, Row] = {}
    folders, columns = image_folders(layout.images), layout.columns()
    used: set[str] = set()
    for row in read_table(layout.csv, columns):
        parsed = parse_row(row, reference_date, seen, log, plain=True)
        if parsed is None:
            continue
        pid, label, gender, dob, age, count = parsed
        named = row.values[COL_FOLDER].strip() if COL_FOLDER in row.values else None
        folder, problem = match_folder(folders, layout.images, pid, named)
        if folder is None:
            log.report(DataIssue(problem, FOLDER_FIX, file=str(layout.csv), row=row.line,
                                 patient_id=pid))
            continue
        used.add(folder.name)
        images = list_images(folder, pid, log, check=check_images, pool=pool,
                             suffixes=PLAIN_SUFFIXES)
        if not images:
            log.report(DataIssue(f"no usable cell images ({', '.join(PLAIN_SUFFIXES)}) in "
                                 f"{printable(folder)}", "add the patient's cell images or "
                                 "remove the row", file=str(layout.csv), row=row.line,
                                 patient_id=pid))
            continue
        split = "train" if label in (0, 1) else "test"
        patients.append(Patient(pid, label, gender, dob, age, count, split, images))
    ignored = []
    for name in sorted(set(folders) - used):
        shown = printable(name)
        ignored.append(shown)
        log.report(DataIssue(f"image folder {shown} has no row in the CSV",
                             "add the patient's row to the CSV or move the folder away",
                             file=printable(folders[name]), patient_id=shown))
    return Cohort(layout.csv, patients, log.issues, reference_date, ignored)


@dataclass
class LabelledSet:
    """A cohort's labelled patients as a model fits them: a 1-D object array and the labels."""

    cohort: Cohort | None  # None: patients given without their folder (the Python API)
    patients: np.ndarray  # 1-D object array of labelled patients
    y: np.ndarray


def labelled_patients(cohort: Cohort) -> LabelledSet:
    """The cohort's labelled patients; a cohort with none, or with one class only, stops here."""
    labelled = cohort.labelled
    if not labelled:
        raise LymphomilError("no labelled patients (LABEL 0 or 1) in the data", file=cohort.root,
                             fix="cross-validation and training need labelled patients")
    y = labels_of(labelled)
    if len(np.unique(y)) < 2:
        raise LymphomilError("the labelled patients are all of one class", file=cohort.root,
                             fix="training needs reactive (0) and malignant (1) patients")
    return LabelledSet(cohort, as_patient_array(labelled), y)


def as_patient_array(patients: Iterable[Patient]) -> np.ndarray:
    """A 1-D object array of patients: scikit-learn's splitters and ``clone`` index it as rows."""
    items = list(patients)
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def labels_of(patients: Sequence[Patient]) -> np.ndarray:
    return np.array([p.label for p in patients], dtype=int)
