"""Attribute models: the founding report's five families on age, lymphocyte count and gender.

Each is tuned over the founding report's grid (Table 2) for balanced accuracy by an inner
stratified CV inside ``fit`` — so under the harness's outer loop the tuning is nested and never
sees the outer test fold.

Persistence without pickle: a fitted scikit-learn estimator is stored as its chosen
hyper-parameters plus the (tiny) training matrix; ``load`` refits it deterministically (fixed
``random_state``) and checks the refit reproduces the saved training probabilities exactly, so a
library change that would alter the model is refused rather than silently used.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Sequence

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier
from sklearn.utils.class_weight import compute_sample_weight

from lymphomil.models.base import PatientModel, register_class, register_model
from lymphomil.runtime.errors import LymphomilError


def attribute_matrix(patients: Sequence, use_n_images: bool = False,
                     log_count: bool = True, gender: bool = True) -> np.ndarray:
    """(n, k) float64 matrix of the clinical attributes, the only place they become numbers for
    every family: age, the lymphocyte count (its log10 when ``log_count``), male (1/0) when
    ``gender``, and the number of images when ``use_n_images`` (columns named by
    :func:`attribute_names`)."""
    rows = []
    for p in patients:
        if not (np.isfinite(p.age) and p.lymph_count > 0):
            raise LymphomilError(f"patient {p.id} has no usable age or lymphocyte count "
                                 f"(age={p.age}, count={p.lymph_count})",
                                 fix="fill DOB and LYMPH_COUNT in the cohort's table")
        row = [p.age, math.log10(p.lymph_count) if log_count else p.lymph_count]
        if gender:
            row.append(1.0 if p.gender == "M" else 0.0)
        if use_n_images:
            row.append(float(p.n_images))
        rows.append(row)
    width = 2 + int(gender) + int(use_n_images)
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), width)


def attribute_names(use_n_images: bool = False, log_count: bool = True,
                    gender: bool = True) -> list[str]:
    """The column names of :func:`attribute_matrix` with the same options (saved with a model)."""
    names = ["age", "log10_lymph_count" if log_count else "lymph_count"]
    return names + (["male"] if gender else []) + (["n_images"] if use_n_images else [])


#: the count's column name in folders saved before the one log base (natural log, issue 23)
NATURAL_LOG_COUNT = "log_lymph_count"


def statistics_in_log10(names: Sequence[str], mean: np.ndarray, scale: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """A saved standardiser's (mean, scale) with the count column in log10 units. Folders
    written before the one log base (their count column named :data:`NATURAL_LOG_COUNT`) kept
    them in natural-log units; ln x = log10 x · ln 10, so dividing that column's mean and scale
    by ln 10 standardises the log10 column exactly as the folder did (float32 rounding apart)."""
    mean = np.array(mean, dtype=np.float32)
    scale = np.array(scale, dtype=np.float32)
    if NATURAL_LOG_COUNT in names:
        j = list(names).index(NATURAL_LOG_COUNT)
        mean[j] = np.float32(np.float64(mean[j]) / math.log(10))
        scale[j] = np.float32(np.float64(scale[j]) / math.log(10))
    return mean, scale


# --------------------------------------------------------------------------- the grids

_C = [1e-6, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]


def _logreg_grid() -> list[dict]:
    """Table 2 for logistic regression, as valid scikit-learn ≥1.8 combinations.

    The report's penalty ∈ {none, l1, l2} (+ elastic net) becomes ``l1_ratio`` (0 = l2, 1 = l1)
    and ``C = inf`` (none); each solver gets only the penalties it supports.
    """
    enet = [1e-6, 1e-4, 1e-2, 1e-1]
    return [
        {"clf__solver": ["lbfgs", "newton-cg", "sag"], "clf__C": _C + [math.inf],
         "clf__l1_ratio": [0.0]},
        {"clf__solver": ["liblinear"], "clf__C": _C, "clf__l1_ratio": [0.0, 1.0]},
        {"clf__solver": ["saga"], "clf__C": _C, "clf__l1_ratio": [0.0, 1.0] + enet},
        {"clf__solver": ["saga"], "clf__C": [math.inf], "clf__l1_ratio": [0.0]},
    ]


def _svm_grid() -> list[dict]:
    return [
        {"clf__kernel": ["linear"], "clf__C": _C},
        {"clf__kernel": ["poly"], "clf__C": _C, "clf__degree": [2, 3],
         "clf__gamma": ["scale", "auto"]},
        {"clf__kernel": ["rbf", "sigmoid"], "clf__C": _C, "clf__gamma": ["scale", "auto"]},
    ]


def _tree_grid() -> list[dict]:
    return [{"clf__criterion": ["gini", "entropy", "log_loss"],
             "clf__splitter": ["best", "random"]}]


def _forest_grid() -> list[dict]:
    return [{"clf__criterion": ["gini", "entropy", "log_loss"],
             "clf__n_estimators": [5, 10, 20, 30, 50, 100, 200]}]


def _mlp_grid() -> list[dict]:
    return [{"clf__learning_rate_init": [1e-1, 1e-2, 1e-3]}]


def _logreg(class_weight: str | None, seed: int) -> Any:
    return LogisticRegression(class_weight=class_weight, max_iter=5000, random_state=seed)


def _svm(class_weight: str | None, seed: int) -> Any:
    return SVC(class_weight=class_weight, random_state=seed)


def _tree(class_weight: str | None, seed: int) -> Any:
    return DecisionTreeClassifier(class_weight=class_weight, random_state=seed)


def _forest(class_weight: str | None, seed: int) -> Any:
    return RandomForestClassifier(class_weight=class_weight, random_state=seed, n_jobs=1)


def _mlp(_class_weight: str | None, seed: int) -> Any:
    # the report's "small neural net": one hidden layer, Adam; balance by sample weights in fit
    # (no class_weight in MLPClassifier)
    return MLPClassifier(hidden_layer_sizes=(16,), solver="adam", max_iter=1000,
                         random_state=seed)


#: algorithm → (estimator builder, founding grid, needs sample weights for balance)
ALGORITHMS: dict[str, tuple[Callable[[str | None, int], Any], Callable[[], list[dict]], bool]] = {
    "logreg": (_logreg, _logreg_grid, False),
    "svm": (_svm, _svm_grid, False),
    "tree": (_tree, _tree_grid, False),
    "forest": (_forest, _forest_grid, False),
    "mlp": (_mlp, _mlp_grid, True),
}


#: small grids for attribute models nested inside fusions (one inner CV per outer fold)
COMPACT_GRIDS: dict[str, list[dict]] = {
    "logreg": [{"clf__C": [1e-2, 1e-1, 1.0, 10.0]}],
    "svm": [{"clf__kernel": ["rbf"], "clf__C": [0.1, 1.0, 10.0]}],
    "tree": [{"clf__max_depth": [2, 3, 4]}],
    "forest": [{"clf__n_estimators": [100], "clf__min_samples_leaf": [1, 3, 5]}],
    "mlp": [{"clf__learning_rate_init": [1e-2, 1e-3]}],
}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value


def _from_json(value: Any) -> Any:
    return math.inf if value == "inf" else value


@register_class
class AttributeModel(PatientModel):
    """One attribute classifier, grid-searched by inner CV for balanced accuracy.

    ``param_grid=None`` uses the founding report's Table 2 grid; ``"compact"`` a small grid
    (cheap enough to sit inside a fusion's inner CV); ``{}`` (or ``"none"``) fits the
    algorithm's defaults without tuning.
    """

    family = "attributes"

    def __init__(self, algorithm: str = "logreg", param_grid: list | dict | str | None = None,
                 inner_folds: int = 5, use_n_images: bool = False, log_count: bool = True,
                 class_weight: str | None = "balanced", random_state: int = 0):
        self._store_params(locals())

    # -- helpers -------------------------------------------------------------------------------
    def _pipeline(self) -> Pipeline:
        if self.algorithm not in ALGORITHMS:
            raise LymphomilError(f"unknown attribute algorithm {self.algorithm!r}",
                                 fix=f"choose one of {', '.join(ALGORITHMS)}")
        build, _, _ = ALGORITHMS[self.algorithm]
        return Pipeline([("scale", StandardScaler()),
                         ("clf", build(self.class_weight, int(self.random_state)))])

    def minimum_per_class(self) -> int:
        return 2 if self._grid() else 1  # the grid's inner CV: 2 folds at least

    def _grid(self) -> list[dict]:
        if self.param_grid is None:
            return ALGORITHMS[self.algorithm][1]()
        if self.param_grid == "compact":
            return COMPACT_GRIDS[self.algorithm]
        if self.param_grid in ("none", {}, []):
            return []
        grid = self.param_grid if isinstance(self.param_grid, list) else [self.param_grid]
        return [{(k if k.startswith("clf__") else f"clf__{k}"): list(v) for k, v in g.items()}
                for g in grid]

    def _fit_kwargs(self, y: np.ndarray) -> dict:
        needs_weights = ALGORITHMS[self.algorithm][2]
        if needs_weights and self.class_weight == "balanced":
            return {"clf__sample_weight": compute_sample_weight("balanced", y)}
        return {}

    def _features(self, patients: Sequence) -> np.ndarray:
        return attribute_matrix(patients, self.use_n_images, self.log_count)

    # -- contract ------------------------------------------------------------------------------
    def fit(self, patients: np.ndarray, y: np.ndarray) -> "AttributeModel":
        X = self._features(patients)
        y = np.asarray(y, dtype=int)
        if len(np.unique(y)) < 2:
            raise LymphomilError("training needs both reactive (0) and malignant (1) patients",
                                 fix="add labelled patients of both classes")
        pipeline = self._pipeline()  # an unknown algorithm is refused before anything runs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=ConvergenceWarning)
            warnings.simplefilter("ignore", category=UserWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            best = self._tune(pipeline, X, y)
            self.estimator_ = self._refit(best, X, y)
        self.best_params_ = {k.removeprefix("clf__"): v for k, v in best.items()}
        self.X_train_, self.y_train_ = X, y
        return self._mark_fitted()

    def _tune(self, pipeline: Pipeline, X: np.ndarray, y: np.ndarray) -> dict:
        """The grid's best parameters by inner stratified CV for balanced accuracy ({} when
        there is no grid)."""
        grid = self._grid()
        if not grid:
            return {}
        folds = min(self.inner_folds, int(np.bincount(y).min()))
        if folds < 2:
            raise LymphomilError("too few patients of one class for inner tuning",
                                 fix="use more labelled patients or param_grid='none'")
        search = GridSearchCV(
            pipeline, grid, scoring="balanced_accuracy", refit=False,
            cv=StratifiedKFold(folds, shuffle=True, random_state=int(self.random_state)),
            error_score=np.nan, n_jobs=1)
        search.fit(X, y, **self._fit_kwargs(y))
        self.search_score_ = float(search.best_score_)
        return dict(search.best_params_)

    def _refit(self, best: dict, X: np.ndarray, y: np.ndarray) -> Pipeline:
        pipeline = clone(self._pipeline()).set_params(**best)
        if self.algorithm == "svm":
            pipeline.set_params(clf__probability=True)  # Platt scaling, seeded
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=ConvergenceWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            pipeline.fit(X, y, **self._fit_kwargs(y))
        return pipeline

    def predict_proba(self, patients: np.ndarray) -> np.ndarray:
        self._check_fitted()
        proba = self.estimator_.predict_proba(self._features(patients))  # (n, 2)
        return np.asarray(proba, dtype=np.float64)

    # -- persistence ---------------------------------------------------------------------------
    def _get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        meta = {"best_params": {k: _json_safe(v) for k, v in self.best_params_.items()},
                "features": attribute_names(self.use_n_images, self.log_count)}
        arrays = {"X_train": self.X_train_, "y_train": self.y_train_.astype(np.int64),
                  "train_proba": self.estimator_.predict_proba(self.X_train_)}
        return meta, arrays

    def _set_state(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        best = {f"clf__{k}": _from_json(v) for k, v in meta["best_params"].items()}
        X, y = arrays["X_train"], arrays["y_train"].astype(int)
        self.estimator_ = self._refit(best, X, y)
        if not np.allclose(self.estimator_.predict_proba(X), arrays["train_proba"],
                           rtol=0, atol=1e-9):
            raise LymphomilError(
                "the attribute model does not reproduce its saved predictions with this version "
                "of scikit-learn", fix="re-train the model with `lymphomil train`")
        self.best_params_ = {k.removeprefix("clf__"): v for k, v in best.items()}
        self.X_train_, self.y_train_ = X, y


def _attribute_factory(algorithm: str) -> Callable[[], AttributeModel]:
    return lambda: AttributeModel(algorithm=algorithm)


for _name, _doc in (("logreg", "logistic regression on age, log count, gender (Table-2 grid)"),
                    ("svm", "support vector machine on the attributes (Table-2 grid)"),
                    ("tree", "decision tree on the attributes (Table-2 grid)"),
                    ("forest", "random forest on the attributes (Table-2 grid)"),
                    ("mlp", "small neural network (one hidden layer, Adam) on the attributes")):
    register_model(_name, _doc)(_attribute_factory(_name))


@register_model("logreg-compact", "logistic regression on the attributes, small C grid (fast)")
def _logreg_compact() -> AttributeModel:
    return AttributeModel(algorithm="logreg", param_grid="compact")

