"""Gated attention MIL (Ilse, Tomczak & Welling 2018) on cached pooled cell features.

Each patient is one bag of all its cells; batches of patients are padded and masked
(:func:`~lymphomil.models.inputs.pad_bags`). With ``use_attributes=True`` the clinical attributes
(age, log10 lymphocyte count, gender; standardised with the statistics of the patients passed to
``fit``) join the attention-pooled embedding in front of the linear classifier, so the images can
add to what the count already says. Trained naively, a 128-d embedding memorises a hundred
training patients long before three attribute weights (each moving ``lr`` per Adam step) have
learnt the count, so the classifier *starts* as a logistic regression on the attributes of the
inner-training patients (image weights 0) and the image branch learns what it misses — the
images "earn their place" (docs/design.md §1), and early stopping falls back to the attribute
model when they do not. A cell's score is its attention weight.
"""

from __future__ import annotations

import numpy as np
import torch

from lymphomil.features.spec import DEFAULT_FEATURES
from lymphomil.models.attributes import attribute_matrix, attribute_names, statistics_in_log10
from lymphomil.models.base import register_class, register_model
from lymphomil.models.blocks import attribute_start, start_linear_from_attributes
from lymphomil.models.checks import check_bool, check_float, check_int
from lymphomil.models.heads import GatedAttentionMIL
from lymphomil.models.inputs import fit_standardizer, pad_bags
from lymphomil.models.neural import FitState, NeuralPatientModel

#: the attributes the head sees (names saved with the model)
ATTRIBUTE_NAMES = tuple(attribute_names())


def _attributes(patients) -> np.ndarray:
    """(n, 3) float32: age, log10 of the lymphocyte count, male."""
    return attribute_matrix(patients).astype(np.float32)


@register_class
class ABMILModel(NeuralPatientModel):
    """Gated-attention MIL over a patient's cells; optionally with the clinical attributes."""

    family = "abmil"
    instance_score_units = "attention weight (a patient's weights sum to 1)"

    def __init__(self, features=DEFAULT_FEATURES, use_attributes=False, hidden=128,
                 attention_dim=64, dropout=0.25, lr=5e-4, weight_decay=1e-4, batch_size=8,
                 max_epochs=60, patience=10, validation_fraction=0.2, balance="weighted",
                 random_state=0):
        self._store_params(locals())

    def _new_net(self) -> GatedAttentionMIL:
        n_extra = len(ATTRIBUTE_NAMES) if self.use_attributes else 0
        return GatedAttentionMIL(self.n_features_, self.hidden, self.attention_dim,
                                 self.dropout, n_extra)

    def _check_params(self) -> None:
        check_int("hidden", self.hidden)
        check_int("attention_dim", self.attention_dim)
        check_float("dropout", self.dropout, 0.0, 1.0, high_open=True)
        check_bool("use_attributes", self.use_attributes)

    # ------------------------------------------------------------------------------------ inputs
    def _fit_inputs(self, patients, train_idx):
        if self.use_attributes:  # standardised with all the patients passed to fit
            self.attribute_mean_, self.attribute_scale_ = fit_standardizer(_attributes(patients))
        return super()._fit_inputs(patients, train_idx)

    def _standardise(self, patients, bags):
        """Per patient (cells (n, d), attributes (3,) or None), both standardised."""
        X = super()._standardise(patients, bags)
        if not self.use_attributes:
            return [(x, None) for x in X]
        A = torch.from_numpy((_attributes(patients) - self.attribute_mean_)
                             / self.attribute_scale_)  # (n, 3)
        return list(zip(X, A))

    # ------------------------------------------------------------------------------------- training
    def _init_net(self, net: GatedAttentionMIL, state: FitState) -> None:
        """With attributes, the classifier starts as their logistic regression (image weights 0)."""
        if self.use_attributes:
            A = torch.stack([state.inputs[i][1] for i in state.train_idx])  # (n_train, 3)
            coef, intercept = attribute_start(A.numpy(), state.y[state.train_idx], self.balance)
            start_linear_from_attributes(net.classifier, coef, intercept)

    def _batch_logits(self, net: GatedAttentionMIL, state: FitState, units, batch):
        rows = units[batch]
        Xb, mask = pad_bags([state.inputs[i][0] for i in rows])  # (b, N, d), (b, N)
        extra = (torch.stack([state.inputs[i][1] for i in rows])
                 if self.use_attributes else None)  # (b, 3)
        return net(Xb, mask, extra)[0]  # (b,)

    def _patient_output(self, net: GatedAttentionMIL, inputs, i: int
                        ) -> tuple[float, np.ndarray]:
        """One patient alone (no padding): (P(malignant), attention weights (n,), sum 1)."""
        cells, attributes = inputs[i]
        with torch.no_grad():
            extra = None if attributes is None else attributes.unsqueeze(0)  # (1, 3)
            logits, attention = net(cells.unsqueeze(0), None, extra)  # (1,), (1, n)
        return float(torch.sigmoid(logits)[0]), attention[0].numpy().astype(np.float64)

    # ---------------------------------------------------------------------------------- state
    def _state(self):
        meta, arrays = super()._state()
        meta["attributes"] = list(ATTRIBUTE_NAMES) if self.use_attributes else []
        if self.use_attributes:
            arrays.update(attribute_mean=self.attribute_mean_,
                          attribute_scale=self.attribute_scale_)
        return meta, arrays

    def _load_state(self, meta, arrays):
        super()._load_state(meta, arrays)
        if self.use_attributes:
            self.attribute_mean_, self.attribute_scale_ = statistics_in_log10(
                meta.get("attributes", ATTRIBUTE_NAMES), arrays["attribute_mean"],
                arrays["attribute_scale"])


@register_model("abmil", "gated attention MIL (Ilse 2018) on cached cell features")
def _abmil() -> ABMILModel:
    return ABMILModel()


@register_model("abmil-attr", "gated attention MIL with age, log count and gender in the head")
def _abmil_attr() -> ABMILModel:
    return ABMILModel(use_attributes=True)
