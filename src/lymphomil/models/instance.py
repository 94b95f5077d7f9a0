"""One-to-one models: a per-cell classifier, its cells' predictions aggregated per patient.

Every cell is trained with its patient's label (a logistic or one-hidden-layer MLP head on the
cached pooled features, standardised with the training patients' statistics). A patient's score
is the ``min``, ``max``, ``mean``, majority ``vote`` (the share of cells called malignant) or
``top-k`` mean (Campanella et al. 2019, as the 2021 winner did) of its cells' probabilities.
``train_on="top-k"`` trains, each epoch, on each patient's ``top_k`` currently highest-scoring
cells only (Campanella's MIL training) instead of all cells.

Cell probabilities from a classifier trained on weakly labelled cells are not patient
probabilities: the max or top-k of a reactive patient's cells easily exceeds 0.5 (the founding
report's max-aggregated models sat at 50 % balanced accuracy). With ``calibrate="platt"`` (default)
a one-dimensional logistic regression (balanced class weights) maps the logit of the aggregated
score to P(malignant); it is fitted on the aggregated scores of the patients passed to ``fit``
(inner-training and validation patients; in-sample, so it mainly sets the threshold).
``calibrate="none"`` returns the aggregated score itself.
"""

from __future__ import annotations

import numpy as np
import torch

from lymphomil.models.base import PatientModel, register_class, register_model
from lymphomil.models.heads import InstanceClassifier
from lymphomil.models.training import (NeuralFeatureModel, check_choice, check_float, check_int,
                                       check_patients, check_patients_y, chunks, class_weights,
                                       epoch_order, fit_loop, fit_standardizer, inner_split,
                                       load_module_arrays, make_generator, module_arrays,
                                       read_bags, resolve_seed, score_validation, seeded,
                                       optimise_step)

AGGREGATES = ("min", "max", "mean", "vote", "top-k")
TRAIN_ON = ("all", "top-k")
CALIBRATE = ("platt", "none")
_EPS = 1e-4


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


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
    k = min(top_k, len(probs))
    return float(np.sort(probs)[-k:].mean())


