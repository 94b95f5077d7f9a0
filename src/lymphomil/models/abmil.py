"""Gated attention MIL (Ilse, Tomczak & Welling 2018) on cached pooled cell features.

Each patient is one bag of all its cells; batches of patients are padded and masked
(:func:`~lymphomil.models.training.pad_bags`). With ``use_attributes=True`` the clinical attributes
(age, log lymphocyte count, gender; standardised with the statistics of the patients passed to
``fit``) join the attention-pooled embedding in front of the linear classifier, so the images can
add to what the count already says. Trained naively, a 128-d embedding memorises a hundred
training patients long before three attribute weights (each moving ``lr`` per Adam step) have
learnt the count, so the classifier *starts* as a logistic regression on the attributes of the
inner-training patients (image weights 0) and the image branch learns what it misses — the
images "earn their place" (DESIGN §1), and early stopping falls back to the attribute model when
they do not. A cell's score is its attention weight.
"""

from __future__ import annotations

import numpy as np
import torch

from lymphomil.errors import LymphomilError
from lymphomil.models.base import PatientModel, register_class, register_model
from lymphomil.models.heads import GatedAttentionMIL
from lymphomil.models.training import (ATTRIBUTE_NAMES, NeuralFeatureModel, attribute_matrix,
                                       check_float, check_int, check_patients, check_patients_y,
                                       chunks, class_weights, epoch_order, fit_loop,
                                       fit_standardizer, inner_split, load_module_arrays,
                                       make_generator, module_arrays, pad_bags, read_bags,
                                       optimise_step, resolve_seed, score_validation, seeded)


