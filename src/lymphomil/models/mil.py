"""The founding report's MIL model (§3.2.2): position logits + batch-normalised sigmoid weights.

A 1×1 convolution turns every spatial position of every cell image's feature map into a logit
``l_i``; the patient logit is ``sum_i a_i l_i / sum_i a_i`` over the patient's positions with
``a_i = sigmoid(beta + gamma * (l_i - mu) / sqrt(var + eps))`` (:class:`~lymphomil.models.heads.
BNSigmoidMIL`). Choices the report leaves open, made here:

* the weights are normalised to sum to 1 per patient (the report: "weights a_i ≥ 0 (sum all
  to 1)"), so the patient logit is a weighted *mean* of its position logits;
* ``mu``/``var`` are the statistics of all valid logits of the training batch, gradient stopped;
  in eval mode they are running statistics (momentum 0.1, as BatchNorm), so a prediction depends
  on the patient's own images only, never on which patients share its batch.

Two ways to run it, one head:

* ``mil`` (:class:`MILModel`): the head on cached spatial maps (``"map"`` kind) of a frozen
  backbone — fast; channels standardised with the training patients' statistics;
* ``mil-e2e`` (:class:`MILEndToEndModel`): the backbone fine-tuned end to end on the cell
  images (centre crop, random flips); each step decodes its patients' images, sends a random
  subset of ``grad_images`` of them through the backbone with gradients and the rest under
  ``torch.no_grad()`` (:func:`forward_with_subset`), as the report did to fit in memory.

A cell's score (``cell_score``) is the max (default) or mean of its position logits.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lymphomil.features.backbones import create_backbone
from lymphomil.features.preprocess import centre_crop, decode_image, make_preprocess, random_flips
from lymphomil.features.spec import DEFAULT_CROP, DEFAULT_FEATURES
from lymphomil.models.base import register_class, register_model
from lymphomil.models.blocks import freeze_batchnorm, two_group_adam
from lymphomil.models.checks import check_choice, check_float, check_int, make_generator
from lymphomil.models.heads import BNSigmoidMIL
from lymphomil.models.inputs import read_bags
from lymphomil.models.neural import FitState, NeuralPatientModel
from lymphomil.runtime.errors import LymphomilError

CELL_SCORES = ("max", "mean")


def _cell_scores(position_logits: torch.Tensor, how: str) -> np.ndarray:
    """``(n, h, w)`` (or ``(n, h*w)``) position logits -> one score per cell image."""
    flat = position_logits.reshape(position_logits.shape[0], -1)  # (n, h*w)
    scores = flat.amax(dim=1) if how == "max" else flat.mean(dim=1)  # (n,)
    return scores.numpy().astype(np.float64)


def channel_standardizer(maps: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over images and positions, streamed (maps: [(n, d, h, w)])."""
    d = maps[0].shape[1]
    total, sq, count = np.zeros(d), np.zeros(d), 0
    for m in maps:
        m64 = m.astype(np.float64)
        total += m64.sum(axis=(0, 2, 3))
        sq += np.square(m64).sum(axis=(0, 2, 3))
        count += m.shape[0] * m.shape[2] * m.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean**2, 0.0))
    std = np.where(std > 1e-8, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


# =========================================================================== on cached maps


@register_class
class MILModel(NeuralPatientModel):
    """The founding MIL head on cached spatial feature maps of a frozen backbone."""

    family = "mil"
    instance_score_units = "position logit of the cell (max or mean over its map positions)"
    feature_kind = "map"

    def __init__(self, features=DEFAULT_FEATURES, cell_score="max", lr=1e-3,
                 weight_decay=0.0, batch_size=8, max_epochs=40, patience=8,
                 validation_fraction=0.2, balance="weighted", random_state=0):
        self._store_params(locals())

    def _check_params(self) -> None:
        check_choice("cell_score", self.cell_score, CELL_SCORES)

    def _new_net(self) -> BNSigmoidMIL:
        return BNSigmoidMIL(self.n_features_)

    def _fit_inputs(self, patients, train_idx):
        """Channels standardised with the training patients' statistics; each patient's map
        as (positions as rows (n*h*w, d), number of images)."""
        maps = read_bags(patients, self._spec(), self.feature_kind)
        self.n_features_ = int(maps[0].shape[1])
        self.channel_mean_, self.channel_scale_ = channel_standardizer(
            [maps[i] for i in train_idx])
        return [(self._rows(m), len(m)) for m in maps]

    def _inputs(self, patients):
        maps = read_bags(patients, self._spec(), self.feature_kind, self.n_features_)
        return [(self._rows(m), len(m)) for m in maps]

    def _rows(self, m: np.ndarray) -> torch.Tensor:
        """(n, d, h, w) map -> standardised positions as rows (n*h*w, d), image after image."""
        n, d, h, w = m.shape
        rows = np.ascontiguousarray(m.transpose(0, 2, 3, 1)).reshape(n * h * w, d)
        return torch.from_numpy((rows - self.channel_mean_) / self.channel_scale_)  # (n*h*w, d)

    def _batch_logits(self, net: BNSigmoidMIL, state: FitState, units, batch):
        return net.forward_rows([state.inputs[i][0] for i in units[batch]])[0]  # (b,)

    def _patient_output(self, net: BNSigmoidMIL, inputs, i: int) -> tuple[float, np.ndarray]:
        """(P(malignant), per cell image the max or mean of its position logits)."""
        rows, n_images = inputs[i]
        with torch.no_grad():
            logit, _, positions = net.forward_rows([rows])  # (1,), [(n*h*w,)]
        per_image = positions[0].reshape(n_images, -1)  # (n, h*w)
        return float(torch.sigmoid(logit)[0]), _cell_scores(per_image, self.cell_score)

    def _state(self):
        return ({"n_features": self.n_features_},
                {"channel_mean": self.channel_mean_, "channel_scale": self.channel_scale_})

    def _load_state(self, meta, arrays):
        self.n_features_ = int(meta["n_features"])
        self.channel_mean_ = np.asarray(arrays["channel_mean"], dtype=np.float32)
        self.channel_scale_ = np.asarray(arrays["channel_scale"], dtype=np.float32)


@register_model("mil", "founding MIL head (1x1 conv, BN-sigmoid weights) on cached feature maps")
def _mil() -> MILModel:
    return MILModel()


# =========================================================================== end to end


class MILNet(nn.Module):
    """A backbone trunk ``(M, 3, c, c) -> (M, d, h, w)`` followed by the founding MIL head."""

    def __init__(self, backbone: nn.Module, feature_dim: int, channels_last: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = BNSigmoidMIL(feature_dim)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:  # 4-6x faster convolutions on CPU (docs/design.md §3)
            self.backbone.to(memory_format=torch.channels_last)

    def maps(self, x: torch.Tensor, chunk: int) -> torch.Tensor:
        return torch.cat([self.backbone(x[i:i + chunk].contiguous(memory_format=self.memory_format))
                          for i in range(0, x.shape[0], chunk)])  # (M, d, h, w)


def forward_with_subset(net: MILNet, x: torch.Tensor, counts: list[int], n_grad: int,
                        generator: torch.Generator, chunk: int = 64
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Patient logits of a training batch, gradients through ``n_grad`` random images only.

    ``x`` ``(M, 3, c, c)`` holds the batch's images patient after patient (``counts`` per
    patient). A random subset of ``min(n_grad, M)`` images goes through the backbone with
    autograd; the others go through under ``torch.no_grad()`` (no activations kept), and all
    maps rejoin in their original order before the head. Returns (logits (B,), subset indices).
    """
    M = x.shape[0]
    perm = torch.randperm(M, generator=generator)  # (M,)
    grad_idx = perm[:min(n_grad, M)].sort().values  # (k,)
    rest_idx = perm[min(n_grad, M):].sort().values  # (M - k,)
    maps_grad = net.maps(x[grad_idx], chunk)  # (k, d, h, w), with graph
    parts = [(grad_idx, maps_grad)]
    if len(rest_idx):
        with torch.no_grad():
            parts.append((rest_idx, net.maps(x[rest_idx], chunk)))  # (M - k, d, h, w)
    maps = maps_grad.new_zeros((M, *maps_grad.shape[1:]))  # (M, d, h, w)
    for index, part in parts:
        maps = maps.index_copy(0, index, part)  # out of place: gradients reach maps_grad
    logits, _, _ = net.head.forward_images(maps, counts)  # (B,)
    return logits, grad_idx


class _Images:
    """Centre-cropped uint8 cell images of patient ``i`` (``images[i]``), decoded on demand
    (optionally kept)."""

    def __init__(self, patients: np.ndarray, crop: int, keep: bool):
        self.patients, self.crop, self.keep = patients, crop, keep
        self._kept: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.patients)

    def __getitem__(self, i: int) -> torch.Tensor:
        patient = self.patients[i]
        if patient.id in self._kept:
            return self._kept[patient.id]
        if not patient.image_paths:
            raise LymphomilError(f"patient {patient.id} has no cell images",
                                 fix="give the model a cohort read by load_cohort()")
        images = torch.stack([centre_crop(decode_image(path), self.crop).contiguous()
                              for path in patient.image_paths])  # (n, 3, c, c) uint8
        if self.keep:
            self._kept[patient.id] = images
        return images


@register_class
class MILEndToEndModel(NeuralPatientModel):
    """The founding MIL model fine-tuned end to end from the cell images (report §3.2.2)."""

    family = "mil-e2e"
    instance_score_units = "position logit of the cell (max or mean over its map positions)"

    def __init__(self, backbone="efficientnet-lite0", weights="imagenet", crop=DEFAULT_CROP,
                 grad_images=32, batch_size=2, lr=1e-3, backbone_lr=None, weight_decay=0.0,
                 flips=True, freeze_bn=True, max_epochs=10, patience=3,
                 validation_fraction=0.2, balance="weighted", cell_score="max",
                 cache_images=True, chunk_size=64, channels_last=True, random_state=0):
        self._store_params(locals())

    def required_features(self):
        return []  # reads the cell images themselves

    @property
    def _description(self) -> str:
        return f"{self.family} {self.backbone}"

    def _check_params(self) -> None:
        check_int("crop", self.crop, 8)
        if self.crop > 224:
            raise LymphomilError(f"crop={self.crop} is larger than the 224 px images",
                                 fix="use a crop between 8 and 224")
        check_int("grad_images", self.grad_images)
        if self.backbone_lr is not None:
            check_float("backbone_lr", self.backbone_lr, 0.0)
        check_choice("cell_score", self.cell_score, CELL_SCORES)
        check_int("chunk_size", self.chunk_size)

    def _fit_inputs(self, patients, train_idx):
        return _Images(patients, self.crop, bool(self.cache_images))

    def _inputs(self, patients):
        return _Images(patients, self.crop, keep=False)

    @property
    def _preprocess(self):
        return make_preprocess(self.crop, self.norm_mean_, self.norm_std_)

    def _new_net(self) -> MILNet:
        """The backbone with its pretrained weights, every parameter trainable, and the head."""
        bb = create_backbone(self.backbone, self.weights)
        self.feature_dim_ = int(bb.feature_dim)
        self.norm_mean_, self.norm_std_ = tuple(bb.mean), tuple(bb.std)
        self.weights_digest_ = bb.weights_digest
        net = MILNet(bb.model, self.feature_dim_, bool(self.channels_last))
        for p in net.parameters():
            p.requires_grad_(True)
        return net

    def _restored_net(self) -> MILNet:
        bb = create_backbone(self.backbone, "none")  # architecture only: the weights follow
        return MILNet(bb.model, self.feature_dim_, bool(self.channels_last)).requires_grad_(False)

    def _optimizer(self, net: MILNet) -> torch.optim.Optimizer:
        return two_group_adam(net.head.parameters(), net.backbone, self.lr, self.backbone_lr,
                              self.weight_decay)

    def _epoch_units(self, net: MILNet, state: FitState, epoch: int):
        if self.freeze_bn:
            freeze_batchnorm(net.backbone)
        if not state.extra:
            state.extra.update(preprocess=self._preprocess, flips=make_generator(state.seed, 2),
                               subset=make_generator(state.seed, 3))
        return super()._epoch_units(net, state, epoch)

    def _batch_logits(self, net: MILNet, state: FitState, units, batch):
        raw = [state.inputs[i] for i in units[batch]]  # [(n_b, 3, c, c) uint8]
        x = state.extra["preprocess"](torch.cat(raw))  # (M, 3, c, c)
        if self.flips:
            x = random_flips(x, state.extra["flips"])  # (M, 3, c, c)
        return forward_with_subset(net, x, [len(r) for r in raw], self.grad_images,
                                   state.extra["subset"], self.chunk_size)[0]  # (b,)

    def _patient_output(self, net: MILNet, inputs, i: int) -> tuple[float, np.ndarray]:
        """(P(malignant), per cell image the max or mean of its position logits)."""
        raw = inputs[i]
        with torch.no_grad():
            maps = net.maps(self._preprocess(raw), self.chunk_size)  # (n, d, h, w)
            logit, _, positions = net.head.forward_images(maps, [len(raw)])  # (1,)
        return float(torch.sigmoid(logit)[0]), _cell_scores(positions, self.cell_score)

    def _after_fit(self, state: FitState) -> None:
        self.net_.requires_grad_(False)

    def _state(self):
        return ({"feature_dim": self.feature_dim_, "norm_mean": list(self.norm_mean_),
                 "norm_std": list(self.norm_std_), "weights_digest": self.weights_digest_}, {})

    def _load_state(self, meta, arrays):
        self.feature_dim_ = int(meta["feature_dim"])
        self.norm_mean_ = tuple(float(v) for v in meta["norm_mean"])
        self.norm_std_ = tuple(float(v) for v in meta["norm_std"])
        self.weights_digest_ = meta.get("weights_digest", "")


@register_model("mil-e2e", "founding MIL model fine-tuned end to end (EfficientNet-Lite0, 112 px)")
def _mil_e2e() -> MILEndToEndModel:
    return MILEndToEndModel()