def _platt(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(slope, intercept) of a balanced 1-D logistic regression of ``y`` on ``z``."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1.0, class_weight="balanced").fit(z.reshape(-1, 1), y)
    return np.array([float(lr.coef_[0, 0]), float(lr.intercept_[0])])


@register_class
class InstanceModel(NeuralFeatureModel, PatientModel):
    """Per-cell classifier trained with the patient's label; cell probabilities aggregated."""

    family = "instance"
    instance_score_units = "cell P(malignant), 0–1, from the per-cell classifier"

    def __init__(self, features="efficientnet-lite0@112", hidden=64, dropout=0.1,
                 aggregate="mean", top_k=10, train_on="all", calibrate="platt", lr=1e-3,
                 weight_decay=1e-4, batch_size=256, max_epochs=40, patience=6,
                 validation_fraction=0.2, balance="weighted", random_state=0):
        self.features = features
        self.hidden = hidden
        self.dropout = dropout
        self.aggregate = aggregate
        self.top_k = top_k
        self.train_on = train_on
        self.calibrate = calibrate
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.balance = balance
        self.random_state = random_state

    # ------------------------------------------------------------------------------------- fit
    def fit(self, patients, y):
        patients, y = check_patients_y(patients, y)
        self._check_training_params()
        check_int("hidden", self.hidden, 0)
        check_float("dropout", self.dropout, 0.0, 1.0, high_open=True)
        check_choice("aggregate", self.aggregate, AGGREGATES)
        check_choice("train_on", self.train_on, TRAIN_ON)
        check_choice("calibrate", self.calibrate, CALIBRATE)
        check_int("top_k", self.top_k)
        spec = self._spec()
        bags = read_bags(patients, spec, self.feature_kind)
        seed = resolve_seed(self.random_state)
        train_idx, val_idx = inner_split(y, self.validation_fraction, seed)

        mean, scale = fit_standardizer(np.concatenate([bags[i] for i in train_idx]))
        self.n_features_ = int(bags[0].shape[1])
        self.feature_mean_, self.feature_scale_ = mean, scale
        cells = torch.from_numpy(np.concatenate(
            [(bags[i] - mean) / scale for i in train_idx]))  # (M, d)
        counts = [len(bags[i]) for i in train_idx]
        cell_y = np.repeat(y[train_idx], counts)  # (M,)
        starts = np.concatenate([[0], np.cumsum(counts)])
        weights_by_class = torch.from_numpy(class_weights(cell_y, self.balance))  # (2,)
        targets = torch.from_numpy(cell_y).float()  # (M,)
        val_bags = [torch.from_numpy((bags[i] - mean) / scale) for i in val_idx]

        with seeded(seed):
            net = InstanceClassifier(self.n_features_, self.hidden, self.dropout)
            optimizer = torch.optim.Adam(net.parameters(), lr=self.lr,
                                         weight_decay=self.weight_decay)
            generator = make_generator(seed, 1)

            def select_units() -> np.ndarray:
                if self.train_on == "all":
                    return np.arange(len(cell_y))
                net.eval()
                with torch.no_grad():
                    scores = net.score(cells).numpy()  # (M,)
                net.train()
                chosen = []
                for j in range(len(counts)):
                    s = scores[starts[j]:starts[j + 1]]
                    k = min(self.top_k, len(s))
                    chosen.append(starts[j] + np.argsort(-s, kind="stable")[:k])
                return np.concatenate(chosen)

            def train_epoch(epoch: int) -> float:
                units = select_units()
                order = units[epoch_order(cell_y[units], self.balance, generator)]
                total, seen = 0.0, 0
                for batch in chunks(order, self.batch_size):
                    index = torch.from_numpy(batch)
                    logits = net.score(cells[index])  # (b,)
                    t = targets[index]  # (b,)
                    total += optimise_step(optimizer, logits, t,
                                           weights_by_class if self.balance == "weighted" else None)
                    seen += len(batch)
                return total / max(seen, 1)

            def validate() -> tuple[float, float]:
                p = [self._patient_score(net, bag)[0] for bag in val_bags]
                return score_validation(y[val_idx], np.array(p))

            history, best = fit_loop(net, train_epoch=train_epoch,
                                     validate=validate if len(val_idx) else None,
                                     max_epochs=self.max_epochs, patience=self.patience,
                                     description="instance")
        self.net_ = net
        self.history_, self.best_epoch_, self.seed_ = history, best, seed
        self.calibration_ = np.array([1.0, 0.0])  # (slope, intercept) on the score's logit
        if self.calibrate == "platt":
            all_bags = [torch.from_numpy((b - mean) / scale) for b in bags]
            raw = np.array([self._patient_score(net, bag)[0] for bag in all_bags])
            self.calibration_ = _platt(_logit(raw), y)
        self.classes_ = np.array([0, 1])
        self.is_fitted_ = True
        return self

    # ------------------------------------------------------------------------------------ predict
    def _patient_score(self, net: InstanceClassifier, bag: torch.Tensor
                       ) -> tuple[float, np.ndarray]:
        with torch.no_grad():
            probs = torch.sigmoid(net.score(bag)).numpy().astype(np.float64)  # (n,)
        return aggregate_scores(probs, self.aggregate, self.top_k), probs

    def _calibrated(self, raw: np.ndarray) -> np.ndarray:
        if self.calibrate == "none":
            return np.asarray(raw, dtype=np.float64)
        slope, intercept = self.calibration_
        return 1.0 / (1.0 + np.exp(-(slope * _logit(raw) + intercept)))

    def _standardised(self, patients) -> list[torch.Tensor]:
        patients = check_patients(patients)
        bags = read_bags(patients, self._spec(), self.feature_kind, self.n_features_)
        return [torch.from_numpy((b - self.feature_mean_) / self.feature_scale_) for b in bags]

    def predict_proba(self, patients):
        self._check_fitted()
        self.net_.eval()
        p1 = self._calibrated(np.array([self._patient_score(self.net_, bag)[0]
                                        for bag in self._standardised(patients)]))
        return np.column_stack([1 - p1, p1])

    def instance_scores(self, patients):
        """Each cell's P(malignant) from the per-cell classifier."""
        self._check_fitted()
        self.net_.eval()
        return [self._patient_score(self.net_, bag)[1] for bag in self._standardised(patients)]

    # ---------------------------------------------------------------------------------- state
    def _get_state(self):
        meta = {"n_features": self.n_features_, **self._loop_meta()}
        arrays = {"feature_mean": self.feature_mean_, "feature_scale": self.feature_scale_,
                  "calibration": self.calibration_, **module_arrays(self.net_)}
        return meta, arrays

    def _set_state(self, meta, arrays):
        self.n_features_ = int(meta["n_features"])
        self._set_loop_meta(meta)
        self.feature_mean_ = np.asarray(arrays["feature_mean"], dtype=np.float32)
        self.feature_scale_ = np.asarray(arrays["feature_scale"], dtype=np.float32)
        self.calibration_ = np.asarray(arrays["calibration"], dtype=np.float64)
        self.net_ = InstanceClassifier(self.n_features_, self.hidden, self.dropout)
        load_module_arrays(self.net_, arrays)
        self.net_.eval()
        self.classes_ = np.array([0, 1])


@register_model("instance",
                "one-to-one: per-cell MLP on cached features, mean of cell probabilities")
def _instance() -> InstanceModel:
    return InstanceModel()