def _attribute_start(A: np.ndarray, y: np.ndarray, balance: str) -> tuple[np.ndarray, float]:
    """A logistic regression on the (standardised) attributes: the head's starting point."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1.0, class_weight=None if balance == "none" else "balanced")
    lr.fit(A, y)
    return lr.coef_[0].astype(np.float32), float(lr.intercept_[0])


@register_class
class ABMILModel(NeuralFeatureModel, PatientModel):
    """Gated-attention MIL over a patient's cells; optionally with the clinical attributes."""

    family = "abmil"
    instance_score_units = "attention weight (a patient's weights sum to 1)"

    def __init__(self, features="efficientnet-lite0@112", use_attributes=False, hidden=128,
                 attention_dim=64, dropout=0.25, lr=5e-4, weight_decay=1e-4, batch_size=8,
                 max_epochs=60, patience=10, validation_fraction=0.2, balance="weighted",
                 random_state=0):
        self.features = features
        self.use_attributes = use_attributes
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

    def _new_net(self) -> GatedAttentionMIL:
        n_extra = len(ATTRIBUTE_NAMES) if self.use_attributes else 0
        return GatedAttentionMIL(self.n_features_, self.hidden, self.attention_dim,
                                 self.dropout, n_extra)

    # ------------------------------------------------------------------------------------- fit
    def fit(self, patients, y):
        patients, y = check_patients_y(patients, y)
        self._check_training_params()
        check_int("hidden", self.hidden)
        check_int("attention_dim", self.attention_dim)
        check_float("dropout", self.dropout, 0.0, 1.0, high_open=True)
        if not isinstance(self.use_attributes, (bool, np.bool_)):
            raise LymphomilError(f"use_attributes={self.use_attributes!r} must be True or False",
                                 fix="set use_attributes to True or False")
        bags = read_bags(patients, self._spec(), self.feature_kind)
        seed = resolve_seed(self.random_state)
        train_idx, val_idx = inner_split(y, self.validation_fraction, seed)
        self.n_features_ = int(bags[0].shape[1])
        self.feature_mean_, self.feature_scale_ = fit_standardizer(
            np.concatenate([bags[i] for i in train_idx]))
        if self.use_attributes:
            self.attribute_mean_, self.attribute_scale_ = fit_standardizer(
                attribute_matrix(patients))
        X, A = self._inputs(patients, bags)
        y_train = y[train_idx]
        weights = torch.from_numpy(class_weights(y_train, self.balance))  # (2,)

        with seeded(seed):
            net = self._new_net()
            if A is not None:
                coef, intercept = _attribute_start(A[torch.from_numpy(train_idx)].numpy(),
                                                   y_train, self.balance)
                net.start_from_linear(torch.from_numpy(coef), intercept)
            optimizer = torch.optim.Adam(net.parameters(), lr=self.lr,
                                         weight_decay=self.weight_decay)
            generator = make_generator(seed, 1)

            def train_epoch(epoch: int) -> float:
                total, seen = 0.0, 0
                for batch in chunks(epoch_order(y_train, self.balance, generator),
                                    self.batch_size):
                    rows = train_idx[batch]
                    Xb, mask = pad_bags([X[i] for i in rows])  # (b, N, d), (b, N)
                    extra = A[torch.from_numpy(rows)] if A is not None else None  # (b, 3)
                    logits, _ = net(Xb, mask, extra)  # (b,)
                    t = torch.from_numpy(y[rows]).float()  # (b,)
                    total += optimise_step(optimizer, logits, t,
                                           weights if self.balance == "weighted" else None)
                    seen += len(rows)
                return total / max(seen, 1)

            def validate() -> tuple[float, float]:
                p = [self._forward_one(net, X[i], None if A is None else A[i])[0]
                     for i in val_idx]
                return score_validation(y[val_idx], np.array(p))

            history, best = fit_loop(net, train_epoch=train_epoch,
                                     validate=validate if len(val_idx) else None,
                                     max_epochs=self.max_epochs, patience=self.patience,
                                     description="abmil")
        self.net_ = net
        self.history_, self.best_epoch_, self.seed_ = history, best, seed
        self.classes_ = np.array([0, 1])
        self.is_fitted_ = True
        return self

    # ------------------------------------------------------------------------------------ predict
    def _inputs(self, patients: np.ndarray, bags: list[np.ndarray]
                ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        X = [torch.from_numpy((b - self.feature_mean_) / self.feature_scale_) for b in bags]
        A = None
        if self.use_attributes:
            A = torch.from_numpy((attribute_matrix(patients) - self.attribute_mean_)
                                 / self.attribute_scale_)  # (n, 3)
        return X, A

    @staticmethod
    def _forward_one(net: GatedAttentionMIL, cells: torch.Tensor,
                     attributes: torch.Tensor | None) -> tuple[float, np.ndarray]:
        """One patient alone (no padding): (P(malignant), attention weights (n,))."""
        with torch.no_grad():
            extra = None if attributes is None else attributes.unsqueeze(0)  # (1, 3)
            logits, attention = net(cells.unsqueeze(0), None, extra)  # (1,), (1, n)
        return float(torch.sigmoid(logits)[0]), attention[0].numpy().astype(np.float64)

    def _outputs(self, patients) -> list[tuple[float, np.ndarray]]:
        self._check_fitted()
        patients = check_patients(patients)
        bags = read_bags(patients, self._spec(), self.feature_kind, self.n_features_)
        X, A = self._inputs(patients, bags)
        self.net_.eval()
        return [self._forward_one(self.net_, X[i], None if A is None else A[i])
                for i in range(len(X))]

    def predict_proba(self, patients):
        p1 = np.array([p for p, _ in self._outputs(patients)])
        return np.column_stack([1 - p1, p1])

    def instance_scores(self, patients):
        """Each cell's attention weight (they sum to 1 per patient)."""
        return [a for _, a in self._outputs(patients)]

    # ---------------------------------------------------------------------------------- state
    def _get_state(self):
        meta = {"n_features": self.n_features_, "attributes": list(ATTRIBUTE_NAMES)
                if self.use_attributes else [], **self._loop_meta()}
        arrays = {"feature_mean": self.feature_mean_, "feature_scale": self.feature_scale_,
                  **module_arrays(self.net_)}
        if self.use_attributes:
            arrays["attribute_mean"] = self.attribute_mean_
            arrays["attribute_scale"] = self.attribute_scale_
        return meta, arrays

    def _set_state(self, meta, arrays):
        self.n_features_ = int(meta["n_features"])
        self._set_loop_meta(meta)
        self.feature_mean_ = np.asarray(arrays["feature_mean"], dtype=np.float32)
        self.feature_scale_ = np.asarray(arrays["feature_scale"], dtype=np.float32)
        if self.use_attributes:
            self.attribute_mean_ = np.asarray(arrays["attribute_mean"], dtype=np.float32)
            self.attribute_scale_ = np.asarray(arrays["attribute_scale"], dtype=np.float32)
        self.net_ = self._new_net()
        load_module_arrays(self.net_, arrays)
        self.net_.eval()
        self.classes_ = np.array([0, 1])


@register_model("abmil", "gated attention MIL (Ilse 2018) on cached cell features")
def _abmil() -> ABMILModel:
    return ABMILModel()


@register_model("abmil-attr", "gated attention MIL with age, log count and gender in the head")
def _abmil_attr() -> ABMILModel:
    return ABMILModel(use_attributes=True)
