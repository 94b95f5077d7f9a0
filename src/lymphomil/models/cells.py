"""``cell-topk``: a cell classifier trained on patient labels; a patient: its top-k cells' mean.

Top-k multiple-instance learning on cached features (Campanella et al. 2019; the rank-1 public
solution of the challenge fine-tuned the same idea): every cell inherits its patient's label, a
linear classifier (standardised features, L2 logistic regression) learns to score cells, and a
patient's score is the mean of the ``k`` highest cell log-odds (``k = 0``: all cells). Each patient
weighs the same in the fit whatever its number of cells, and the two classes weigh the same.

Everything tuned is tuned inside ``fit`` on the patients it is given: an inner stratified split of
*patients* (never of cells) gives out-of-fold patient scores for every ``k`` in ``ks`` from the
same inner fits; ``k`` is the one with the best inner ROC AUC, and a one-dimensional logistic
(Platt) map of the chosen score, fitted on those out-of-fold scores with balanced classes, turns
scores into probabilities that late fusion can average. ``attributes=True`` gives the cell
classifier the patient's age and log10 lymphocyte count as two more inputs (the rank-1 solution fed
it the count).

``instance_scores`` are the cells' log-odds of malignancy under the cell classifier: the units the
report's galleries state.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import expit

from lymphomil.evaluation.crossval import derive_seed, inner_folds, out_of_fold
from lymphomil.evaluation.metrics import roc_auc
from lymphomil.models.attributes import attribute_matrix
from lymphomil.models.base import PatientModel, register_class, register_model
from lymphomil.models.blocks import apply_platt, fit_platt, top_k_mean
from lymphomil.models.checks import (
    check_bool,
    check_int,
    check_patients,
    check_patients_y,
    parse_spec,
    resolve_seed,
)
from lymphomil.models.inputs import read_bags
from lymphomil.models.pooled import FUSION_FEATURES, linear_state, set_linear_state
from lymphomil.runtime.errors import LymphomilError


def _cell_weights(y: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Per-cell weights: every patient weighs 1/n_cells, each class half of the total."""
    per_patient = np.ones(len(y), dtype=np.float64)
    for label in (0, 1):
        chosen = y == label
        per_patient[chosen] = 0.5 / max(int(chosen.sum()), 1)
    weights = np.repeat(per_patient / sizes, sizes)
    return weights * (len(weights) / weights.sum())  # mean 1: C keeps its usual scale


