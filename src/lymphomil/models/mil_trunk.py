"""``mil-trunk`` (:class:`MILTrunkModel`): the founding MIL head of ``mil-e2e`` (1×1-conv position
logits, batch-norm-sigmoid weighted mean, :class:`~lymphomil.models.heads.BNSigmoidMIL`) on the
tail's maps, the backbone's last stage fine-tuned on the cached frozen trunk
(:mod:`lymphomil.models.trunk_base`). Like ``mil-e2e``, each step sends ``grad_images`` random
images of its patients through the tail with gradients and the rest under ``no_grad``
(:func:`~lymphomil.models.mil.forward_with_subset`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lymphomil.models.base import register_class, register_model
from lymphomil.models.checks import check_choice, check_int
from lymphomil.models.fusion import fusion_factory
from lymphomil.models.heads import BNSigmoidMIL
from lymphomil.models.mil import forward_with_subset
from lymphomil.models.neural import FitState
from lymphomil.models.trunk_base import TRUNK_FEATURES, TrunkModel, chunked

CELL_SCORES = ("max", "mean")


class TrunkMILNet(nn.Module):
    """The trainable tail ``(M, d_t, h, w) -> (M, d, h', w')`` followed by the founding MIL head
    (``maps``/``head`` as :class:`~lymphomil.models.mil.MILNet`, for ``forward_with_subset``)."""

    def __init__(self, tail: nn.Module, feature_dim: int):
        super().__init__()
        self.tail = tail
        self.head = BNSigmoidMIL(feature_dim)

    def maps(self, x: torch.Tensor, chunk: int) -> torch.Tensor:
        return chunked(self.tail, x, chunk)  # (M, d, h', w')


@register_class
class MILTrunkModel(TrunkModel):
    """The founding MIL model with the backbone's last stage fine-tuned on a cached trunk."""

    family = "mil-trunk"
    instance_score_units = "position logit of the cell (max or mean over its map positions)"

    def __init__(self, features=TRUNK_FEATURES, grad_images=64, batch_size=2, lr=1e-3,
                 tail_lr=1e-4, weight_decay=0.0, max_epochs=15, patience=4,
                 validation_fraction=0.2, balance="weighted", cell_score="max", chunk_size=64,
                 random_state=0):
        self._store_params(locals())

    def _check_params(self) -> None:
        self._check_common()
        check_int("grad_images", self.grad_images)
        check_choice("cell_score", self.cell_score, CELL_SCORES)

    def _fit_inputs(self, patients, train_idx):
        inputs = self._tensors(patients)
        self.n_features_ = int(inputs[0].shape[1])
        return inputs

    def _inputs(self, patients):
        return self._tensors(patients, self.n_features_)

    def _new_net(self) -> TrunkMILNet:
        return TrunkMILNet(self._new_tail(), self.feature_dim_)

    def _restored_net(self) -> TrunkMILNet:
        return TrunkMILNet(self._restored_tail(), self.feature_dim_)

    def _batch_logits(self, net: TrunkMILNet, state: FitState, units, batch):
        raw = [state.inputs[i] for i in units[batch]]  # [(n_b, d_t, h, w)]
        return forward_with_subset(net, torch.cat(raw), [len(r) for r in raw],
                                   self.grad_images, state.extra["subset"],
                                   self.chunk_size)[0]  # (b,)

    def _patient_output(self, net: TrunkMILNet, inputs, i: int) -> tuple[float, np.ndarray]:
        """(P(malignant), per cell the max or mean of its position logits)."""
        x = inputs[i]  # (n, d_t, h, w)
        with torch.no_grad():
            maps = net.maps(x, self.chunk_size)  # (n, d, h', w')
            logit, _, positions = net.head.forward_images(maps, [len(x)])  # (1,), (n, h', w')
        flat = positions.reshape(len(x), -1)  # (n, h'*w')
        scores = flat.amax(dim=1) if self.cell_score == "max" else flat.mean(dim=1)  # (n,)
        return float(torch.sigmoid(logit)[0]), scores.numpy().astype(np.float64)

    def _state(self):
        return self._common_state(), {}

    def _load_state(self, meta, arrays):
        self._load_common(meta)


@register_model("mil-trunk", "founding MIL model, last stage fine-tuned on the cached frozen "
                             "trunk (EfficientNet-Lite0, 112 px)")
def _mil_trunk() -> MILTrunkModel:
    return MILTrunkModel()


#: fused with attributes: attribute logreg (compact grid) + this head's probability, mean rule
_fused = fusion_factory("mean", "mil-trunk")
_fused.__module__ = __name__  # registered here: importing this module is what adds it
register_model("fusion-mean-miltrunk", "attribute logreg (compact grid) + mil-trunk, mean of the "
                                       "probabilities")(_fused)
