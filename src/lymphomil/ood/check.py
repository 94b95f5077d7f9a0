"""The OOD check itself: fitted on the training patients (cross-fitted scores, conformal
thresholds), it scores each patient against them and says why in words a person reads."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import ValidationError

from lymphomil.features.spec import FeatureSpec
from lymphomil.ood.state import (
    FIX,
    SCHEMA_VERSION,
    CellPCA,
    OODResult,
    OODState,
)
from lymphomil.ood.stats import (
    BLOCK,
    COLOUR,
    IMAGE_STATS,
    SHARP,
    SIZE,
    patient_image_stats,
    save_stats_memo,
    summarise,
)
from lymphomil.outputs import atomic_write_text, dumps_json, read_json
from lymphomil.runtime.errors import LymphomilError, format_problem

DEFAULT_FEATURES = "resnet50-thin@112"  # what the default model (fusion-mean) reads


def _rounded(values: np.ndarray) -> np.ndarray:
    """Five significant digits: short in JSON, and a loaded check scores exactly alike."""
    values = np.asarray(values, dtype=np.float64)
    return np.array([float(f"{v:.5g}") for v in values.ravel()]).reshape(values.shape)


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
    :func:`lymphomil.with_features` or ``flows.caches.attach_features``: this object has
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
        self.state_: OODState | None = None

    # -- what it reads ---------------------------------------------------------------------
    def required_features(self) -> list[tuple[Any, str]]:
        """[(spec, "pooled")]: what ``flows.caches.attach_features`` attaches (as for a model)."""
        return [(FeatureSpec.parse(self.features), "pooled")]

    def _bag(self, patient: Any) -> np.ndarray:
        if getattr(patient, "features", None) is None:
            raise LymphomilError(
                f"patient {patient.id} has no feature store attached for the OOD checks",
                fix=f"attach the {self.features} features first (lymphomil.with_features or "
                    "flows.caches.attach_features with this check among the models)")
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
    def _fit_cells(self, bags: Sequence[np.ndarray], seed: int) -> CellPCA:
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
        model = CellPCA(_rounded(mean), _rounded(components), variances,
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
        splits = list(splitter.split(np.zeros(n)))
        filled = self._fill_colour(summary, np.nanmedian(summary[:, COLOUR], axis=0))
        for k, (fit_idx, held) in enumerate(splits):
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
               "blur": (typical[SHARP] - summary[:, SHARP]) / scales[SHARP],
               "compression": (summary[:, BLOCK] - typical[BLOCK]) / scales[BLOCK],
               "size": np.abs(np.log(np.maximum(summary[:, SIZE], 1.0)
                                     / max(typical[SIZE], 1.0)))}
        thresholds = {}
        # which training patients the checks flag when held out: each fold's patients against
        # thresholds from the other folds' scores. A threshold on all n scores flags none of
        # them (it is their maximum); held out, about the share of new clean patients the
        # checks refer, which the referral rule leaves out of its budget
        # (referral.choose_threshold's ``referred_anyway``)
        held_out = np.zeros(n, dtype=bool)
        for name, scores in raw.items():
            scores = np.nan_to_num(scores, nan=0.0)
            middle = float(np.median(scores))
            top = conformal_threshold(scores, self.level)
            thresholds[name] = {"typical": middle,
                                "threshold": max(top, middle + 1e-6 * max(1.0, abs(middle)))}
            for fit_idx, held in splits:
                held_out[held] |= scores[held] > conformal_threshold(scores[fit_idx], self.level)
        self.held_out_flagged_ = held_out
        ages = np.array([float(p.age) for p in patients])
        counts = np.array([float(p.lymph_count) for p in patients])
        n_images = np.array([int(p.n_images) for p in patients])
        min_images = (self.min_images if self.min_images is not None
                      else max(3, int(n_images.min()) // 2))
        try:
            self.state_ = OODState(
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
        colour = summary[:, COLOUR].copy()
        missing = ~np.isfinite(colour)
        colour[missing] = np.broadcast_to(fallback, colour.shape)[missing]
        return colour

    # -- check -----------------------------------------------------------------------------
    def check(self, patients: Iterable[Any], image_stats: Mapping[str, np.ndarray] | None = None
              ) -> list[OODResult]:
        """One :class:`OODResult` per patient, in order. ``image_stats`` as in :meth:`fit`."""
        state = self._fitted()
        cells = CellPCA.of(state.cells)
        patients = list(patients)
        summary = self._stats(patients, image_stats)
        typical = np.asarray(state.typical)
        colour = self._fill_colour(summary, typical[COLOUR])
        distances = _mahalanobis(colour, np.asarray(state.colour_mean),
                                 np.asarray(state.colour_precision))
        return [self._one(state, cells.atypical_share(self._bag(p)), p, s, d)
                for p, s, d in zip(patients, summary, distances)]

    def _one(self, state: OODState, share: float, patient: Any, stats: np.ndarray,
             distance: float) -> OODResult:
        typical, scales = np.asarray(state.typical), np.asarray(state.scales)
        size = max(float(stats[SIZE]) if np.isfinite(stats[SIZE]) else 0.0, 1.0)
        size_ratio = size / max(typical[SIZE], 1.0)
        raw = {"cells": share, "colour": float(distance),
               "blur": (typical[SHARP] - stats[SHARP]) / scales[SHARP],
               "compression": (stats[BLOCK] - typical[BLOCK]) / scales[BLOCK],
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
    def _reason(name: str, state: OODState, stats: np.ndarray, value: float,
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
            ratio = math.exp(stats[SHARP] - typical[SHARP])
            return (f"images look blurred: fine detail {ratio:.2f}× the training median "
                    f"(out of focus, or another scanner?)")
        if name == "compression":
            return (f"JPEG block artefacts stronger than in training (block-edge ratio "
                    f"{stats[BLOCK]:.2f} vs typical {typical[BLOCK]:.2f}; re-compressed "
                    "images?)")
        if size_ratio < 0.35:
            return ("no dark-stained nucleus at the size of a lymphocyte in most images "
                    "(no lymphocyte in the images?)")
        word = "larger" if size_ratio > 1 else "smaller"
        return (f"cells look {size_ratio:.1f}× {word} than in training (magnification?)"
                if size_ratio > 1 else
                f"cells look {1 / size_ratio:.1f}× {word} than in training (magnification?)")

    @staticmethod
    def _attributes(state: OODState, patient: Any) -> tuple[float, list[str]]:
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
    def _fitted(self) -> OODState:
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
            state = OODState.model_validate(dict(data))
        except (ValidationError, TypeError, ValueError) as exc:  # dict(data) of a list
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
        atomic_write_text(path, dumps_json(self.to_dict(), compact=True))  # strict JSON

    @classmethod
    def load(cls, path: Any, cache_dir: str | os.PathLike | None = None) -> OODCheck:
        """The check :meth:`save` wrote; a clear error naming the file when it is invalid (a
        version other than this lymphomil's says which side is newer)."""
        data = read_json(path)
        problem = format_problem(data.get("version"), SCHEMA_VERSION, "model folder") if (
            isinstance(data, dict)) else None
        if problem:
            raise LymphomilError(f"the OOD checks' file {problem[0]}", file=path, fix=problem[1])
        try:
            return cls.from_dict(data, source="the file", cache_dir=cache_dir)
        except LymphomilError as exc:
            raise LymphomilError(exc.problem, file=path, fix=exc.fix) from None


# --------------------------------------------------------------------------- model folders