@register_class
class CellTopKModel(PatientModel):
    """Cell-level logistic regression on patient labels; patient score: mean top-k cell log-odds."""

    family = "cell-topk"
    feature_kind = "pooled"
    instance_score_units = "cell log-odds of malignancy (cell classifier)"

    def __init__(self, features=FUSION_FEATURES, C=0.01, ks=(0, 32, 8), attributes=False,
                 inner_folds=3, calibrate=True, max_iter=2000, random_state=0):
        self._store_params(locals())

    def required_features(self):
        return [(parse_spec(self.features), self.feature_kind)]

    # -- cells ------------------------------------------------------------------------------------
    def _cells(self, patients: np.ndarray, n_features: int | None = None) -> list[np.ndarray]:
        """Each patient's cell rows, with the two attributes appended when asked (n_i, d[+2])."""
        bags = read_bags(patients, parse_spec(self.features), self.feature_kind, n_features)
        if not self.attributes:
            return [bag.astype(np.float64) for bag in bags]
        A = attribute_matrix(patients, gender=False)  # (n, 2): age, log10 count
        return [np.hstack([bag.astype(np.float64), np.broadcast_to(a, (len(bag), 2))])
                for a, bag in zip(A, bags)]

    def _fit_cells(self, bags: list[np.ndarray], y: np.ndarray) -> dict[str, np.ndarray]:
        """One cell classifier as plain arrays (scaler mean/scale, weights, intercept)."""
        from sklearn.linear_model import LogisticRegression

        sizes = np.array([len(b) for b in bags])
        X = np.concatenate(bags)  # (cells, d)
        mean, scale = X.mean(axis=0), X.std(axis=0)
        scale[scale == 0] = 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            from sklearn.exceptions import ConvergenceWarning
            warnings.simplefilter("ignore", category=ConvergenceWarning)
            lr = LogisticRegression(C=float(self.C), max_iter=int(self.max_iter))
            lr.fit((X - mean) / scale, np.repeat(y, sizes), sample_weight=_cell_weights(y, sizes))
        return {"mean": mean, "scale": scale, "coef": lr.coef_[0].astype(np.float64),
                "intercept": np.asarray(lr.intercept_, dtype=np.float64)}

    @staticmethod
    def _cell_logits(fitted: dict[str, np.ndarray], bags: list[np.ndarray]) -> list[np.ndarray]:
        return [((bag - fitted["mean"]) / fitted["scale"]) @ fitted["coef"] + fitted["intercept"][0]
                for bag in bags]

    # -- fit / predict -----------------------------------------------------------------------------
    def _check_params(self) -> list[int]:
        check_bool("calibrate", self.calibrate)
        check_bool("attributes", self.attributes)
        check_int("inner_folds", self.inner_folds, 2)
        check_int("max_iter", self.max_iter)
        if not (isinstance(self.C, (int, float)) and np.isfinite(self.C) and self.C > 0):
            raise LymphomilError(f"C={self.C!r} must be a positive number", fix="e.g. C=0.01")
        ks = [int(k) for k in np.atleast_1d(np.asarray(self.ks))]
        if not ks or any(k < 0 for k in ks):
            raise LymphomilError(f"ks={self.ks!r} must be non-negative cell counts (0 = all)",
                                 fix="e.g. ks=(0, 32, 8)")
        return ks

    def _choose_k(self, bags: list[np.ndarray], y: np.ndarray, ks: list[int],
                  seed: int) -> tuple[int, float, float, list[float]]:
        """k by inner out-of-fold ROC AUC, and the Platt map of that k's out-of-fold scores."""
        folds = inner_folds(y, self.inner_folds)
        if folds < 2 or (len(ks) == 1 and not self.calibrate):
            return ks[0], 1.0, 0.0, []

        def fit_predict(train: np.ndarray, test: np.ndarray, _k: int) -> list[list[float]]:
            fitted = self._fit_cells([bags[i] for i in train], y[train])
            return [[top_k_mean(logits, k) for k in ks]
                    for logits in self._cell_logits(fitted, [bags[i] for i in test])]

        # (K, n) out-of-fold patient scores, one row per k
        oof = out_of_fold(y, folds, derive_seed(seed, "cell-inner"), fit_predict).T
        aucs = [float(a) for a in roc_auc(oof, np.broadcast_to(y, oof.shape))]
        best = int(np.nanargmax(np.where(np.isfinite(aucs), aucs, -np.inf)))  # first = list order
        slope, offset = 1.0, 0.0
        if self.calibrate:
            slopes, offset = fit_platt(oof[best], y)
            slope = float(slopes[0])
        return ks[best], slope, offset, aucs

    def fit(self, patients, y):
        patients, y = check_patients_y(patients, y)
        ks = self._check_params()
        seed = resolve_seed(self.random_state)
        bags = self._cells(patients)
        self.n_features_ = int(bags[0].shape[1] - (2 if self.attributes else 0))
        self.k_, self.platt_slope_, self.platt_offset_, self.inner_auc_ = self._choose_k(
            bags, y, ks, seed)
        fitted = self._fit_cells(bags, y)
        self.scaler_mean_, self.scaler_scale_ = fitted["mean"], fitted["scale"]
        self.coef_, self.intercept_ = fitted["coef"], fitted["intercept"]
        self.seed_ = seed
        return self._mark_fitted()

    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.scaler_mean_, "scale": self.scaler_scale_, "coef": self.coef_,
                "intercept": self.intercept_}

    def instance_scores(self, patients):
        """Each cell's log-odds of malignancy under the cell classifier."""
        self._check_fitted()
        return self._cell_logits(self._fitted_arrays(),
                                 self._cells(check_patients(patients), self.n_features_))

    def decision_function(self, patients):
        """Each patient's calibrated logit: Platt map of its mean top-k cell log-odds."""
        scores = np.array([top_k_mean(cells, self.k_) for cells in self.instance_scores(patients)])
        return apply_platt(scores, [self.platt_slope_], self.platt_offset_)

    def predict_proba(self, patients):
        p1 = expit(self.decision_function(patients))
        return np.column_stack([1 - p1, p1])

    def _get_state(self):
        return linear_state(self, {"k": self.k_, "platt_slope": self.platt_slope_,
                                   "platt_offset": self.platt_offset_,
                                   "inner_auc": self.inner_auc_})

    def _set_state(self, meta, arrays):
        self.k_ = int(meta["k"])
        self.platt_slope_ = float(meta["platt_slope"])
        self.platt_offset_ = float(meta["platt_offset"])
        self.inner_auc_ = list(meta.get("inner_auc", []))
        set_linear_state(self, meta, arrays)


@register_model("cell-topk",
                "cell logistic regression on patient labels, mean of top-k cell log-odds "
                "(k by inner CV), ResNet-50-thin features")
def _cell_topk() -> CellTopKModel:
    return CellTopKModel()


@register_model("cell-topk-attr",
                "cell-topk with the patient's age and log count as inputs of the cell classifier")
def _cell_topk_attr() -> CellTopKModel:
    return CellTopKModel(attributes=True)
