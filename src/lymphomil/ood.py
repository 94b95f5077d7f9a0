"""Out-of-distribution checks per patient: does this patient look like the training cohort?

A model fitted on one lab's smears gives confident calls on another stain, scanner or
magnification with nothing to warn. :class:`OODCheck` is fitted on the *training* patients only
and, for each patient it checks, says whether it is unlike them and why, in words a person reads:

* ``cells``: the share of the patient's cells whose embedding (the pooled backbone features the
  default model reads) is atypical: far off the subspace of a PCA of the training cells (its
  reconstruction error above the training cells' ``cell_level`` quantile);
* ``colour``: the stain (the images' mean colour and the dark-stained nucleus's colour), a
  Mahalanobis distance to the training patients;
* ``blur`` and ``compression``: fine detail (the Laplacian's energy) lower than in training, JPEG
  8x8 block edges stronger than in training;
* ``size``: the dark nucleus region at the centre larger or smaller than in training (another
  magnification, or no lymphocyte at all);
* ``attributes``: age or lymphocyte count outside the training range (with a tolerance);
* ``images``: too few usable images.

Thresholds are set on the training patients with *cross-fitted* scores (each training patient
scored by a reference fitted without it), at a split-conformal quantile ``level``: a new patient
from the training distribution exceeds a check's threshold with probability about
``1 - level``. The patient's ``score`` is the largest check score, each scaled so that its
threshold is 1 (the training median 0): ``flagged`` is ``score > 1``.

The fitted state is a small JSON document (:meth:`OODCheck.to_dict`, validated on
:meth:`OODCheck.from_dict`); nothing is pickled.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lymphomil.errors import LymphomilError

SCHEMA_VERSION = 1
DEFAULT_FEATURES = "resnet50-thin@112"  # what the default model (fusion-mean) reads
#: the per-image statistics :func:`image_stats` returns, in order
IMAGE_STATS = ("mean_r", "mean_g", "mean_b", "nucleus_r", "nucleus_g", "nucleus_b",
               "sharpness", "blockiness", "nucleus_size")
_COLOUR = slice(0, 6)
_SHARP, _BLOCK, _SIZE = 6, 7, 8
CHECKS = ("cells", "colour", "blur", "compression", "size", "attributes", "images")
#: a pixel is "dark-stained" when its darkest channel is below this share of the image's median
DARK_SHARE = 0.4
FIX = "re-create it with the same lymphomil version (never edit it by hand)"


# --------------------------------------------------------------------------- image statistics


def image_stats(image: np.ndarray) -> np.ndarray:
    """The :data:`IMAGE_STATS` of one (3, H, W) uint8 RGB image (float64, 9 values).

    Cheap by design (~1 ms): colour and the nucleus on the image subsampled 2x; the detail and
    the JPEG block edges at full resolution on the grey image. ``nucleus_*`` are NaN and
    ``nucleus_size`` 0 when no dark-stained region is found.
    """
    from scipy import ndimage

    x = np.asarray(image)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {x.shape}")
    small = x[:, ::2, ::2]  # (3, h, w) uint8
    out = np.full(len(IMAGE_STATS), np.nan)
    out[0:3] = small.reshape(3, -1).mean(axis=1)
    darkest = small.min(axis=0)  # (h, w)
    dark = darkest < DARK_SHARE * max(float(np.median(darkest)), 1.0)
    labels, count = ndimage.label(dark)
    if count:
        sizes = np.bincount(labels.ravel())[1:]
        region = labels == (int(np.argmax(sizes)) + 1)
        out[3:6] = small[:, region].mean(axis=1)
        out[_SIZE] = math.sqrt(4.0 * float(sizes.max()))  # side of a square, full-res pixels
    else:
        out[_SIZE] = 0.0
    grey = x[1].astype(np.float32)  # (H, W): green carries most of the stain's contrast
    lap = (4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2]
           - grey[1:-1, 2:])
    out[_SHARP] = 0.5 * math.log(float(np.mean(lap * lap)) + 1.0)  # log RMS Laplacian
    out[_BLOCK] = 0.5 * (_block_ratio(grey) + _block_ratio(grey.T))
    return out


def _block_ratio(grey: np.ndarray) -> float:
    """Mean step across the 8-pixel JPEG block edges over the mean step elsewhere (1 = none)."""
    step = np.abs(np.diff(grey, axis=1))  # (H, W-1): step j is between columns j and j+1
    at_edge = np.zeros(step.shape[1], dtype=bool)
    at_edge[7::8] = True
    inside = float(step[:, ~at_edge].mean())
    return float(step[:, at_edge].mean()) / max(inside, 1e-3)


#: image statistics kept across processes in the lymphomil cache (``ood/``), keyed by the sha256
#: of the file's bytes (the digests the feature cache computes anyway): a warm run decodes
#: nothing. Versioned with :func:`image_stats` itself.
STATS_VERSION = 1
_MEMO: dict[str, dict[str, list]] = {}  # memo file -> {digest: stats}
_MEMO_NEW: dict[str, int] = {}  # memo file -> entries added since it was read


def _memo_path(cache_dir: str | os.PathLike | None) -> str:
    from lymphomil.outputs import cache_root

    return os.fspath(cache_root(cache_dir) / "ood" / f"image-stats-v{STATS_VERSION}.json")


def _memo(path: str) -> dict[str, list]:
    if path not in _MEMO:
        import json

        try:
            with open(path, encoding="utf-8") as handle:
                record = json.load(handle)
            entries = record["entries"] if record.get("stats") == list(IMAGE_STATS) else {}
            _MEMO[path] = {str(k): list(v) for k, v in entries.items()
                           if isinstance(v, list) and len(v) == len(IMAGE_STATS)}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            _MEMO[path] = {}  # none yet, or damaged: decode again
    return _MEMO[path]


def save_stats_memo(cache_dir: str | os.PathLike | None = None) -> None:
    """Keep this process's image statistics for later commands (never fails a command: a
    read-only or full cache only means decoding again next time)."""
    import json

    from lymphomil.outputs import atomic_write_text

    path = _memo_path(cache_dir)
    if not _MEMO_NEW.pop(path, 0):
        return
    try:
        atomic_write_text(path, json.dumps({"stats": list(IMAGE_STATS),
                                            "entries": _memo(path)}, separators=(",", ":")))
    except OSError:
        pass


def _stats_of_files(paths: list[str], cache_dir: str | os.PathLike | None) -> np.ndarray:
    from lymphomil.data.digests import image_digests
    from lymphomil.features.preprocess import decode_image

    memo_path = _memo_path(cache_dir)
    memo = _memo(memo_path)
    rows = []
    for path, digest in zip(paths, image_digests(paths)):
        known = memo.get(digest)
        if known is None:
            known = memo[digest] = image_stats(decode_image(path).numpy()).tolist()
            _MEMO_NEW[memo_path] = _MEMO_NEW.get(memo_path, 0) + 1
        rows.append(known)
    return np.array(rows, dtype=float).reshape(len(rows), len(IMAGE_STATS))


def spread_indices(n: int, at_most: int) -> np.ndarray:
    """``at_most`` indices evenly spread over ``range(n)`` (all of them when ``n`` is smaller)."""
    if n <= at_most:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, at_most).round().astype(int))


def patient_image_stats(patient: Any, max_images: int = 32,
                        cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """(k, 9) :data:`IMAGE_STATS` of up to ``max_images`` of the patient's images (evenly
    spread over its bag, so the cost stays bounded), decoded with the project's decoder once
    per file content (the memo in the lymphomil cache, see :func:`save_stats_memo`)."""
    paths = [os.fspath(patient.image_paths[i])
             for i in spread_indices(len(patient.image_paths), max_images)]
    return _stats_of_files(paths, cache_dir)


def summarise(stats: np.ndarray) -> np.ndarray:
    """A patient's statistics: the median over its images (NaN-aware for the nucleus colour)."""
    stats = np.asarray(stats, dtype=float).reshape(-1, len(IMAGE_STATS))
    if not len(stats):
        return np.full(len(IMAGE_STATS), np.nan)
    out = np.median(stats, axis=0)
    colour = stats[:, 3:6]
    if np.isfinite(colour).any():
        out[3:6] = np.nanmedian(colour[np.isfinite(colour).all(axis=1)], axis=0)
    return out


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class OODResult:
    """One patient's verdict: ``score`` (> 1: unlike the training patients), ``flagged``, the
    ``reasons`` a person reads (empty when not flagged) and each check's scaled score."""

    patient_id: str
    score: float
    flagged: bool
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- fitted state


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _CellState(_Strict):
    mean: list[float]
    components: list[list[float]]
    variances: list[float] = Field(min_length=1)
    residual: float = Field(gt=0)
    cell_threshold: float

    @model_validator(mode="after")
    def _shapes(self) -> _CellState:
        d, k = len(self.mean), len(self.variances)
        if len(self.components) != k or any(len(row) != d for row in self.components):
            raise ValueError(f"components must be {k} rows of {d} values")
        if min(self.variances) <= 0:
            raise ValueError("variances must be positive")
        return self


