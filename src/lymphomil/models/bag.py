"""Many-to-one models: fixed-size bags of K cells, pooled, then an MLP (founding report §3.2.2).

Training: every epoch each patient's cells are shuffled and cut into ``n // K`` disjoint bags of
``K = bag_size`` cells (a patient with fewer than K cells gives one bag drawn with replacement);
every bag carries its patient's label. Pooling: ``min``, ``max``, ``sum``, ``mean`` per feature
or ``attention`` (Ilse et al. 2018); then a one-hidden-layer MLP.

Prediction is deterministic: the patient's cells, in file order and repeated cyclically, fill
``ceil(n / K)`` bags of exactly K cells (every cell is used; a few appear twice) with bag ``b``
taking cells ``b, b + m, b + 2m, …``; the patient's probability is the mean of its bags'.
A cell's score is the probability of a bag made of K copies of that cell (its own call).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lymphomil.features.spec import DEFAULT_FEATURES
from lymphomil.models.base import register_class, register_model
from lymphomil.models.checks import check_choice, check_float, check_int, check_patients, numpy_rng
from lymphomil.models.heads import BAG_POOLINGS, PoolingMIL
from lymphomil.models.neural import FitState, NeuralPatientModel
from lymphomil.models.training import class_weights


def training_bags(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Cell indices of one epoch's bags for a patient with ``n`` cells: (n_bags, size)."""
    if n < size:
        return rng.integers(0, n, size=(1, size))
    n_bags = n // size
    return rng.permutation(n)[:n_bags * size].reshape(n_bags, size)


def inference_bags(n: int, size: int) -> np.ndarray:
    """Deterministic bags covering every cell: (ceil(n / size), size)."""
    m = max(1, math.ceil(n / size))
    cycled = np.resize(np.arange(n), m * size)  # 0..n-1 repeated cyclically
    return cycled.reshape(size, m).T  # bag b: cells b, b+m, b+2m, ...


@register_class
class BagModel(NeuralPatientModel):
    """Many-to-one: bags of ``bag_size`` cells pooled (min/max/sum/mean/attention) → MLP."""

    family = "bag"
    instance_score_units = "cell P(malignant), 0–1 (a bag of copies of the one cell)"

    def __init__(self, features=DEFAULT_FEATURES, bag_size=16, pooling="attention",
                 hidden=64, attention_dim=64, dropout=0.1, lr=1e-3, weight_decay=1e-4,
                 batch_size=32, max_epochs=60, patience=8, validation_fraction=0.2,
                 balance="weighted", random_state=0):
        self._store_params(locals())

    def _new_net(self) -> PoolingMIL:
        return PoolingMIL(self.n_features_, self.pooling, self.hidden, self.attention_dim,
                          self.dropout)

    def _check_params(self) -> None:
        check_int("bag_size", self.bag_size)
        check_choice("pooling", self.pooling, BAG_POOLINGS)
        check_int("hidden", self.hidden, 0)
        check_int("attention_dim", self.attention_dim)
        check_float("dropout", self.dropout, 0.0, 1.0, high_open=True)

    # ------------------------------------------------------------------------------ training units
    def _epoch_units(self, net, state: FitState, epoch: int):
        """This epoch's bags: (patient position, cell indices (K,)), each with its patient's
        label."""
        rng = state.extra.setdefault("rng", numpy_rng(state.seed, 2))
        units = [(i, idx) for i in state.train_idx
                 for idx in training_bags(len(state.inputs[i]), self.bag_size, rng)]
        unit_y = np.array([state.y[i] for i, _ in units])
        return units, unit_y, torch.from_numpy(class_weights(unit_y, self.balance))  # (2,)

    def _batch_logits(self, net: PoolingMIL, state: FitState, units, batch):
        X = torch.stack([state.inputs[units[u][0]][torch.from_numpy(units[u][1])]
                         for u in batch])  # (b, K, d): one patient per row
        return net(X)[0]  # (b,)

    # ------------------------------------------------------------------------------------ outputs
    def _patient_output(self, net: PoolingMIL, inputs, i: int) -> tuple[float, None]:
        """(mean probability of the patient's deterministic bags, no cell scores: see
        :meth:`instance_scores`)."""
        cells = inputs[i]  # (n, d)
        index = torch.from_numpy(inference_bags(len(cells), self.bag_size))  # (m, K)
        with torch.no_grad():
            logits, _ = net(cells[index])  # (m, K, d) -> (m,)
        return float(torch.sigmoid(logits).double().mean()), None

    def instance_scores(self, patients):
        """Each cell's own call: P(malignant) of a bag of ``bag_size`` copies of the cell."""
        self._check_fitted()
        self.net_.eval()
        out = []
        for cells in self._inputs(check_patients(patients)):
            z = cells * self.bag_size if self.pooling == "sum" else cells  # (n, d) pooled copies
            with torch.no_grad():
                logits = self.net_.classifier(z).squeeze(-1)  # (n,)
            out.append(torch.sigmoid(logits).numpy().astype(np.float64))
        return out


@register_model("bag", "many-to-one: bags of 16 cells, attention pooling, MLP; mean over bags")
def _bag() -> BagModel:
    return BagModel()
