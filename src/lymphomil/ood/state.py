"""What the OOD checks keep: one patient's verdict, and the fitted state as validated JSON
(the PCA of the training cells, the thresholds, the training ranges); nothing is pickled."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lymphomil.ood.stats import IMAGE_STATS

SCHEMA_VERSION = 1
CHECKS = ("cells", "colour", "blur", "compression", "size", "attributes", "images")
FIX = "re-create it with the same lymphomil version (never edit it by hand)"


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


class CellState(_Strict):
    mean: list[float]
    components: list[list[float]]
    variances: list[float] = Field(min_length=1)
    residual: float = Field(gt=0)
    cell_threshold: float

    @model_validator(mode="after")
    def _shapes(self) -> CellState:
        d, k = len(self.mean), len(self.variances)
        if len(self.components) != k or any(len(row) != d for row in self.components):
            raise ValueError(f"components must be {k} rows of {d} values")
        if min(self.variances) <= 0:
            raise ValueError("variances must be positive")
        return self


@dataclass
class CellPCA:
    """The PCA of the training cells as arrays (:class:`CellState` is its JSON form)."""

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

    def state(self) -> CellState:
        return CellState(mean=self.mean.tolist(), components=self.components.tolist(),
                          variances=self.variances.tolist(), residual=self.residual,
                          cell_threshold=self.threshold)

    @classmethod
    def of(cls, state: CellState) -> CellPCA:
        return cls(np.asarray(state.mean), np.asarray(state.components),
                   np.asarray(state.variances), state.residual, state.cell_threshold)


class Threshold(_Strict):
    typical: float
    threshold: float

    @model_validator(mode="after")
    def _order(self) -> Threshold:
        if not self.threshold > self.typical:
            raise ValueError("threshold must exceed the typical value")
        return self


class OODState(_Strict):
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
    cells: CellState
    colour_mean: list[float] = Field(min_length=6, max_length=6)
    colour_precision: list[list[float]] = Field(min_length=6, max_length=6)
    typical: list[float] = Field(min_length=len(IMAGE_STATS), max_length=len(IMAGE_STATS))
    scales: list[float] = Field(min_length=len(IMAGE_STATS), max_length=len(IMAGE_STATS))
    thresholds: dict[str, Threshold]
    age_range: tuple[float, float]
    count_range: tuple[float, float]
    image_range: tuple[int, int]

    @model_validator(mode="after")
    def _complete(self) -> OODState:
        missing = {"cells", "colour", "blur", "compression", "size"} - set(self.thresholds)
        if missing:
            raise ValueError(f"thresholds missing for {sorted(missing)}")
        if any(len(row) != 6 for row in self.colour_precision):
            raise ValueError("colour_precision must be 6 x 6")
        return self


# --------------------------------------------------------------------------- the check