@dataclass
class _Cells:
    """The PCA of the training cells as arrays (:class:`_CellState` is its JSON form)."""

    mean: np.ndarray  # (d,)
    components: np.ndarray  # (k, d), orthonormal rows
    variances: np.ndarray  # (k,)
    residual: float  # mean squared distance of a training cell off the k components
    threshold: float  # a cell scoring above it is atypical (the ``cell_level`` quantile)

    def scores(self, cells: np.ndarray) -> np.ndarray:
        """Each cell's atypicality: log of its squared distance off the k components over the
        training cells' mean (0 for a typical training cell). The residual alone: on held-out
        real cells vs synthetic-cohort cells it separated better than adding the Mahalanobis
        distance inside the components (fold 1: 64 % vs 42 % of synthetic cells above the
        95th percentile of unseen training cells)."""
        centred = np.asarray(cells, dtype=np.float64) - self.mean
        projected = centred @ self.components.T  # (n, k)
        residual = np.sum(centred * centred, axis=1) - np.sum(projected * projected, axis=1)
        return np.log(np.maximum(residual, 1e-12) / self.residual)

    def atypical_share(self, bag: np.ndarray) -> float:
        return float(np.mean(self.scores(bag) > self.threshold)) if len(bag) else 1.0

    def state(self) -> _CellState:
        return _CellState(mean=self.mean.tolist(), components=self.components.tolist(),
                          variances=self.variances.tolist(), residual=self.residual,
                          cell_threshold=self.threshold)

    @classmethod
    def of(cls, state: _CellState) -> _Cells:
        return cls(np.asarray(state.mean), np.asarray(state.components),
                   np.asarray(state.variances), state.residual, state.cell_threshold)


