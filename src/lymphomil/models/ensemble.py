"""Models made of models: an averaging ensemble (with optional bagging) and nested model selection.

``EnsembleModel`` averages the P(malignant) of its members — different backbones, poolings or
seeds — and, with ``bootstrap > 0``, of each member refitted on that many bootstrap samples of
the patients (stratified, so both classes are always present). Averaging probabilities keeps
every member's calibration and needs nothing tuned.

``SelectModel`` is the honest selection protocol: ``fit`` cross-validates every candidate on the
patients it is given (an inner repeated stratified CV with the project's harness), keeps the one
with the best inner balanced accuracy (ties: hard subset, then list order) and refits it on all of
them. Under the outer harness its figure is that of "the best of these candidates" with the choice
made inside each outer training part — so it is not inflated by the choice.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone

from lymphomil.evaluation.crossval import best_index, cross_validate_many, derive_seed, with_seed
from lymphomil.features.spec import FeatureSpec
from lymphomil.models.base import (
    PatientModel,
    create_model,
    positive_proba,
    register_class,
    register_model,
)
from lymphomil.models.checks import (
    check_int,
    check_patients,
    check_patients_y,
    cv_minimum,
    resolve_seed,
)
from lymphomil.runtime.errors import LymphomilError


def _resolve(member: "PatientModel | str") -> PatientModel:
    return create_model(member) if isinstance(member, str) else member


def _required(members) -> list[tuple[FeatureSpec, str]]:
    out: list[tuple[FeatureSpec, str]] = []
    for member in members:
        for item in _resolve(member).required_features():
            if item not in out:
                out.append(item)
    return out


def _stratified_bootstrap(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([rng.choice(np.flatnonzero(y == c), size=int((y == c).sum()))
                           for c in (0, 1)])


@register_class
class EnsembleModel(PatientModel):
    """Mean of the members' P(malignant); each member bagged ``bootstrap`` times when > 0."""

    family = "ensemble"

    def __init__(self, members=("image-logreg-thin", "cell-topk"), bootstrap=0, random_state=0):
        self._store_params(locals())

    @property
    def instance_score_units(self) -> str:
        fitted = getattr(self, "models_", None) or [_resolve(m) for m in self.members]
        return getattr(fitted[0], "instance_score_units", "")

    def required_features(self):
        return _required(self.members)

    def minimum_per_class(self) -> int:
        return max(_resolve(m).minimum_per_class() for m in self.members)

    def fit(self, patients, y):
        patients, y = check_patients_y(patients, y)
        if not self.members:
            raise LymphomilError("an ensemble needs at least one member",
                                 fix="e.g. members=('image-logreg-thin', 'cell-topk')")
        check_int("bootstrap", self.bootstrap, 0)
        seed = resolve_seed(self.random_state)
        self.models_ = []
        for i, member in enumerate(self.members):
            for b in range(max(int(self.bootstrap), 1)):
                rows = np.arange(len(y))
                if self.bootstrap:
                    rng = np.random.default_rng(derive_seed(seed, "bag", i, b))
                    rows = _stratified_bootstrap(y, rng)
                model = with_seed(clone(_resolve(member)), derive_seed(seed, "member", i, b))
                self.models_.append(model.fit(patients[rows], y[rows]))
        return self._mark_fitted()

    def predict_proba(self, patients):
        self._check_fitted()
        patients = check_patients(patients)
        p1 = np.mean([positive_proba(model, patients) for model in self.models_], axis=0)
        return np.column_stack([1 - p1, p1])

    def instance_scores(self, patients):
        """The first member's cell scores (members may score cells in different units)."""
        self._check_fitted()
        return self.models_[0].instance_scores(patients)

    def _get_state(self):
        return {"n_models": len(self.models_)}, {}

    def _set_state(self, meta, arrays):
        pass  # the members are the submodels

    def _fitted_submodels(self):
        return {f"m{i:03d}": model for i, model in enumerate(self.models_)}

    def _set_submodels(self, submodels):
        self.models_ = [submodels[name] for name in sorted(submodels)]


