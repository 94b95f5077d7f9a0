"""A synthetic cohort in the challenge's layout (docs/design.md §1), for tests, demos and
benchmarks.

The real images cannot ship with the code, so ``lymphomil synth`` draws a look-alike cohort:
the same folders and CSV quirks (two date formats, a lower-case gender, 1–2 decimal counts),
attributes distributed by label as in the founding report's Table 1, and cell images in which
malignant patients carry a share of *atypical* lymphocytes (large, cleaved nucleus, coarse
chromatin). That share is drawn independently of the lymphocyte count, so, as in the real data,
the images can help exactly where the count looks reactive.

Everything comes from one seed: the same seed gives byte-identical files.
"""

from __future__ import annotations

import io
import math
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from lymphomil.data.cohort import DEFAULT_REFERENCE_DATE
from lymphomil.data.table import ROOT_CSV, TEST_CSV, TEST_DIR, TRAIN_CSV, TRAIN_DIR
from lymphomil.outputs import (
    atomic_write_json,
    atomic_write_text,
    check_not_inside_output,
    default_cache_root,
    ensure_replaceable,
    staged_dir,
)
from lymphomil.runtime.errors import LymphomilError

MARKER = ".lymphomil-synth.json"
GENERATOR_VERSION = 1
IMAGE_SIZE = 224
JPEG_QUALITY = 90

REACTIVE_SHARE = 0.3  # among labelled patients (the real set: 40 of 130)
MIN_PER_LABEL = 2  # so that stratified 2-fold CV works on small cohorts
REACTIVE_COUNT_RANGE = (4.01, 7.68)  # every real reactive patient lies in 4.01–7.68
MALIGNANT_HARD_SHARE = 0.26  # real: 27 % of malignant counts fall in the reactive range
MALIGNANT_LOW_SHARE = 0.02  # real: one malignant count below 4 (2.28)
COUNT_CLIP = (2.3, 300.0)
ATYPICAL_SHARE_MALIGNANT = (0.25, 0.70)  # per patient
ATYPICAL_SHARE_REACTIVE = (0.0, 0.06)  # a few mildly atypical cells: the signal is imperfect


# --------------------------------------------------------------------------- attributes


@dataclass(frozen=True)
class SynthPatient:
    id: str
    label: int  # the true label; written as -1 for the unlabelled (test) patients
    labelled: bool
    gender: str  # as written in the CSV (may be lower case)
    dob: str  # as written in the CSV (M/D/YYYY or DD-MM-YYYY)
    count: str  # as written in the CSV (1 or 2 decimals)
    n_images: int
    atypical_share: float

    @property
    def written_label(self) -> int:
        return self.label if self.labelled else -1


