"""Fusion of an attribute model and an image model (the founding report's decision rules).

Rules on P(malignant): ``min`` and ``max`` (at the 0.5 threshold these are the report's AND/OR
of labels), ``alpha`` (α·p_attr + (1−α)·p_img, α chosen by inner CV) and ``stack`` (a logistic
regression on the two out-of-fold logits). ``alpha`` and ``stack`` learn from out-of-fold
probabilities of an inner CV on the training part only, so under the harness they are nested.

Count gating (``count_gate``, a margin ≥ 0; ``None`` = off): a patient whose lymphocyte count
exceeds the largest count of a *reactive* training patient by more than that share is called
malignant whatever the fused evidence says (every reactive patient of the challenge has a count
below 7.7, docs/design.md §1); inside the range the fused image and attribute evidence decides. The
bound is learned from the training patients only.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone

from lymphomil.evaluation.crossval import derive_seed, inner_folds, out_of_fold, with_seed
from lymphomil.evaluation.metrics import balanced_accuracy, logit
from lymphomil.features.spec import FeatureSpec
from lymphomil.models.attributes import AttributeModel
from lymphomil.models.base import PatientModel, create_model, register_class, register_model
from lymphomil.models.blocks import apply_platt, fit_platt
from lymphomil.models.checks import cv_minimum
from lymphomil.runtime.errors import LymphomilError

RULES = ("alpha", "min", "max", "stack", "mean")
#: P(malignant) given to a patient above the gate's count bound (a fact of the training data)
GATED_PROBA = 0.99
#: the clip of the stacker's logits
_EPS = 1e-6


@register_class
class FusionModel(PatientModel):
    """Late fusion of ``attribute_model`` and ``image_model`` by ``rule``."""

    family = "fusion"

    def __init__(self, attribute_model: PatientModel | None = None,
                 image_model: PatientModel | None = None, rule: str = "alpha",
                 alphas: tuple = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
                 inner_folds: int = 5, count_gate: float | None = None, random_state: int = 0):
        self._store_params(locals())

    def _parts(self) -> tuple[PatientModel, PatientModel]:
        if self.rule not in RULES:
            raise LymphomilError(f"unknown fusion rule {self.rule!r}",
                                 fix=f"choose one of {', '.join(RULES)}")
        attribute = (self.attribute_model if self.attribute_model is not None
                     else AttributeModel(param_grid="compact"))
        image = (self.image_model if self.image_model is not None
                 else create_model("image-logreg-thin"))
        return attribute, image

    def required_features(self) -> list[tuple[FeatureSpec, str]]:
        attribute, image = self._parts()
        return attribute.required_features() + image.required_features()

    def minimum_per_class(self) -> int:
        need = max(part.minimum_per_class() for part in self._parts())
        if self.rule in ("alpha", "stack"):  # both parts fitted in each fold of an inner CV
            return cv_minimum(need, int(self.inner_folds))
        return need

    def _inner_oof(self, patients: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(n, 2) out-of-fold probabilities of both parts on the training patients."""
        parts = self._parts()
        folds = inner_folds(y, self.inner_folds)
        if folds < 2:
            raise LymphomilError("too few patients of one class to tune the fusion",
                                 fix="use rule 'min', 'max' or 'mean', or more patients")

        def fit_predict(train: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
            columns = []
            for column, part in enumerate(parts):
                model = with_seed(clone(part), derive_seed(self.random_state, "inner", k, column))
                model.fit(patients[train], y[train])
                columns.append(model.predict_proba(patients[test])[:, 1])
            return np.column_stack(columns)

        return out_of_fold(y, folds, derive_seed(self.random_state, "fusion-inner"), fit_predict)

    def fit(self, patients: np.ndarray, y: np.ndarray) -> "FusionModel":
        patients = np.asarray(patients, dtype=object)
        y = np.asarray(y, dtype=int)
        attribute, image = self._parts()
        self.alpha_ = 0.5
        self.stack_coef_ = np.zeros(2)
        self.stack_intercept_ = 0.0
        if self.rule in ("alpha", "stack"):
            oof = self._inner_oof(patients, y)
            if self.rule == "alpha":
                self.alpha_ = self._choose_alpha(oof, y)
            else:
                self.stack_coef_, self.stack_intercept_ = fit_platt(logit(oof, _EPS), y)
        self.attribute_model_ = with_seed(clone(attribute), derive_seed(self.random_state, "attr"))
        self.attribute_model_.fit(patients, y)
        self.image_model_ = with_seed(clone(image), derive_seed(self.random_state, "image"))
        self.image_model_.fit(patients, y)
        self.gate_count_ = self._gate_bound(patients, y)
        return self._mark_fitted()

    def _gate_bound(self, patients: np.ndarray, y: np.ndarray) -> float:
        """The count above which the gate calls malignant (inf when off or no reactive patient)."""
        if self.count_gate is None:
            return float("inf")
        margin = float(self.count_gate)
        if not np.isfinite(margin) or margin < 0:
            raise LymphomilError(f"count_gate={self.count_gate!r} must be a margin >= 0 or None",
                                 fix="e.g. count_gate=0.1 (10 % above the reactive range)")
        reactive = [p.lymph_count for p, label in zip(patients, y) if label == 0]
        return float(max(reactive) * (1 + margin)) if reactive else float("inf")

    def _choose_alpha(self, oof: np.ndarray, y: np.ndarray) -> float:
        """α with the best inner balanced accuracy; ties go to the α closest to 0.5."""
        alphas = np.asarray(self.alphas, dtype=float)
        fused = alphas[:, None] * oof[None, :, 0] + (1 - alphas[:, None]) * oof[None, :, 1]
        scores = balanced_accuracy(fused >= 0.5, y[None, :])  # (A,)
        best = np.flatnonzero(scores >= np.nanmax(scores) - 1e-12)
        return float(alphas[best[np.argmin(np.abs(alphas[best] - 0.5))]])

    def combine(self, p_attr: np.ndarray, p_img: np.ndarray) -> np.ndarray:
        if self.rule == "min":
            return np.minimum(p_attr, p_img)
        if self.rule == "max":
            return np.maximum(p_attr, p_img)
        if self.rule == "mean":
            return (p_attr + p_img) / 2
        if self.rule == "alpha":
            return self.alpha_ * p_attr + (1 - self.alpha_) * p_img
        z = apply_platt(logit(np.column_stack([p_attr, p_img]), _EPS), self.stack_coef_,
                        self.stack_intercept_)
        return 1 / (1 + np.exp(-z))

    def predict_proba(self, patients: np.ndarray) -> np.ndarray:
        self._check_fitted()
        patients = np.asarray(patients, dtype=object)
        p_attr = self.attribute_model_.predict_proba(patients)[:, 1]
        p_img = self.image_model_.predict_proba(patients)[:, 1]
        p = np.clip(self.combine(p_attr, p_img), 0.0, 1.0)
        counts = np.array([patient.lymph_count for patient in patients], dtype=float)
        p = np.where(counts > self.gate_count_, np.maximum(p, GATED_PROBA), p)
        return np.column_stack([1 - p, p])

    def part_probas(self, patients: np.ndarray) -> dict[str, np.ndarray]:
        """Each part's P(malignant): the report shows what each side said."""
        return {"attributes": self.attribute_model_.predict_proba(patients)[:, 1],
                "images": self.image_model_.predict_proba(patients)[:, 1]}

    def instance_scores(self, patients: np.ndarray) -> list[np.ndarray] | None:
        self._check_fitted()
        return self.image_model_.instance_scores(patients)

    def _get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        return ({"alpha": self.alpha_, "stack_intercept": self.stack_intercept_,
                 "gate_count": self.gate_count_ if np.isfinite(self.gate_count_) else None},
                {"stack_coef": np.asarray(self.stack_coef_, dtype=np.float64)})

    def _set_state(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        self.alpha_ = float(meta["alpha"])
        self.stack_intercept_ = float(meta["stack_intercept"])
        self.stack_coef_ = arrays["stack_coef"]
        gate = meta.get("gate_count")
        self.gate_count_ = float("inf") if gate is None else float(gate)

    def _fitted_submodels(self) -> dict[str, PatientModel]:
        return {"attributes": self.attribute_model_, "images": self.image_model_}

    def _set_submodels(self, submodels: dict[str, PatientModel]) -> None:
        self.attribute_model_ = submodels["attributes"]
        self.image_model_ = submodels["images"]


def fusion_factory(rule: str, image: str = "image-logreg-thin", **options: object):
    """The factory of a registered fusion: the attribute logistic regression (compact grid) and
    the registered image model ``image``, fused by ``rule``."""
    return lambda: FusionModel(attribute_model=AttributeModel(param_grid="compact"),
                               image_model=create_model(image), rule=rule, **options)


for _rule, _doc in (("alpha", "α-weighted sum, α by inner CV"), ("min", "min rule (AND)"),
                    ("max", "max rule (OR)"), ("stack", "logistic stacker on out-of-fold logits"),
                    ("mean", "mean of the two probabilities")):
    register_model(f"fusion-{_rule}", f"attribute logreg (compact grid) + image-logreg-thin, "
                   f"{_doc}")(fusion_factory(_rule))


#: fusions whose image side is one of the issue-17 image models (mean rule, compact attributes)
FUSION_VARIANTS = {
    "fusion-mean-cells": ("cell-topk", {}, "cell-topk (cell-level top-k on ResNet-50-thin)"),
    "fusion-mean-cells-attr": ("cell-topk-attr", {},
                               "cell-topk-attr (age and count in the cell classifier)"),
    "fusion-mean-proto": ("prototypes", {},
                          "prototype histograms (k-means on ResNet-50-thin cells)"),
    "fusion-mean-ens": ("image-ensemble", {}, "the mean of image-logreg-thin and cell-topk"),
    "fusion-mean-seeds": ("image-logreg-thin-seeds", {}, "image-logreg-thin over 5 inner-CV seeds"),
    "fusion-mean-bagged": ("image-logreg-thin-bagged", {}, "image-logreg-thin bagged 10 times"),
    "fusion-mean-gated": ("image-logreg-thin", {"count_gate": 0.1},
                          "image-logreg-thin, count-gated 10 % above the reactive range"),
    "fusion-mean-ens-gated": ("image-ensemble", {"count_gate": 0.1},
                              "image-ensemble, count-gated 10 % above the reactive range"),
}
for _name, (_image, _options, _doc) in FUSION_VARIANTS.items():
    register_model(_name, f"attribute logreg (compact grid) + {_doc}, mean of the probabilities")(
        fusion_factory("mean", _image, **_options))
register_model("fusion-alpha-cells", "attribute logreg (compact grid) + cell-topk, α-weighted "
               "sum, α by inner CV")(fusion_factory("alpha", "cell-topk"))
