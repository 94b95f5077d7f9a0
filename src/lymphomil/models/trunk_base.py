"""Partial fine-tuning on a cached frozen trunk (issue 18): what ``mil-trunk``
(:mod:`lymphomil.models.mil_trunk`) and ``topk-trunk`` (:mod:`lymphomil.models.topk_trunk`) share.

The backbone's front (all but its last stage, :mod:`lymphomil.features.trunk`) runs once per
image into the feature cache (kind ``"trunk"``, float16 on disk); a fit trains only the tail (the
last stage, ``conv_head`` and its norm, starting from the backbone's pretrained weights) and a
head, from the cached activations. The tail's batch norms stay in eval mode (their ImageNet
statistics, as ``mil-e2e``'s ``freeze_bn``), so a cell's output depends on that cell alone.

Augmentation: none. The cached activations are of the plain centre crop; dihedral views would
need 8× the extraction and the disk (≈ 0.7 GB for the shared cohort instead of ≈ 90 MB) and
were not measured.

Hygiene is the neural template's (:mod:`lymphomil.models.neural`): seeds derived from
``random_state``, class-weighted loss, early stopping on an inner validation split of the
training patients only, the torch thread count set by the harness (``--threads``).
"""

from __future__ import annotations

import torch
from torch import nn

from lymphomil.features.spec import DEFAULT_CROP
from lymphomil.features.trunk import check_trunk_backbone, trunk_tail
from lymphomil.models.blocks import (
    freeze_batchnorm,
    two_group_adam,
)
from lymphomil.models.checks import check_float, check_int, make_generator
from lymphomil.models.inputs import read_bags
from lymphomil.models.neural import FitState, NeuralPatientModel

#: the trunk features every default reads: EfficientNet-Lite0 (offline ImageNet weights) at 112 px
TRUNK_FEATURES = f"efficientnet-lite0@{DEFAULT_CROP}"


def chunked(fn, x: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([fn(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])


class TrunkModel(NeuralPatientModel):
    """What both heads share: trunk inputs, the pretrained tail, its optimiser and state."""

    feature_kind = "trunk"

    @property
    def _description(self) -> str:
        return f"{self.family} {self._spec().backbone}"

    def _check_common(self) -> None:
        check_trunk_backbone(self._spec().backbone)
        if self.tail_lr is not None:
            check_float("tail_lr", self.tail_lr, 0.0)
        check_int("chunk_size", self.chunk_size)

    def _tensors(self, patients, n_features: int | None = None) -> list[torch.Tensor]:
        bags = read_bags(patients, self._spec(), self.feature_kind, n_features)
        return [torch.tensor(b) for b in bags]  # [(n, d_t, h_t, w_t)] float32, a writable copy

    def _new_tail(self) -> nn.Module:
        spec = self._spec()
        tail, self.feature_dim_, _, _, self.weights_digest_ = trunk_tail(spec.backbone,
                                                                         spec.weights)
        for p in tail.parameters():
            p.requires_grad_(True)
        return tail

    def _restored_tail(self) -> nn.Module:
        return trunk_tail(self._spec().backbone, "none")[0].requires_grad_(False)

    def _optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        head = [p for name, p in net.named_parameters() if not name.startswith("tail.")]
        return two_group_adam(head, net.tail, self.lr, self.tail_lr, self.weight_decay)

    def _epoch_units(self, net: nn.Module, state: FitState, epoch: int):
        freeze_batchnorm(net.tail)
        if "subset" not in state.extra:
            state.extra["subset"] = make_generator(state.seed, 3)
        return super()._epoch_units(net, state, epoch)

    def _after_fit(self, state: FitState) -> None:
        self.net_.requires_grad_(False)

    def _common_state(self) -> dict:
        return {"n_features": self.n_features_, "feature_dim": self.feature_dim_,
                "weights_digest": self.weights_digest_}

    def _load_common(self, meta: dict) -> None:
        self.n_features_ = int(meta["n_features"])
        self.feature_dim_ = int(meta["feature_dim"])
        self.weights_digest_ = str(meta.get("weights_digest", ""))


