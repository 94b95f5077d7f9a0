"""One-to-one models: a per-cell classifier, its cells' predictions aggregated per patient.

Every cell is trained with its patient's label (a logistic or one-hidden-layer MLP head on the
cached pooled features, standardised with the training patients' statistics). A patient's score
is the ``min``, ``max``, ``mean``, majority ``vote`` (the share of cells called malignant) or
``top-k`` mean (Campanella et al. 2019, as the 2021 winner did) of its cells' probabilities.
``train_on="top-k"`` trains, each epoch, on each patient's ``top_k`` currently highest-scoring
cells only (Campanella's MIL training) instead of all cells.

Cell probabilities from a classifier trained on weakly labelled cells are not patient
probabilities: the max or top-k of a reactive patient's cells easily exceeds 0.5 (the founding
report's max-aggregated models sat at 50 % balanced accuracy). With ``calibrate=True`` (default)
a one-dimensional logistic regression (balanced class weights) maps the logit of the aggregated
score to P(malignant); it is fitted on the aggregated scores of the patients passed to ``fit``
(inner-training and validation patients; in-sample, so it mainly sets the threshold).
``calibrate=False`` returns the aggregated score itself.
"""

from __future__ import annotations

import numpy as np
import torch

from lymphomil.evaluation.metrics import logit
from lymphomil.features.spec import DEFAULT_FEATURES
from lymphomil.models.base import register_class, register_model
from lymphomil.models.blocks import apply_platt, fit_platt, top_k_mean
from lymphomil.models.checks import check_bool, check_choice, check_float, check_int
from lymphomil.models.heads import InstanceClassifier
from lymphomil.models.neural import FitState, NeuralPatientModel
from lymphomil.models.training import class_weights

AGGREGATES = ("min", "max", "mean", "vote", "top-k")
TRAIN_ON = ("all", "top-k")
#: the clip of the aggregated score before its logit (a ``vote`` score can be exactly 0 or 1)
_EPS = 1e-4


def aggregate_scores(probs: np.ndarray, how: str, top_k: int) -> float:
    """A patient's P(malignant) from its cells' probabilities."""
    if how == "min":
        return float(probs.min())
    if how == "max":
        return float(probs.max())
    if how == "mean":
        return float(probs.mean())
    if how == "vote":
        return float(np.mean(probs >= 0.5))
    return top_k_mean(probs, top_k)


@register_class
class InstanceModel(NeuralPatientModel):
    """Per-cell classifier trained with the patient's label; cell probabilities aggregated."""

    family = "instance"
    instance_score_units = "cell P(malignant), 0–1, from the per-cell classifier"

    def __init__(self, features=DEFAULT_FEATURES, hidden=64, dropout=0.1,
                 aggregate="mean", top_k=10, train_on="all", calibrate=True, lr=1e-3,
                 weight_decay=1e-4, batch_size=256, max_epochs=40, patience=6,
                 validation_fraction=0.2, balance="weighted", random_state=0):
        self._store_params(locals())

    def _check_params(self) -> None:
        check_int("hidden", self.hidden, 0)
        check_float("dropout", self.dropout, 0.0, 1.0, high_open=True)
        check_choice("aggregate", self.aggregate, AGGREGATES)
        check_choice("train_on", self.train_on, TRAIN_ON)
        check_bool("calibrate", self.calibrate)
        check_int("top_k", self.top_k)

    def _new_net(self) -> InstanceClassifier:
        return InstanceClassifier(self.n_features_, self.hidden, self.dropout)

    # ------------------------------------------------------------------------------ training units
    def _epoch_units(self, net, state: FitState, epoch: int):
        """The training patients' cells (each with its patient's label), all of them or, with
        ``train_on="top-k"``, each patient's ``top_k`` currently highest-scoring cells."""
        if not state.extra:
            counts = [len(state.inputs[i]) for i in state.train_idx]
            cell_y = np.repeat(state.y[state.train_idx], counts)  # (M,)
            state.extra.update(
                cells=torch.cat([state.inputs[i] for i in state.train_idx]),  # (M, d)
                cell_y=cell_y, starts=np.concatenate([[0], np.cumsum(counts)]),
                weights=torch.from_numpy(class_weights(cell_y, self.balance)))  # (2,)
        cell_y, starts = state.extra["cell_y"], state.extra["starts"]
        units = np.arange(len(cell_y))
        if self.train_on == "top-k":
            net.eval()
            with torch.no_grad():
                scores = net.score(state.extra["cells"]).numpy()  # (M,)
            net.train()
            units = np.concatenate([
                starts[j] + np.argsort(-scores[starts[j]:starts[j + 1]], kind="stable")[:self.top_k]
                for j in range(len(starts) - 1)])
        return units, cell_y[units], state.extra["weights"]

    def _batch_logits(self, net, state: FitState, units, batch):
        return net.score(state.extra["cells"][torch.from_numpy(units[batch])])  # (b,)

    # ------------------------------------------------------------------------------------ outputs
    def _patient_output(self, net: InstanceClassifier, inputs, i: int
                        ) -> tuple[float, np.ndarray]:
        """(aggregated score, each cell's P(malignant) from the per-cell classifier)."""
        with torch.no_grad():
            probs = torch.sigmoid(net.score(inputs[i])).numpy().astype(np.float64)  # (n,)
        return aggregate_scores(probs, self.aggregate, self.top_k), probs

    def _after_fit(self, state: FitState) -> None:
        self.calibration_ = np.array([1.0, 0.0])  # (slope, intercept) on the score's logit
        if self.calibrate:
            raw = np.array([self._patient_output(self.net_, state.inputs, i)[0]
                            for i in range(len(state.inputs))])
            slope, intercept = fit_platt(logit(raw, _EPS), state.y)
            self.calibration_ = np.array([slope[0], intercept])

    def _calibrated(self, raw: np.ndarray) -> np.ndarray:
        if not self.calibrate:
            return np.asarray(raw, dtype=np.float64)
        slope, intercept = self.calibration_
        return 1.0 / (1.0 + np.exp(-apply_platt(logit(raw, _EPS), [slope], intercept)))

    # ---------------------------------------------------------------------------------- state
    def _state(self):
        meta, arrays = super()._state()
        return meta, {**arrays, "calibration": self.calibration_}

    def _load_state(self, meta, arrays):
        super()._load_state(meta, arrays)
        self.calibration_ = np.asarray(arrays["calibration"], dtype=np.float64)


@register_model("instance",
                "one-to-one: per-cell MLP on cached features, mean of cell probabilities")
def _instance() -> InstanceModel:
    return InstanceModel()
