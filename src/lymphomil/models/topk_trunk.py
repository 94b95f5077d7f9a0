"""``topk-trunk`` (:class:`TopKTrunkModel`): a cell classifier (the tail, global average pooling,
then a linear layer on [pooled map, standardised age, standardised log10 lymphocyte
count], started as the attributes' logistic regression with image weights 0) and top-k
pooling (Campanella et al. 2019; the rank-1 public solution): a patient's
logit is the mean of its ``k`` highest cell logits. The backbone's last stage is fine-tuned on
the cached frozen trunk (:mod:`lymphomil.models.trunk_base`).

Each step scores all the batch's cells without gradients, then recomputes its ``k`` top cells
with gradients (training ``k`` = 8, half the smallest bag of the challenge: 16 cells). The ``k``
of the patient score is then chosen among ``ks`` on the inner validation patients of the
training part (the split early stopping already uses: never the patients being predicted), by
class-balanced log-loss; a full inner CV over ``k`` would multiply a fit's cost by the grid size
× the inner folds.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
from torch import nn

from lymphomil.evaluation.metrics import balanced_log_loss
from lymphomil.models.attributes import (
    NATURAL_LOG_COUNT,
    attribute_matrix,
    attribute_names,
    statistics_in_log10,
)
from lymphomil.models.base import register_class, register_model
from lymphomil.models.blocks import (
    attribute_start,
    start_linear_from_attributes,
    top_k_indices,
    top_k_mean,
)
from lymphomil.models.checks import check_bool, check_int
from lymphomil.models.fusion import fusion_factory
from lymphomil.models.inputs import fit_standardizer
from lymphomil.models.neural import FitState
from lymphomil.models.trunk_base import TRUNK_FEATURES, TrunkModel, chunked
from lymphomil.runtime.errors import LymphomilError

#: the attributes the top-k cell classifier sees beside the image (names saved with the model)
TOPK_ATTRIBUTES = tuple(attribute_names(gender=False))


class TopKCellNet(nn.Module):
    """Cell classifier: tail -> global average pool -> [pooled, attributes] -> linear logit."""

    def __init__(self, tail: nn.Module, feature_dim: int, n_extra: int):
        super().__init__()
        self.tail = tail
        self.classifier = nn.Linear(feature_dim + n_extra, 1)

    def cell_logits(self, x: torch.Tensor, extra: torch.Tensor, chunk: int) -> torch.Tensor:
        """``x`` (n, d_t, h, w) of one patient, ``extra`` (n_extra,) -> logits (n,)."""
        z = chunked(lambda part: self.tail(part).mean(dim=(2, 3)), x, chunk)  # (n, d)
        z = torch.cat([z, extra.to(z.dtype).expand(z.shape[0], -1)], dim=1)  # (n, d + n_extra)
        return self.classifier(z).squeeze(-1)  # (n,)


def _topk_attributes(patients) -> np.ndarray:
    """(n, 2) float32: age and log10 of the lymphocyte count."""
    return attribute_matrix(patients, gender=False).astype(np.float32)


@register_class
class TopKTrunkModel(TrunkModel):
    """Top-k MIL with the count and age in the cell classifier, last stage fine-tuned."""

    family = "topk-trunk"
    instance_score_units = "cell logit of the cell classifier (image, age and count)"

    def __init__(self, features=TRUNK_FEATURES, k=8, ks=(2, 4, 8, 16), use_attributes=True,
                 attribute_start=True, batch_size=4,
                 lr=1e-3, tail_lr=1e-4, weight_decay=1e-4, max_epochs=15, patience=4,
                 validation_fraction=0.2, balance="weighted", chunk_size=64, random_state=0):
        self._store_params(locals())

    def _check_params(self) -> None:
        self._check_common()
        check_int("k", self.k)
        self._candidate_ks()
        check_bool("use_attributes", self.use_attributes)
        check_bool("attribute_start", self.attribute_start)

    def _init_net(self, net: "TopKCellNet", state: FitState) -> None:
        """``attribute_start``: the cell classifier starts as a logistic regression on the
        inner-training patients' attributes (image weights 0), so the images learn what the
        count and age miss instead of drowning them (as ``abmil-attr``).

        Validation during training scores patients with the training ``k`` (never a ``k_`` left
        from an earlier fit); :meth:`_after_fit` then chooses the patient score's ``k_``."""
        self.k_ = int(self.k)
        if not (self.use_attributes and self.attribute_start):
            return
        A = torch.stack([state.inputs[i][1] for i in state.train_idx]).numpy()  # (n, 2)
        coef, intercept = attribute_start(A, state.y[state.train_idx], self.balance)
        start_linear_from_attributes(net.classifier, coef, intercept)

    def _extra(self, patients) -> torch.Tensor:
        if not self.use_attributes:
            return torch.zeros(len(patients), 0)
        A = (_topk_attributes(patients) - self.attribute_mean_) / self.attribute_scale_
        return torch.from_numpy(A.astype(np.float32))  # (n, 2)

    def _fit_inputs(self, patients, train_idx):
        bags = self._tensors(patients)
        self.n_features_ = int(bags[0].shape[1])
        if self.use_attributes:  # standardised with the patients passed to fit
            self.attribute_mean_, self.attribute_scale_ = fit_standardizer(
                _topk_attributes(patients))
        else:
            self.attribute_mean_ = self.attribute_scale_ = np.zeros(0, np.float32)
        return list(zip(bags, self._extra(patients)))

    def _inputs(self, patients):
        return list(zip(self._tensors(patients, self.n_features_), self._extra(patients)))

    def _n_extra(self) -> int:
        return len(TOPK_ATTRIBUTES) if self.use_attributes else 0

    def _new_net(self) -> TopKCellNet:
        return TopKCellNet(self._new_tail(), self.feature_dim_, self._n_extra())

    def _restored_net(self) -> TopKCellNet:
        return TopKCellNet(self._restored_tail(), self.feature_dim_, self._n_extra())

    def _candidate_ks(self) -> list[int]:
        try:
            ks = [operator.index(k) for k in np.atleast_1d(self.ks)]
        except TypeError:
            ks = []
        if not ks or min(ks) < 1:
            raise LymphomilError(f"ks={self.ks!r} must be positive cell counts",
                                 fix="e.g. ks=(2, 4, 8, 16), or ks=(8,) to keep the training k")
        return ks

    def _after_fit(self, state: FitState) -> None:
        """Choose the patient score's ``k`` on the inner validation patients (training part only):
        the lowest class-balanced log-loss, ties to the k closest to the training ``k``."""
        super()._after_fit(state)
        ks = self._candidate_ks()
        self.k_losses_ = []
        if len(state.val_idx) == 0 or len(np.unique(state.y[state.val_idx])) < 2:
            return
        self.net_.eval()
        with torch.no_grad():
            cells = [self.net_.cell_logits(*state.inputs[i], self.chunk_size)
                     for i in state.val_idx]  # [(n_i,)]
        y = state.y[state.val_idx]
        for k in ks:
            p = np.array([float(torch.sigmoid(top_k_mean(c, k))) for c in cells])
            self.k_losses_.append(balanced_log_loss(y, p))
        order = sorted(range(len(ks)),
                       key=lambda j: (round(self.k_losses_[j], 9), abs(np.log(ks[j] / self.k))))
        self.k_ = ks[order[0]]

    def _batch_logits(self, net: TopKCellNet, state: FitState, units, batch):
        out = []
        for i in units[batch]:
            x, extra = state.inputs[i]  # (n, d_t, h, w), (n_extra,)
            with torch.no_grad():
                scores = net.cell_logits(x, extra, self.chunk_size)  # (n,)
            top = top_k_indices(scores, self.k)  # (k,)
            out.append(net.cell_logits(x[top], extra, self.chunk_size).mean())  # ()
        return torch.stack(out)  # (b,)

    def _patient_output(self, net: TopKCellNet, inputs, i: int) -> tuple[float, np.ndarray]:
        """(P(malignant) = sigmoid(mean of the k highest cell logits), every cell's logit)."""
        x, extra = inputs[i]
        with torch.no_grad():
            cells = net.cell_logits(x, extra, self.chunk_size)  # (n,)
        return (float(torch.sigmoid(top_k_mean(cells, self.k_))),
                cells.numpy().astype(np.float64))

    def _state(self):
        meta = {**self._common_state(), "k": int(self.k_),
                "k_losses": [float(v) for v in self.k_losses_],
                "attributes": list(TOPK_ATTRIBUTES) if self.use_attributes else []}
        return meta, {"attribute_mean": self.attribute_mean_,
                      "attribute_scale": self.attribute_scale_}

    def _load_state(self, meta, arrays):
        self._load_common(meta)
        self.k_ = int(meta.get("k", self.k))
        self.k_losses_ = [float(v) for v in meta.get("k_losses", [])]
        # a folder saved before the names were saved has the natural-log count
        legacy = ("age", NATURAL_LOG_COUNT) if self.use_attributes else ()
        names = meta.get("attributes", legacy)
        self.attribute_mean_, self.attribute_scale_ = statistics_in_log10(
            names, arrays["attribute_mean"], arrays["attribute_scale"])


@register_model("topk-trunk", "top-k MIL (trained at k=8, scored with k from 2/4/8/16 chosen on "
                              "the inner validation patients) with age and count in the cell "
                              "classifier, last stage fine-tuned on the cached frozen trunk "
                              "(EfficientNet-Lite0)")
def _topk_trunk() -> TopKTrunkModel:
    return TopKTrunkModel()


@register_model("topk-trunk-image", "topk-trunk on the images alone (no age or count in the "
                                    "cell classifier)")
def _topk_trunk_image() -> TopKTrunkModel:
    return TopKTrunkModel(use_attributes=False)


#: fused with attributes: attribute logreg (compact grid) + this head's probability, mean rule
_fused = fusion_factory("mean", "topk-trunk")
_fused.__module__ = __name__  # registered here: importing this module is what adds it
register_model("fusion-mean-topktrunk", "attribute logreg (compact grid) + topk-trunk, mean of "
                                        "the probabilities")(_fused)