@register_class
class SelectModel(PatientModel):
    """The candidate with the best inner repeated-CV balanced accuracy, refitted on all patients."""

    family = "select"

    def __init__(self, candidates=("fusion-mean", "fusion-mean-cells"), inner_folds=3,
                 inner_repeats=1, random_state=0):
        self._store_params(locals())

    @property
    def instance_score_units(self) -> str:
        return getattr(getattr(self, "model_", None), "instance_score_units", "")

    def required_features(self):
        return _required(self.candidates)

    def minimum_per_class(self) -> int:
        need = max(_resolve(c).minimum_per_class() for c in self.candidates)
        if len(self.candidates) > 1:  # every candidate fitted in each fold of the inner CV
            return cv_minimum(need, int(self.inner_folds))
        return need

    def _named_candidates(self) -> list[tuple[str, PatientModel]]:
        if not self.candidates:
            raise LymphomilError("the selection has no candidates",
                                 fix="give at least one model name, e.g. "
                                     "--select fusion-mean,cell-topk")
        return [(c if isinstance(c, str) else f"{type(c).__name__}#{i}", _resolve(c))
                for i, c in enumerate(self.candidates)]

    def fit(self, patients, y):
        patients, y = check_patients_y(patients, y)
        check_int("inner_repeats", self.inner_repeats)
        check_int("inner_folds", self.inner_folds, 2)
        named = self._named_candidates()
        seed = resolve_seed(self.random_state)
        chosen, self.inner_scores_ = self._choose(named, patients, y, seed)
        self.chosen_ = named[chosen][0]
        self.model_ = with_seed(clone(named[chosen][1]), derive_seed(seed, "select", self.chosen_))
        self.model_.fit(patients, y)
        return self._mark_fitted()

    def _choose(self, named, patients, y, seed) -> tuple[int, dict[str, float]]:
        """The index of the best candidate by inner CV (ties: hard subset, then list order) and
        every candidate's inner balanced accuracy."""
        folds = min(int(self.inner_folds), int(np.bincount(y, minlength=2).min()))
        if len(named) < 2 or folds < 2:
            return 0, {}
        results = cross_validate_many(named, patients, y, folds=folds,
                                      repeats=int(self.inner_repeats),
                                      seed=derive_seed(seed, "select-inner"))
        scores = {r.model_name: r.summary(n_bootstrap=1)["balanced_accuracy"]["mean"]
                  for r in results}
        return best_index(results), scores

    def predict_proba(self, patients):
        self._check_fitted()
        return self.model_.predict_proba(check_patients(patients))

    def instance_scores(self, patients):
        self._check_fitted()
        return self.model_.instance_scores(check_patients(patients))

    def _get_state(self):
        return {"chosen": self.chosen_, "inner_scores": self.inner_scores_}, {}

    def _set_state(self, meta, arrays):
        self.chosen_ = str(meta["chosen"])
        self.inner_scores_ = dict(meta.get("inner_scores", {}))

    def _fitted_submodels(self):
        return {"chosen": self.model_}

    def _set_submodels(self, submodels):
        self.model_ = submodels["chosen"]


@register_model("image-ensemble",
                "mean of image-logreg-thin and cell-topk probabilities "
                "(two poolings, one backbone)")
def _image_ensemble() -> EnsembleModel:
    return EnsembleModel(members=(create_model("image-logreg-thin"), create_model("cell-topk")))


@register_model("image-logreg-thin-seeds",
                "image-logreg-thin averaged over 5 seeds of its inner C search (less seed noise)")
def _image_seeds() -> EnsembleModel:
    return EnsembleModel(members=tuple(create_model("image-logreg-thin") for _ in range(5)))


@register_model("image-logreg-thin-bagged",
                "image-logreg-thin bagged over 10 stratified bootstrap samples of the patients")
def _image_bagged() -> EnsembleModel:
    return EnsembleModel(members=(create_model("image-logreg-thin"),), bootstrap=10)


@register_model("select-default",
                "nested choice between fusion-mean and fusion-mean-cells by inner CV")
def _select_default() -> SelectModel:
    return SelectModel()