def _rounded(values: np.ndarray) -> np.ndarray:
    """Five significant digits: short in JSON, and a loaded check scores exactly alike."""
    values = np.asarray(values, dtype=np.float64)
    return np.array([float(f"{v:.5g}") for v in values.ravel()]).reshape(values.shape)


class _Threshold(_Strict):
    typical: float
    threshold: float

    @model_validator(mode="after")
    def _order(self) -> _Threshold:
        if not self.threshold > self.typical:
            raise ValueError("threshold must exceed the typical value")
        return self


class _State(_Strict):
    format: str = Field(pattern=r"^lymphomil-ood$")
    version: int = Field(ge=1, le=SCHEMA_VERSION)
    features: str
    level: float = Field(gt=0, lt=1)
    cell_level: float = Field(gt=0, lt=1)
    n_components: int = Field(ge=1)
    max_cells: int = Field(ge=10)
    max_images: int = Field(ge=1)
    min_images: int = Field(ge=1)
    age_margin: float = Field(ge=0)
    count_factor: float = Field(ge=1)
    folds: int = Field(ge=2)
    random_state: int
    n_patients: int = Field(ge=2)
    cells: _CellState
    colour_mean: list[float] = Field(min_length=6, max_length=6)
    colour_precision: list[list[float]] = Field(min_length=6, max_length=6)
    typical: list[float] = Field(min_length=len(IMAGE_STATS), max_length=len(IMAGE_STATS))
    scales: list[float] = Field(min_length=len(IMAGE_STATS), max_length=len(IMAGE_STATS))
    thresholds: dict[str, _Threshold]
    age_range: tuple[float, float]
    count_range: tuple[float, float]
    image_range: tuple[int, int]

    @model_validator(mode="after")
    def _complete(self) -> _State:
        missing = {"cells", "colour", "blur", "compression", "size"} - set(self.thresholds)
        if missing:
            raise ValueError(f"thresholds missing for {sorted(missing)}")
        if any(len(row) != 6 for row in self.colour_precision):
            raise ValueError("colour_precision must be 6 x 6")
        return self


