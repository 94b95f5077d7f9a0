"""``image-logreg``: logistic regression on each patient's mean-pooled cell features.

The baseline issue 4 names (≈ 0.76 balanced accuracy with EfficientNet-Lite0 features,
docs/design.md §3) and the natural image input to late fusion. Features are pooled per patient
(``mean`` or ``mean+std`` per dimension), standardised, and fed to an L2 logistic regression with
balanced class weights; ``C`` is chosen among ``Cs`` by a stratified inner CV on the patients passed
to ``fit`` only (nested inside any outer evaluation). The fitted model is kept as plain arrays
(scaler mean/scale, ``coef_``, ``intercept_``), and prediction is computed from them, so a loaded
model predicts bit-identically.

A cell's score is its share of the patient's logit: with mean pooling the logit is linear in the
mean, so ``logit = mean over cells of (w·(x_cell − μ)/σ + b)`` exactly; with ``mean+std`` the
std block's (patient-constant) contribution is added to every cell, keeping that identity.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import expit

from lymphomil.features.spec import DEFAULT_CROP, DEFAULT_FEATURES
from lymphomil.models.base import PatientModel, register_class, register_model
from lymphomil.models.checks import (
    check_choice,
    check_int,
    check_patients,
    check_patients_y,
    parse_spec,
    resolve_seed,
)
from lymphomil.models.inputs import read_bags
from lymphomil.runtime.errors import LymphomilError

#: how a patient's cell features become its one feature vector (cf. heads.BAG_POOLINGS)
FEATURE_POOLINGS = ("mean", "mean+std")


def pool_bag(bag: np.ndarray, pooling: str) -> np.ndarray:
    mean = bag.mean(axis=0, dtype=np.float64)  # (d,)
    if pooling == "mean":
        return mean
    return np.concatenate([mean, bag.std(axis=0, dtype=np.float64)])  # (2d,)


#: a fitted standardised linear classifier kept as plain arrays (image-logreg, cell-topk): each is
#: the fitted attribute ``<name>_``
LINEAR_ARRAYS = ("scaler_mean", "scaler_scale", "coef", "intercept")


def linear_state(model: PatientModel, meta: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """The saved state of a model fitted as a standardised linear classifier: its own ``meta``,
    then its feature count and seed; the classifier's arrays."""
    return ({**meta, "n_features": model.n_features_, "seed": model.seed_},
            {name: getattr(model, f"{name}_") for name in LINEAR_ARRAYS})


