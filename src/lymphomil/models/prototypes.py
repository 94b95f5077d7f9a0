"""``prototypes``: a patient as its histogram over cell prototypes (k-means on cell embeddings).

Unsupervised cell types turned into per-patient proportions (the 2024 public solution's idea,
with k-means instead of SCAN): k-means is fitted on the cells of the training patients only
(each patient contributing at most ``cells_per_patient`` cells, so large bags do not dominate),
every cell is assigned to its nearest prototype, and a patient becomes its cluster proportions
plus their entropy. A balanced logistic regression on those (C by inner CV, as in
``image-logreg``) gives P(malignant). A cell's score is the weight of its prototype in that
regression: which cell types pushed the call.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from lymphomil.models.base import PatientModel, register_class, register_model
from lymphomil.models.checks import (
    check_int,
    check_patients,
    check_patients_y,
    parse_spec,
    resolve_seed,
)
from lymphomil.models.inputs import read_bags
from lymphomil.models.pooled import FUSION_FEATURES, positive_Cs, search_logistic
from lymphomil.runtime.errors import LymphomilError


def _assign(bag: np.ndarray, centres: np.ndarray, mean: np.ndarray,
            scale: np.ndarray) -> np.ndarray:
    """Nearest prototype of each cell (standardised space): (n_i,) ints."""
    z = (bag.astype(np.float64) - mean) / scale  # (n_i, d)
    distances = (z ** 2).sum(1)[:, None] - 2 * z @ centres.T + (centres ** 2).sum(1)[None, :]
    return np.argmin(distances, axis=1)


def histogram(labels: np.ndarray, k: int) -> np.ndarray:
    """Cluster proportions and their entropy (nats): (k + 1,)."""
    share = np.bincount(labels, minlength=k) / max(len(labels), 1)
    nonzero = share[share > 0]
    return np.append(share, -(nonzero * np.log(nonzero)).sum())


@register_class
class PrototypeModel(PatientModel):
    """Logistic regression on per-patient histograms over k-means cell prototypes."""

    family = "prototypes"
    feature_kind = "pooled"
    instance_score_units = "weight of the cell's prototype in the patient logistic regression"

    def __init__(self, features=FUSION_FEATURES, n_prototypes=16, cells_per_patient=64,
                 Cs=(0.01, 0.1, 1.0, 10.0), inner_folds=5, random_state=0):
        self._store_params(locals())

    def required_features(self):
        return [(parse_spec(self.features), self.feature_kind)]

    def _bags(self, patients, n_features=None) -> list[np.ndarray]:
        return read_bags(patients, parse_spec(self.features), self.feature_kind, n_features)

    def _histograms(self, bags: list[np.ndarray]) -> np.ndarray:
        k = len(self.centres_)
        return np.stack([histogram(_assign(b, self.centres_, self.mean_, self.scale_), k)
                         for b in bags])  # (n, k + 1)

    def fit(self, patients, y):
        patients, y = check_patients_y(patients, y)
        check_int("n_prototypes", self.n_prototypes, 2)
        check_int("cells_per_patient", self.cells_per_patient)
        check_int("inner_folds", self.inner_folds, 2)
        Cs = positive_Cs(self.Cs)
        seed = resolve_seed(self.random_state)
        bags = self._bags(patients)
        self.n_features_ = int(bags[0].shape[1])
        self._fit_prototypes(bags, seed)
        fitted, self.C_, _ = search_logistic(self._histograms(bags), y, Cs, self.inner_folds, seed)
        scaler, lr = fitted.named_steps["scale"], fitted.named_steps["lr"]
        self.h_mean_, self.h_scale_ = (scaler.mean_.astype(np.float64),
                                       scaler.scale_.astype(np.float64))
        self.coef_, self.intercept_ = lr.coef_[0].astype(np.float64), float(lr.intercept_[0])
        return self._mark_fitted()

    def _fit_prototypes(self, bags: list[np.ndarray], seed: int) -> None:
        """k-means on at most ``cells_per_patient`` random cells of each training patient."""
        from sklearn.cluster import KMeans

        rng = np.random.default_rng(seed)
        sample = np.concatenate([b[rng.permutation(len(b))[:int(self.cells_per_patient)]]
                                 for b in bags]).astype(np.float64)  # (cells, d)
        if len(sample) < int(self.n_prototypes):
            raise LymphomilError(f"the prototype model needs at least {self.n_prototypes} cells "
                                 f"in its training patients to make {self.n_prototypes} "
                                 f"prototypes; they hold {len(sample)}",
                                 fix="add patients (or cell images), or use fewer prototypes")
        self.mean_ = sample.mean(0)
        self.scale_ = np.where(sample.std(0) > 0, sample.std(0), 1.0)
        kmeans = KMeans(int(self.n_prototypes), n_init=3, random_state=seed)
        self.centres_ = kmeans.fit((sample - self.mean_) / self.scale_).cluster_centers_

    def decision_function(self, patients):
        self._check_fitted()
        H = self._histograms(self._bags(check_patients(patients), self.n_features_))
        # a row-wise product and sum: one patient's score never depends on the others in the call
        return (((H - self.h_mean_) / self.h_scale_) * self.coef_).sum(axis=1) + self.intercept_

    def predict_proba(self, patients):
        p1 = expit(self.decision_function(patients))
        return np.column_stack([1 - p1, p1])

    def instance_scores(self, patients):
        """Each cell's prototype weight (per unit of the prototype's standardised share)."""
        self._check_fitted()
        weight = self.coef_[:-1] / self.h_scale_[:-1]  # (k,)
        return [weight[_assign(b, self.centres_, self.mean_, self.scale_)]
                for b in self._bags(check_patients(patients), self.n_features_)]

    def _get_state(self):
        return ({"C": self.C_, "intercept": self.intercept_, "n_features": self.n_features_},
                {"centres": self.centres_, "mean": self.mean_, "scale": self.scale_,
                 "h_mean": self.h_mean_, "h_scale": self.h_scale_, "coef": self.coef_})

    def _set_state(self, meta, arrays):
        self.C_, self.intercept_ = float(meta["C"]), float(meta["intercept"])
        self.n_features_ = int(meta["n_features"])
        self._set_arrays(arrays, ("centres", "mean", "scale", "h_mean", "h_scale", "coef"))


@register_model("prototypes",
                "logistic regression on each patient's histogram over 16 k-means cell prototypes "
                "(fitted on the training cells only), ResNet-50-thin features")
def _prototypes() -> PrototypeModel:
    return PrototypeModel()