# --------------------------------------------------------------------------- the check


def conformal_threshold(scores: np.ndarray, level: float) -> float:
    """The split-conformal quantile of ``scores``: the ceil((n+1)·level)-th smallest (the
    largest when that rank exceeds n). A new exchangeable score exceeds it with probability
    at most ``1 - level`` (about ``1/(n+1)`` when the largest is used)."""
    ordered = np.sort(np.asarray(scores, dtype=float))
    rank = min(math.ceil((len(ordered) + 1) * level), len(ordered))
    return float(ordered[rank - 1])


def _mahalanobis(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    delta = np.atleast_2d(x) - mean
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", delta, precision, delta), 0.0))


def _colour_fit(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.covariance import LedoitWolf

    estimate = LedoitWolf().fit(vectors)
    return estimate.location_, estimate.precision_


class OODCheck:
    """Out-of-distribution checks fitted on the training patients (see the module doc).

    ``features``: the cell embeddings read (``patient.bag(features)``, attached by
    :func:`lymphomil.with_features` or ``steps.attach_features``: this object has
    :meth:`required_features` like a model). ``level``: the conformal level of every
    patient-level threshold; ``cell_level``: the quantile of the training cells' scores above
    which a cell counts as atypical. ``max_images``: images decoded per patient for the image
    statistics.
    ``cache_dir``: the lymphomil cache (a ``--cache-dir``) whose ``ood/`` folder memoises the
    image statistics by file content; a run-time setting, not part of the fitted state.
    """

    def __init__(self, features: str = DEFAULT_FEATURES, level: float = 0.99,
                 n_components: int = 24, max_cells: int = 12000, max_images: int = 32,
                 min_images: int | None = None, age_margin: float = 5.0,
                 count_factor: float = 1.5, folds: int = 5, random_state: int = 0,
                 cell_level: float = 0.95, cache_dir: str | os.PathLike | None = None):
        self.features = features
        self.level = level
        self.cell_level = cell_level
        self.n_components = n_components
        self.max_cells = max_cells
        self.max_images = max_images
        self.min_images = min_images
        self.age_margin = age_margin
        self.count_factor = count_factor
        self.folds = folds
        self.random_state = random_state
        self.cache_dir = cache_dir  # where the image statistics are memoised (not fitted state)
        self.state_: _State | None = None

    # -- what it reads ---------------------------------------------------------------------
    def required_features(self) -> list[tuple[Any, str]]:
        """[(spec, "pooled")]: what ``steps.attach_features`` must attach (as for a model)."""
        from lymphomil.features.spec import FeatureSpec

        return [(FeatureSpec.parse(self.features), "pooled")]

    def _bag(self, patient: Any) -> np.ndarray:
        from lymphomil.features.spec import FeatureSpec

        if getattr(patient, "features", None) is None:
            raise LymphomilError(
                f"patient {patient.id} has no feature store attached for the OOD checks",
                fix=f"attach the {self.features} features first (lymphomil.with_features or "
                    "steps.attach_features with this check among the models)")
        return np.asarray(patient.bag(FeatureSpec.parse(self.features)), dtype=np.float64)

    def _stats(self, patients: Sequence[Any], image_stats: Mapping[str, np.ndarray] | None
               ) -> np.ndarray:
        rows = []
        for patient in patients:
            given = None if image_stats is None else image_stats.get(patient.id)
            if given is None:
                given = patient_image_stats(patient, self.max_images, self.cache_dir)
            rows.append(summarise(given))
        save_stats_memo(self.cache_dir)
        return np.array(rows).reshape(len(rows), len(IMAGE_STATS))

    # -- cells -----------------------------------------------------------------------------
    def _fit_cells(self, bags: Sequence[np.ndarray], seed: int) -> _Cells:
        """A PCA of the cells of ``bags`` (at most ``max_cells`` of them, drawn with ``seed``)
        and the ``cell_level`` quantile of their own scores as the atypical-cell threshold."""
        from scipy.linalg import eigh

        cells = np.concatenate(bags)  # (n_cells, d)
        rng = np.random.default_rng(seed)
        if len(cells) > self.max_cells:
            cells = cells[np.sort(rng.choice(len(cells), self.max_cells, replace=False))]

        mean = cells.mean(axis=0)
        centred = cells - mean
        d = cells.shape[1]
        k = max(1, min(self.n_components, len(cells) - 1, d))
        # float32 Gram, then its top k eigenpairs by subspace iteration (a full eigh of the
        # 1024 x 1024 Gram costs seconds on a busy CPU; this costs a few matrix products)
        gram = centred.astype(np.float32).T @ centred.astype(np.float32)
        gram = gram.astype(np.float64) / max(len(cells) - 1, 1)
        basis = np.linalg.qr(gram @ rng.standard_normal((d, min(d, k + 10))))[0]
        for _ in range(6):
            basis = np.linalg.qr(gram @ basis)[0]
        values, vectors = eigh(basis.T @ gram @ basis)
        order = np.argsort(values)[::-1][:k]
        components = (basis @ vectors[:, order]).T  # (k, d), orthonormal rows
        variances = np.maximum(values[order], 1e-9)
        projected = centred @ components.T
        residual = np.sum(centred * centred, axis=1) - np.sum(projected * projected, axis=1)
        # rounded to what the JSON keeps, so a loaded check scores exactly alike
        model = _Cells(_rounded(mean), _rounded(components), variances,
                       max(float(np.mean(np.maximum(residual, 0.0))), 1e-9), 0.0)
        model.threshold = float(np.quantile(model.scores(cells), self.cell_level))
        return model

    # -- fit -------------------------------------------------------------------------------
    def fit(self, patients: Iterable[Any], image_stats: Mapping[str, np.ndarray] | None = None
            ) -> OODCheck:
        """Fit on the training patients (they alone are read); ``image_stats`` (patient id ->
        per-image :data:`IMAGE_STATS`) replaces decoding their images where given."""
        from sklearn.model_selection import KFold

        patients = list(patients)
        if len(patients) < max(self.folds, 5):
            raise LymphomilError(f"the OOD checks need at least {max(self.folds, 5)} training "
                                 f"patients, got {len(patients)}",
                                 fix="fit them on the whole training set")
        for name, value in (("level", self.level), ("cell_level", self.cell_level)):
            if not 0 < value < 1:
                raise LymphomilError(f"{name} {value} must lie strictly between 0 and 1",
                                     fix="e.g. level=0.99, cell_level=0.95")
        bags = [self._bag(p) for p in patients]
        summary = self._stats(patients, image_stats)
        n = len(patients)

        # cross-fitted scores: each training patient's cells scored by a PCA, and its colour
        # by a mean and covariance, fitted on the other folds' patients
        shares = np.zeros(n)
        colour = np.zeros(n)
        splitter = KFold(self.folds, shuffle=True, random_state=self.random_state)
        filled = self._fill_colour(summary, np.nanmedian(summary[:, _COLOUR], axis=0))
        for k, (fit_idx, held) in enumerate(splitter.split(np.zeros(n))):
            state = self._fit_cells([bags[i] for i in fit_idx], self.random_state + 1 + k)
            shares[held] = [state.atypical_share(bags[i]) for i in held]
            mean, precision = _colour_fit(filled[fit_idx])
            colour[held] = _mahalanobis(filled[held], mean, precision)
        cells = self._fit_cells(bags, self.random_state)
        colour_mean, colour_precision = _colour_fit(filled)

        typical = np.nanmedian(summary, axis=0)
        # robust scales (MAD, floored) of the univariate statistics
        scales = 1.4826 * np.nanmedian(np.abs(summary - typical), axis=0)
        scales = np.maximum(np.nan_to_num(scales, nan=1.0), 1e-6)
        raw = {"cells": shares, "colour": colour,
               "blur": (typical[_SHARP] - summary[:, _SHARP]) / scales[_SHARP],
               "compression": (summary[:, _BLOCK] - typical[_BLOCK]) / scales[_BLOCK],
               "size": np.abs(np.log(np.maximum(summary[:, _SIZE], 1.0)
                                     / max(typical[_SIZE], 1.0)))}
        thresholds = {}
        for name, scores in raw.items():
            scores = np.nan_to_num(scores, nan=0.0)
            middle = float(np.median(scores))
            top = conformal_threshold(scores, self.level)
            thresholds[name] = {"typical": middle,
                                "threshold": max(top, middle + 1e-6 * max(1.0, abs(middle)))}
        ages = np.array([float(p.age) for p in patients])
        counts = np.array([float(p.lymph_count) for p in patients])
        n_images = np.array([int(p.n_images) for p in patients])
        min_images = (self.min_images if self.min_images is not None
                      else max(3, int(n_images.min()) // 2))
        try:
            self.state_ = _State(
                format="lymphomil-ood", version=SCHEMA_VERSION, features=self.features,
                level=self.level, cell_level=self.cell_level,
                n_components=self.n_components, max_cells=self.max_cells,
                max_images=self.max_images, min_images=min_images, age_margin=self.age_margin,
                count_factor=self.count_factor, folds=self.folds,
                random_state=self.random_state, n_patients=n, cells=cells.state(),
                colour_mean=colour_mean.tolist(), colour_precision=colour_precision.tolist(),
                typical=np.nan_to_num(typical).tolist(), scales=scales.tolist(),
                thresholds=thresholds,
                age_range=(float(ages.min()), float(ages.max())),
                count_range=(float(counts.min()), float(counts.max())),
                image_range=(int(n_images.min()), int(n_images.max())))
        except ValidationError as exc:  # degenerate training data (e.g. identical images)
            raise LymphomilError(f"cannot fit the OOD checks on these patients ({exc})",
                                 fix="fit them on a real training set") from None
        return self

    @staticmethod
    def _fill_colour(summary: np.ndarray, fallback: np.ndarray) -> np.ndarray:
        """(n, 6) colour vectors; a patient without any nucleus takes ``fallback``'s nucleus
        colour (the size check speaks for it)."""
        colour = summary[:, _COLOUR].copy()
        missing = ~np.isfinite(colour)
        colour[missing] = np.broadcast_to(fallback, colour.shape)[missing]
        return colour

    # -- check -----------------------------------------------------------------------------
    def check(self, patients: Iterable[Any], image_stats: Mapping[str, np.ndarray] | None = None
              ) -> list[OODResult]:
        """One :class:`OODResult` per patient, in order. ``image_stats`` as in :meth:`fit`."""
        state = self._fitted()
        cells = _Cells.of(state.cells)
        patients = list(patients)
        summary = self._stats(patients, image_stats)
        typical = np.asarray(state.typical)
        colour = self._fill_colour(summary, typical[_COLOUR])
        distances = _mahalanobis(colour, np.asarray(state.colour_mean),
                                 np.asarray(state.colour_precision))
        return [self._one(state, cells.atypical_share(self._bag(p)), p, s, d)
                for p, s, d in zip(patients, summary, distances)]

    def _one(self, state: _State, share: float, patient: Any, stats: np.ndarray,
             distance: float) -> OODResult:
        typical, scales = np.asarray(state.typical), np.asarray(state.scales)
        size = max(float(stats[_SIZE]) if np.isfinite(stats[_SIZE]) else 0.0, 1.0)
        size_ratio = size / max(typical[_SIZE], 1.0)
        raw = {"cells": share, "colour": float(distance),
               "blur": (typical[_SHARP] - stats[_SHARP]) / scales[_SHARP],
               "compression": (stats[_BLOCK] - typical[_BLOCK]) / scales[_BLOCK],
               "size": abs(math.log(size_ratio))}
        checks, reasons = {}, []
        for name, value in raw.items():
            limits = state.thresholds[name]
            value = 0.0 if not np.isfinite(value) else float(value)
            scaled = (value - limits.typical) / (limits.threshold - limits.typical)
            checks[name] = round(max(scaled, 0.0), 4)
            if scaled > 1:
                reasons.append(self._reason(name, state, stats, value, size_ratio))
        attribute_score, attribute_reasons = self._attributes(state, patient)
        checks["attributes"] = attribute_score
        reasons += attribute_reasons
        few = int(patient.n_images) < state.min_images
        checks["images"] = (1.0 + (state.min_images - int(patient.n_images)) / state.min_images
                            if few else 0.0)
        if few:
            low, high = state.image_range
            reasons.append(f"only {patient.n_images} usable image"
                           f"{'' if patient.n_images == 1 else 's'} (training patients had "
                           f"{low}–{high}; at least {state.min_images} needed)")
        score = max(checks.values())
        return OODResult(str(patient.id), float(score), bool(reasons), reasons, checks)

    @staticmethod
    def _reason(name: str, state: _State, stats: np.ndarray, value: float,
                size_ratio: float) -> str:
        limits = state.thresholds[name]
        typical = np.asarray(state.typical)
        if name == "cells":
            return (f"{100 * value:.0f} % of the cells are unlike the training cells "
                    f"(typical: ≤ {100 * limits.threshold:.0f} %)")
        if name == "colour":
            rgb = ", ".join(f"{v:.0f}" for v in stats[0:3])
            usual = ", ".join(f"{v:.0f}" for v in typical[0:3])
            nucleus = ""
            if np.isfinite(stats[3:6]).all():
                nucleus = (f"; nucleus RGB {', '.join(f'{v:.0f}' for v in stats[3:6])} vs "
                           f"{', '.join(f'{v:.0f}' for v in typical[3:6])}")
            return (f"stain colour unlike the training cohort (image RGB {rgb} vs typical "
                    f"{usual}{nucleus}; distance {value:.1f}, typical ≤ {limits.threshold:.1f})")
        if name == "blur":
            ratio = math.exp(stats[_SHARP] - typical[_SHARP])
            return (f"images look blurred: fine detail {ratio:.2f}× the training median "
                    f"(out of focus, or another scanner?)")
        if name == "compression":
            return (f"JPEG block artefacts stronger than in training (block-edge ratio "
                    f"{stats[_BLOCK]:.2f} vs typical {typical[_BLOCK]:.2f}; re-compressed "
                    "images?)")
        if size_ratio < 0.35:
            return ("no dark-stained nucleus at the size of a lymphocyte in most images "
                    "(no lymphocyte in the images?)")
        word = "larger" if size_ratio > 1 else "smaller"
        return (f"cells look {size_ratio:.1f}× {word} than in training (magnification?)"
                if size_ratio > 1 else
                f"cells look {1 / size_ratio:.1f}× {word} than in training (magnification?)")

    @staticmethod
    def _attributes(state: _State, patient: Any) -> tuple[float, list[str]]:
        score, reasons = 0.0, []
        low, high = state.age_range
        age = float(patient.age)
        margin = state.age_margin
        if not low - margin <= age <= high + margin:
            excess = (low - margin - age) if age < low else (age - high - margin)
            score = max(score, 1.0 + excess / max(high - low, 1.0))
            reasons.append(f"age {age:.0f} outside the training range {low:.0f}–{high:.0f}")
        low, high = state.count_range
        count = float(patient.lymph_count)
        factor = state.count_factor
        if not low / factor <= count <= high * factor:
            excess = math.log(low / factor / count) if count < low else math.log(
                count / (high * factor))
            score = max(score, 1.0 + excess / max(math.log(high / low), 1.0))
            reasons.append(f"lymphocyte count {count:g} ×10⁹/L outside the training range "
                           f"{low:g}–{high:g}")
        return round(score, 4), reasons

    # -- persistence -----------------------------------------------------------------------
    def _fitted(self) -> _State:
        if self.state_ is None:
            raise LymphomilError("the OOD checks are not fitted", fix="call fit() first")
        return self.state_

    def to_dict(self) -> dict:
        """The fitted state as plain JSON data."""
        return self._fitted().model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "OOD state",
                  cache_dir: str | os.PathLike | None = None) -> OODCheck:
        """An :class:`OODCheck` from :meth:`to_dict`'s data; a clear error when it is invalid."""
        try:
            state = _State.model_validate(dict(data))
        except (ValidationError, TypeError) as exc:
            first = exc.errors()[0] if isinstance(exc, ValidationError) else {"msg": str(exc)}
            where = ".".join(str(p) for p in first.get("loc", ())) or "top level"
            raise LymphomilError(f"{source} is invalid at {where}: {first['msg']}",
                                 fix=FIX) from None
        check = cls(features=state.features, level=state.level, n_components=state.n_components,
                    max_cells=state.max_cells, max_images=state.max_images,
                    min_images=state.min_images, age_margin=state.age_margin,
                    count_factor=state.count_factor, folds=state.folds,
                    random_state=state.random_state, cell_level=state.cell_level,
                    cache_dir=cache_dir)
        check.state_ = state
        return check

    def save(self, path: Any) -> None:
        """Write :meth:`to_dict` as compact JSON (~0.2 MB), atomically."""
        import json

        from lymphomil.outputs import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), separators=(",", ":")))

    @classmethod
    def load(cls, path: Any, cache_dir: str | os.PathLike | None = None) -> OODCheck:
        """The check :meth:`save` wrote; a clear error naming the file when it is invalid."""
        from lymphomil.outputs import read_json

        return cls.from_dict(read_json(path), source=os.fspath(path), cache_dir=cache_dir)