def set_linear_state(model: PatientModel, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Loading what :func:`linear_state` saved (the model sets its own ``meta`` first)."""
    model.n_features_ = int(meta["n_features"])
    model.seed_ = int(meta.get("seed", 0))
    model._set_arrays(arrays, LINEAR_ARRAYS)


def positive_Cs(Cs) -> list[float]:
    """The C grid as floats; a clear error unless every value is a positive number."""
    values = [float(c) for c in np.atleast_1d(np.asarray(Cs, dtype=float))]
    if not values or not all(np.isfinite(c) and c > 0 for c in values):
        raise LymphomilError(f"Cs={Cs!r} must be positive numbers", fix="e.g. Cs=(0.01, 0.1, 1.0)")
    return values


def search_logistic(X: np.ndarray, y: np.ndarray, Cs: list[float], inner_folds: int, seed: int,
                    scoring: str = "neg_log_loss", max_iter: int = 5000):
    """(standardise + balanced logistic pipeline refitted with the chosen C, C, the inner CV's
    mean scores): C by a stratified inner CV when there is a choice and enough patients, else
    the middle C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = Pipeline([("scale", StandardScaler()),
                         ("lr", LogisticRegression(class_weight="balanced", max_iter=max_iter))])
    n_splits = min(inner_folds, int(np.bincount(y).min()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        if len(Cs) > 1 and n_splits >= 2:
            search = GridSearchCV(pipeline, {"lr__C": Cs}, scoring=scoring,
                                  cv=StratifiedKFold(n_splits, shuffle=True, random_state=seed),
                                  refit=True, error_score="raise")
            search.fit(X, y)
            return (search.best_estimator_, float(search.best_params_["lr__C"]),
                    [float(s) for s in search.cv_results_["mean_test_score"]])
        C = Cs[len(Cs) // 2]
        return pipeline.set_params(lr__C=C).fit(X, y), C, []


@register_class
class ImageLogRegModel(PatientModel):
    """Logistic regression (balanced, C by inner CV) on per-patient pooled cell features."""

    family = "image-logreg"
    feature_kind = "pooled"
    instance_score_units = ("logit share (unitless): the cell's term of the patient's image "
                            "logit, whose mean over the cells is that logit; not a cell-level "
                            "probability")

    def __init__(self, features=DEFAULT_FEATURES, pooling="mean",
                 Cs=(0.001, 0.01, 0.1, 1.0, 10.0), inner_folds=5, scoring="neg_log_loss",
                 max_iter=5000, random_state=0):
        self._store_params(locals())

    def required_features(self):
        return [(parse_spec(self.features), self.feature_kind)]

    def _pooled(self, patients: np.ndarray, n_features: int | None = None) -> np.ndarray:
        bags = read_bags(patients, parse_spec(self.features), self.feature_kind, n_features)
        return np.stack([pool_bag(b, self.pooling) for b in bags])  # (n, d or 2d)

    def fit(self, patients, y):
        patients, y = check_patients_y(patients, y)
        check_choice("pooling", self.pooling, FEATURE_POOLINGS)
        check_int("inner_folds", self.inner_folds, 2)
        check_int("max_iter", self.max_iter)
        Cs = positive_Cs(self.Cs)
        seed = resolve_seed(self.random_state)
        X = self._pooled(patients)
        self.n_features_ = int(X.shape[1] // (2 if self.pooling == "mean+std" else 1))
        fitted, self.C_, self.cv_scores_ = self._search(X, y, Cs, seed)
        scaler, lr = fitted.named_steps["scale"], fitted.named_steps["lr"]
        self.scaler_mean_ = scaler.mean_.astype(np.float64)
        self.scaler_scale_ = scaler.scale_.astype(np.float64)
        self.coef_ = lr.coef_.astype(np.float64)  # (1, d)
        self.intercept_ = lr.intercept_.astype(np.float64)  # (1,)
        self.seed_ = seed
        return self._mark_fitted()

    def _search(self, X: np.ndarray, y: np.ndarray, Cs: list[float], seed: int):
        return search_logistic(X, y, Cs, self.inner_folds, seed, self.scoring, self.max_iter)

    def _decision(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.scaler_mean_) / self.scaler_scale_) @ self.coef_[0] + self.intercept_[0]

    def predict_proba(self, patients):
        self._check_fitted()
        p1 = expit(self._decision(self._pooled(check_patients(patients), self.n_features_)))
        return np.column_stack([1 - p1, p1])

    def decision_function(self, patients):
        self._check_fitted()
        return self._decision(self._pooled(check_patients(patients), self.n_features_))

    def instance_scores(self, patients):
        """Each cell's logit share: their mean is the patient's logit (see module doc)."""
        self._check_fitted()
        patients = check_patients(patients)
        bags = read_bags(patients, parse_spec(self.features), self.feature_kind, self.n_features_)
        d = self.n_features_
        w, mu, sd = self.coef_[0], self.scaler_mean_, self.scaler_scale_
        out = []
        for bag in bags:
            cells = ((bag.astype(np.float64) - mu[:d]) / sd[:d]) @ w[:d] + self.intercept_[0]
            if self.pooling == "mean+std":
                cells = cells + ((bag.std(axis=0, dtype=np.float64) - mu[d:]) / sd[d:]) @ w[d:]
            out.append(cells)
        return out

    def _get_state(self):
        return linear_state(self, {"C": self.C_, "cv_scores": self.cv_scores_})

    def _set_state(self, meta, arrays):
        self.C_ = float(meta["C"])
        self.cv_scores_ = list(meta.get("cv_scores", []))
        set_linear_state(self, meta, arrays)


@register_model("image-logreg",
                "logistic regression on mean-pooled cell features (C by inner CV, balanced)")
def _image_logreg() -> ImageLogRegModel:
    return ImageLogRegModel()


#: the backbone whose features fused best with the attributes (docs/design.md §3, docs/results.md)
FUSION_FEATURES = f"resnet50-thin@{DEFAULT_CROP}"


@register_model("image-logreg-thin",
                "image-logreg on ResNet-50-thin features (the image side of the fusions)")
def _image_logreg_thin() -> ImageLogRegModel:
    return ImageLogRegModel(features=FUSION_FEATURES)