def _labels(rng: np.random.Generator, n: int,
            test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """True labels and which patients are labelled; >= 2 of each label among the labelled."""
    min_labelled = 2 * MIN_PER_LABEL if n >= 8 else 1
    n_test = min(round(n * test_fraction), n - min_labelled)
    n_labelled = n - n_test
    n_reactive = round(REACTIVE_SHARE * n_labelled)
    if n >= 8:
        n_reactive = min(max(n_reactive, MIN_PER_LABEL), n_labelled - MIN_PER_LABEL)
    labelled_labels = np.array([0] * n_reactive + [1] * (n_labelled - n_reactive))
    test_labels = (rng.random(n_test) >= REACTIVE_SHARE).astype(int)
    labels = np.concatenate([labelled_labels, test_labels])
    labelled = np.arange(n) < n_labelled
    order = rng.permutation(n)
    return labels[order], labelled[order]


def _ages(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    reactive = np.clip(rng.normal(58, 20, labels.size), 20, 100)
    malignant = np.clip(rng.normal(79, 12, labels.size), 35, 104)
    return np.where(labels == 1, malignant, reactive)


def _counts(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Lymphocyte counts (10^9/L): reactive in 4.0–7.7, malignant with median ≈ 12.4.

    Malignant counts are a mixture: a quarter log-uniform inside the reactive range (the hard
    patients), a few below it, the rest a half-log-normal tail above 7.7 (median of all ≈ 12.4).
    """
    lo, hi = REACTIVE_COUNT_RANGE
    reactive = lo + (hi - lo) * rng.beta(0.9, 2.6, labels.size)
    kind = rng.random(labels.size)
    hard = np.exp(rng.uniform(math.log(lo), math.log(hi), labels.size))
    low = rng.uniform(COUNT_CLIP[0], lo, labels.size)
    tail = 7.75 * np.exp(np.abs(rng.normal(0, 1.21, labels.size)))
    malignant = np.where(kind < MALIGNANT_HARD_SHARE, hard,
                         np.where(kind < MALIGNANT_HARD_SHARE + MALIGNANT_LOW_SHARE, low, tail))
    return np.clip(np.where(labels == 1, malignant, reactive), *COUNT_CLIP)


def _format_dob(dob: date, dashed: bool) -> str:
    if dashed:
        return f"{dob.day:02d}-{dob.month:02d}-{dob.year}"
    return f"{dob.month}/{dob.day}/{dob.year}"


def _with_one(flags: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Make sure at least one flag is set (so every quirk shows up in a small cohort)."""
    if flags.size and not flags.any():
        flags = flags.copy()
        flags[rng.integers(flags.size)] = True
    return flags


def draw_patients(n_patients: int, seed: int, test_fraction: float,
                  images_per_patient: tuple[int, int]) -> list[SynthPatient]:
    """The cohort's table: IDs, labels and attributes, with the real CSV's formatting quirks."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    n = n_patients
    labels, labelled = _labels(rng, n, test_fraction)
    ages = _ages(rng, labels)
    counts = _counts(rng, labels)
    decimals = np.where(rng.random(n) < 0.8, 2, 1)
    male = rng.random(n) < 0.55
    lower_case = rng.random(n) < 0.02
    dashed = rng.random(n) < 0.15
    if n >= 8:
        lower_case, dashed = _with_one(lower_case, rng), _with_one(dashed, rng)
    lo, hi = images_per_patient
    n_images = rng.integers(lo, hi + 1, n)
    atypical = np.where(labels == 1, rng.uniform(*ATYPICAL_SHARE_MALIGNANT, n),
                        rng.uniform(*ATYPICAL_SHARE_REACTIVE, n))
    ids = [f"P{i}" for i in rng.permutation(np.arange(1, n + 1))]
    patients = []
    for i in range(n):
        dob = DEFAULT_REFERENCE_DATE - timedelta(days=int(round(ages[i] * 365.25)))
        gender = "M" if male[i] else "F"
        patients.append(SynthPatient(
            id=ids[i], label=int(labels[i]), labelled=bool(labelled[i]),
            gender=gender.lower() if lower_case[i] else gender,
            dob=_format_dob(dob, bool(dashed[i])),
            count=f"{counts[i]:.{decimals[i]}f}", n_images=int(n_images[i]),
            atypical_share=float(atypical[i])))
    return patients


# --------------------------------------------------------------------------- cell images
# Images are drawn channel-first, (3, H, W) float32: numpy broadcasts over a leading axis far
# faster than over a trailing one, which keeps a 60-patient cohort at a few seconds.

_GRID_Y, _GRID_X = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
_CELL_HALF = 64  # the lymphocyte is drawn in a 128 px patch around its centre
_JITTER = 10
_NOISE_MARGIN = 64  # a patient's noise bank is this much larger than an image; each takes a crop


def _rgb(*values: float) -> np.ndarray:
    return np.array(values, np.float32)[:, None, None]


# optical densities per RGB channel at unit stain thickness (Beer–Lambert: I = I0 · exp(-OD))
_RBC_OD = _rgb(0.19, 0.30, 0.14)  # pinkish-mauve erythrocytes
_NUCLEUS_OD = _rgb(0.95, 1.45, 0.50)  # haematoxylin-purple nucleus
_BACKGROUND = _rgb(243.0, 224.0, 208.0)
_CYTOPLASM = _rgb(188.0, 178.0, 222.0)  # pale blue rim, alpha-blended


def _smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """Roughly unit-variance noise with blobs ~size/cells pixels wide (bicubic upsampling)."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((size, size), Image.BICUBIC))


def _red_cell_sprites(rng: np.random.Generator, count: int = 12) -> list[np.ndarray]:
    """Stain densities of erythrocytes (pale centres, darker rims), one small array per cell.

    Drawn once per patient and pasted (flipped, transposed) into each image: far cheaper than
    drawing every cell anew, and a patient's red cells look alike in reality too.
    """
    sprites = []
    for _ in range(count):
        r, squash, angle = rng.uniform(18, 23), rng.uniform(0.82, 1.0), rng.uniform(0, math.pi)
        half = int(r) + 2
        side = 2 * half + 1
        dx, dy = _GRID_X[:side, :side] - half, _GRID_Y[:side, :side] - half
        cos, sin = math.cos(angle), math.sin(angle)
        u, v = dx * cos + dy * sin, (dy * cos - dx * sin) / squash
        d = np.sqrt(u * u + v * v) / r
        edge = np.clip((1.0 - d) * r / 1.3, 0.0, 1.0)
        sprites.append(rng.uniform(0.8, 1.2) * edge * (0.35 + 0.65 * d * d))
    return sprites


def _red_cell_density(rng: np.random.Generator, sprites: list[np.ndarray],
                      centre: tuple[float, float], keep_out: float) -> np.ndarray:
    """Erythrocyte stain density over the image, with the cells clear of the lymphocyte."""
    density = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    candidates = rng.uniform(-15, IMAGE_SIZE + 15, (60, 2))
    kinds = rng.integers(0, len(sprites), 60)
    orientations = rng.integers(0, 8, 60)
    distance = np.hypot(candidates[:, 0] - centre[0], candidates[:, 1] - centre[1])
    chosen = np.flatnonzero(distance > keep_out + 12)[: rng.integers(12, 24)]
    for k in chosen:
        sprite = sprites[kinds[k]]
        turn = orientations[k]
        sprite = sprite.T if turn & 1 else sprite
        sprite = sprite[::-1] if turn & 2 else sprite
        sprite = sprite[:, ::-1] if turn & 4 else sprite
        height, width = sprite.shape
        x0, y0 = int(candidates[k, 0]) - width // 2, int(candidates[k, 1]) - height // 2
        cx0, cy0 = max(0, x0), max(0, y0)
        cx1, cy1 = min(IMAGE_SIZE, x0 + width), min(IMAGE_SIZE, y0 + height)
        if cx0 < cx1 and cy0 < cy1:
            density[cy0:cy1, cx0:cx1] += sprite[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    return density


def _nucleus_outline(theta: np.ndarray, rng: np.random.Generator, radius: float,
                     atypia: float) -> np.ndarray:
    """Nuclear radius r(θ): near-round when typical; lobulated and cleaved as atypia → 1."""
    outline = np.ones_like(theta)
    for k in (2, 3, 4, 5):
        amplitude = rng.normal(0, 0.025 + 0.09 * atypia) / (1 + 0.3 * (k - 2))
        outline += amplitude * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    if atypia > 0:
        cleft_at, width = rng.uniform(-math.pi, math.pi), rng.uniform(0.25, 0.45)
        offset = (theta - cleft_at + math.pi) % (2 * math.pi) - math.pi
        outline -= rng.uniform(0.2, 0.45) * atypia * np.exp(-(offset / width) ** 2)
    return radius * outline


def _draw_lymphocyte(rng: np.random.Generator, image: np.ndarray, centre: tuple[float, float],
                     radius: float, atypia: float, nucleus_od: np.ndarray) -> None:
    """Blend the cytoplasm rim, then stain the nucleus, into ``image`` in place (128 px patch)."""
    cx, cy = centre
    x0, y0 = int(cx) - _CELL_HALF, int(cy) - _CELL_HALF
    size = 2 * _CELL_HALF
    patch = image[:, y0:y0 + size, x0:x0 + size]
    dx, dy = _GRID_X[:size, :size] + (x0 - cx), _GRID_Y[:size, :size] + (y0 - cy)

    shift = rng.normal(0, 0.08 * radius, 2)  # the nucleus often sits off-centre in its cytoplasm
    cyto_radius = radius * rng.uniform(1.12, 1.32) * (1 - 0.1 * atypia)
    wobble = 1 + 0.03 * _smooth_noise(rng, 6, size)
    cyto_distance = np.hypot(dx + shift[0], dy + shift[1]) * wobble
    alpha = rng.uniform(0.7, 0.9) * np.clip((cyto_radius - cyto_distance) / 1.2, 0.0, 1.0)
    patch *= 1 - alpha
    patch += alpha * (_CYTOPLASM + _rgb(*rng.normal(0, 6, 3)))

    theta = np.arctan2(dy, dx)
    inside = np.clip((_nucleus_outline(theta, rng, radius, atypia) - np.hypot(dx, dy)) / 1.2,
                     0.0, 1.0)
    chromatin = (1 + (0.14 - 0.04 * atypia) * _smooth_noise(rng, 40, size)
                 + 0.32 * atypia * _smooth_noise(rng, 14, size))
    darkness = rng.uniform(0.9, 1.05) * (1 + 0.2 * atypia)
    patch *= np.exp(-(inside * np.clip(chromatin, 0.3, None) * darkness) * nucleus_od)


def render_cell(rng: np.random.Generator, atypia: float, stain: np.ndarray,
                red_cells: list[np.ndarray], noise_bank: np.ndarray) -> np.ndarray:
    """One cell image, (3, 224, 224) uint8, with a lymphocyte within 10 px of the centre.

    ``atypia`` in [0, 1] (0 = typical small lymphocyte). ``stain`` (3, 1, 1), ``red_cells``
    (sprites) and ``noise_bank`` (uneven lighting and sensor noise; each image takes a crop) are
    the patient's slide: nuisances shared by all its cells and independent of the label.
    """
    cx = IMAGE_SIZE / 2 + rng.uniform(-_JITTER, _JITTER)
    cy = IMAGE_SIZE / 2 + rng.uniform(-_JITTER, _JITTER)
    radius = rng.uniform(23, 29) * (1 + 0.3 * atypia)

    rbc_density = _red_cell_density(rng, red_cells, (cx, cy), keep_out=radius * 1.25)
    light = _BACKGROUND + _rgb(*rng.normal(0, 3, 3))
    image = light * np.exp(rbc_density * -(stain * _RBC_OD * _rgb(*rng.uniform(0.9, 1.1, 3))))
    nucleus_od = stain * _NUCLEUS_OD * _rgb(*rng.uniform(0.93, 1.07, 3))
    _draw_lymphocyte(rng, image, (cx, cy), radius, atypia, nucleus_od)

    oy, ox = rng.integers(0, _NOISE_MARGIN, 2)
    image += noise_bank[:, oy:oy + IMAGE_SIZE, ox:ox + IMAGE_SIZE]
    return np.clip(image, 0, 255).astype(np.uint8)


def encode_jpeg(planes: np.ndarray) -> bytes:
    """JPEG bytes of a (3, H, W) uint8 image (deterministic: no timestamps, fixed settings)."""
    image = Image.merge("RGB", [Image.fromarray(plane, mode="L") for plane in planes])
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def patient_images(patient: SynthPatient, seed_sequence: np.random.SeedSequence) -> list[bytes]:
    """The patient's JPEGs; a share of its cells (drawn per patient) are atypical."""
    rng = np.random.default_rng(seed_sequence)
    stain = _rgb(*rng.uniform(0.85, 1.15, 3))
    red_cells = _red_cell_sprites(rng)
    side = IMAGE_SIZE + _NOISE_MARGIN
    shading = 2.0 * _smooth_noise(rng, 4, side)
    noise_bank = rng.standard_normal((3, side, side), dtype=np.float32) * 2.5 + shading
    mild = patient.label == 0  # reactive patients' odd cells are only mildly atypical
    images = []
    for _ in range(patient.n_images):
        atypical = rng.random() < patient.atypical_share
        atypia = (rng.uniform(0.25, 0.55) if mild else rng.uniform(0.5, 1.0)) if atypical else 0.0
        images.append(encode_jpeg(render_cell(rng, atypia, stain, red_cells, noise_bank)))
    return images


# --------------------------------------------------------------------------- writing


def _csv(patients: list[SynthPatient], with_index: bool) -> str:
    header = "ID,LABEL,GENDER,DOB,LYMPH_COUNT"
    lines = ["," + header if with_index else header]
    for index, p in enumerate(patients):
        row = f"{p.id},{p.written_label},{p.gender},{p.dob},{p.count}"
        lines.append(f"{index},{row}" if with_index else row)
    return "\n".join(lines) + "\n"


def _check_target(out: Path) -> None:
    """Only a new or empty folder or an earlier synthetic cohort, unchanged and holding nothing
    else, may be (re)placed at ``out`` (never inside another lymphomil output)."""
    check_not_inside_output(out, "OUT")
    ensure_replaceable(out, "synthetic cohort", "cohort", "OUT")


def _write_patient_images(staging: Path, patient: SynthPatient,
                          seed_sequence: np.random.SeedSequence) -> None:
    folder = staging / (TRAIN_DIR if patient.labelled else TEST_DIR) / patient.id
    folder.mkdir(parents=True)
    # plain writes are enough: the staging folder is renamed into place as a whole
    for index, jpeg in enumerate(patient_images(patient, seed_sequence)):
        (folder / f"{index:06d}.jpg").write_bytes(jpeg)


def write_synthetic_cohort(out: str | Path, n_patients: int = 60, seed: int = 0,
                           test_fraction: float = 0.25,
                           images_per_patient: tuple[int, int] = (16, 48),
                           on_progress: Callable[..., None] | None = None) -> Path:
    """Write a synthetic cohort in the challenge layout at ``out`` and return its path.

    The cohort is built in a hidden staging folder beside ``out`` and renamed into place when
    complete, so a killed run never leaves a folder that looks finished. ``on_progress(1)`` is
    called once per patient.
    """
    if n_patients < 1:
        raise LymphomilError(f"--patients must be at least 1 (got {n_patients})",
                             fix="ask for 8 or more patients so that both labels appear twice")
    if not 0.0 <= test_fraction < 1.0:
        raise LymphomilError(f"the test fraction must be in [0, 1) (got {test_fraction})",
                             fix="use e.g. 0.25")
    lo, hi = images_per_patient
    if not 1 <= lo <= hi:
        raise LymphomilError(f"images per patient must satisfy 1 <= min <= max (got {lo}, {hi})",
                             fix="use e.g. 16 48")
    out = Path(out)
    _check_target(out)
    patients = draw_patients(n_patients, seed, test_fraction, (lo, hi))
    image_seeds = np.random.SeedSequence([seed, 1]).spawn(n_patients)
    workers = min(4, os.cpu_count() or 1)
    with staged_dir(out, "cohort") as staging:
        # threads overlap file creation (slow on some file systems) with drawing; each patient
        # has its own random stream, so the result does not depend on the scheduling
        with ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(_write_patient_images, staging, patient, seed_sequence)
                       for patient, seed_sequence in zip(patients, image_seeds)]
            try:
                for future in as_completed(futures):
                    future.result()
                    if on_progress is not None:
                        on_progress(1)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        labelled = [p for p in patients if p.labelled]
        unlabelled = [p for p in patients if not p.labelled]
        atomic_write_text(staging / TRAIN_CSV, _csv(labelled, with_index=False))
        if unlabelled:
            atomic_write_text(staging / TEST_CSV, _csv(unlabelled, with_index=False))
        atomic_write_text(staging / ROOT_CSV, _csv(patients, with_index=True))
        atomic_write_json(staging / MARKER, {
            "generator": "lymphomil.data.synth", "version": GENERATOR_VERSION, "seed": seed,
            "n_patients": n_patients, "test_fraction": test_fraction,
            "images_per_patient": [lo, hi]})
    return out


def synthetic_default(patients: int, seed: int) -> Path:
    """The built-in default cohort of ``lymphomil run`` without a folder: generated once into
    the cache, then reused."""
    folder = default_cache_root() / "synthetic" / f"n{patients}-seed{seed}"
    if not (folder / ROOT_CSV).is_file():
        write_synthetic_cohort(folder, n_patients=patients, seed=seed)
    return folder