# --------------------------------------------------------------------------- model folders

#: the fitted checks in a model folder (beside the referral rule)
OOD_JSON = "ood.json"


def pooled_features_of(model: Any) -> str | None:
    """The first pooled image features ``model`` reads (the cells the checks compare), or None
    for a model that reads no pooled image features (an attribute model: no checks)."""
    for spec, kind in model.required_features():
        if kind == "pooled":
            return spec.label()
    return None


def fit_ood_checks(model: Any, patients: Sequence[Any],
                   cache_dir: str | os.PathLike | None = None) -> OODCheck | None:
    """The checks fitted on a model's training ``patients`` (its features attached), on the
    cells that model reads; None when it reads no pooled image features or there are too few
    patients to fit them (then no patient is referred for being unlike the cohort)."""
    features = pooled_features_of(model)
    if features is None or len(patients) < 5:
        return None
    return OODCheck(features=features, cache_dir=cache_dir).fit(patients)


def load_ood_checks(folder: str | os.PathLike, cache_dir: str | os.PathLike | None = None
                    ) -> OODCheck | None:
    """The checks saved in a model folder, or None when it has none (trained without them)."""
    path = os.path.join(folder, OOD_JSON)
    return OODCheck.load(path, cache_dir=cache_dir) if os.path.isfile(path) else None
