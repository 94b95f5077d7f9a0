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

from lymphomil.models.base import PatientModel, register_class, register_model
from lymphomil.models.heads import POOLINGS, PoolingMIL
from lymphomil.models.training import (NeuralFeatureModel, check_choice, check_float, check_int,
                                       check_patients, check_patients_y, chunks, class_weights,
                                       epoch_order, fit_loop, fit_standardizer, inner_split,
                                       load_module_arrays, make_generator, module_arrays,
                                       numpy_rng, read_bags, resolve_seed, score_validation,
                                       seeded, optimise_step)


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
class BagModel(NeuralFeatureModel, PatientModel):
    """Many-to-one: bags of ``bag_size`` cells pooled (min/max/sum/mean/attention) → MLP."""

    family = "bag"
    instance_score_units = "cell P(malignant), 0–1 (a bag of copies of the one cell)"

    def __init__(self, features="efficientnet-lite0@112", bag_size=16, pooling="attention",
                 hidden=64, attention_dim=64, dropout=0.1, lr=1e-3, weight_decay=1e-4,
                 batch_size=32, max_epochs=60, patience=8, validation_fraction=0.2,
                 balance="weighted", random_state=0):
        self.features = features
        self.bag_size = bag_size
        self.pooling = pooling
        self.hidden = hidden
        self.attention_dim = attention_dim
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.balance = balance
        self.random_state = random_state

    def _new_net(self) -> PoolingMIL:
        return PoolingMIL(self.n_features_, self.pooling, self.hidden, self.attention_dim,
                          self.dropout)

    # ------------------------------------------------------------------------------------- fit
    def fit(self, patients, y):
        patients, y = check_patients_y(patients, y)
        self._check_training_params()
        check_int("bag_size", self.bag_size)
        check_choice("pooling", self.pooling, POOLINGS)
        check_int("hidden", self.hidden, 0)
        check_int("attention_dim", self.attention_dim)
        check_float("dropout", self.dropout, 0.0, 1.0, high_open=True)
        bags = read_bags(patients, self._spec(), self.feature_kind)
        seed = resolve_seed(self.random_state)
        train_idx, val_idx = inner_split(y, self.validation_fraction, seed)
        self.n_features_ = int(bags[0].shape[1])
        mean, scale = fit_standardizer(np.concatenate([bags[i] for i in train_idx]))
        self.feature_mean_, self.feature_scale_ = mean, scale
        train_cells = [torch.from_numpy((bags[i] - mean) / scale) for i in train_idx]
        val_cells = [torch.from_numpy((bags[i] - mean) / scale) for i in val_idx]
        y_train = y[train_idx]

        with seeded(seed):
            net = self._new_net()
            optimizer = torch.optim.Adam(net.parameters(), lr=self.lr,
                                         weight_decay=self.weight_decay)
            generator = make_generator(seed, 1)
            rng = numpy_rng(seed, 2)

            def train_epoch(epoch: int) -> float:
                units = []  # (patient position, cell indices (K,))
                for j, cells in enumerate(train_cells):
                    units.extend((j, idx) for idx in training_bags(len(cells), self.bag_size, rng))
                unit_y = np.array([y_train[j] for j, _ in units])
                weights = torch.from_numpy(class_weights(unit_y, self.balance))  # (2,)
                total, seen = 0.0, 0
                for batch in chunks(epoch_order(unit_y, self.balance, generator),
                                    self.batch_size):
                    X = torch.stack([train_cells[units[u][0]][torch.from_numpy(units[u][1])]
                                     for u in batch])  # (b, K, d): one patient per row
                    t = torch.from_numpy(unit_y[batch]).float()  # (b,)
                    logits, _ = net(X)  # (b,)
                    total += optimise_step(optimizer, logits, t,
                                           weights if self.balance == "weighted" else None)
                    seen += len(batch)
                return total / max(seen, 1)

            def validate() -> tuple[float, float]:
                p = [self._patient_proba(net, cells) for cells in val_cells]
                return score_validation(y[val_idx], np.array(p))

            history, best = fit_loop(net, train_epoch=train_epoch,
                                     validate=validate if len(val_idx) else None,
                                     max_epochs=self.max_epochs, patience=self.patience,
                                     description="bag")
        self.net_ = net
        self.history_, self.best_epoch_, self.seed_ = history, best, seed
        self.classes_ = np.array([0, 1])
        self.is_fitted_ = True
        return self

    # ------------------------------------------------------------------------------------ predict
    def _patient_proba(self, net: PoolingMIL, cells: torch.Tensor) -> float:
        index = torch.from_numpy(inference_bags(len(cells), self.bag_size))  # (m, K)
        with torch.no_grad():
            logits, _ = net(cells[index])  # (m, K, d) -> (m,)
        return float(torch.sigmoid(logits).double().mean())

    def _standardised(self, patients) -> list[torch.Tensor]:
        patients = check_patients(patients)
        bags = read_bags(patients, self._spec(), self.feature_kind, self.n_features_)
        return [torch.from_numpy((b - self.feature_mean_) / self.feature_scale_) for b in bags]

    def predict_proba(self, patients):
        self._check_fitted()
        self.net_.eval()
        p1 = np.array([self._patient_proba(self.net_, c) for c in self._standardised(patients)])
        return np.column_stack([1 - p1, p1])

    def instance_scores(self, patients):
        """Each cell's own call: P(malignant) of a bag of ``bag_size`` copies of the cell."""
        self._check_fitted()
        self.net_.eval()
        out = []
        for cells in self._standardised(patients):
            z = cells * self.bag_size if self.pooling == "sum" else cells  # (n, d) pooled copies
            with torch.no_grad():
                logits = self.net_.classifier(z).squeeze(-1)  # (n,)
            out.append(torch.sigmoid(logits).numpy().astype(np.float64))
        return out

    # ---------------------------------------------------------------------------------- state
    def _get_state(self):
        meta = {"n_features": self.n_features_, **self._loop_meta()}
        arrays = {"feature_mean": self.feature_mean_, "feature_scale": self.feature_scale_,
                  **module_arrays(self.net_)}
        return meta, arrays

    def _set_state(self, meta, arrays):
        self.n_features_ = int(meta["n_features"])
        self._set_loop_meta(meta)
        self.feature_mean_ = np.asarray(arrays["feature_mean"], dtype=np.float32)
        self.feature_scale_ = np.asarray(arrays["feature_scale"], dtype=np.float32)
        self.net_ = self._new_net()
        load_module_arrays(self.net_, arrays)
        self.net_.eval()
        self.classes_ = np.array([0, 1])


@register_model("bag", "many-to-one: bags of 16 cells, attention pooling, MLP; mean over bags")
def _bag() -> BagModel:
    return BagModel()
