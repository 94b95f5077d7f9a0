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

from lymphomil.errors import LymphomilError
from lymphomil.models.base import PatientModel, register_class, register_model
from lymphomil.models.heads import BNSigmoidMIL
from lymphomil.models.training import (BALANCE, NeuralFeatureModel, check_choice, check_float,
                                       check_int, check_patients, check_patients_y, chunks,
                                       class_weights, epoch_order, fit_loop, inner_split,
                                       load_module_arrays, make_generator, module_arrays,
                                       read_bags, resolve_seed, score_validation, seeded,
                                       optimise_step)

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
class MILModel(NeuralFeatureModel, PatientModel):
    """The founding MIL head on cached spatial feature maps of a frozen backbone."""

    family = "mil"
    instance_score_units = "position logit of the cell (max or mean over its map positions)"
    feature_kind = "map"

    def __init__(self, features="efficientnet-lite0@112", cell_score="max", lr=1e-3,
                 weight_decay=0.0, batch_size=8, max_epochs=40, patience=8,
                 validation_fraction=0.2, balance="weighted", random_state=0):
        self.features = features
        self.cell_score = cell_score
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.balance = balance
        self.random_state = random_state

    def fit(self, patients, y):
        patients, y = check_patients_y(patients, y)
        self._check_training_params()
        check_choice("cell_score", self.cell_score, CELL_SCORES)
        maps = read_bags(patients, self._spec(), self.feature_kind)
        seed = resolve_seed(self.random_state)
        train_idx, val_idx = inner_split(y, self.validation_fraction, seed)
        self.n_features_ = int(maps[0].shape[1])
        self.channel_mean_, self.channel_scale_ = channel_standardizer(
            [maps[i] for i in train_idx])
        rows = [self._rows(m) for m in maps]  # standardised once: [(n_i*h*w, d)]
        n_images = [len(m) for m in maps]
        del maps
        y_train = y[train_idx]
        weights = torch.from_numpy(class_weights(y_train, self.balance))  # (2,)

        with seeded(seed):
            net = BNSigmoidMIL(self.n_features_)
            optimizer = torch.optim.Adam(net.parameters(), lr=self.lr,
                                         weight_decay=self.weight_decay)
            generator = make_generator(seed, 1)

            def train_epoch(epoch: int) -> float:
                total, seen = 0.0, 0
                for batch in chunks(epoch_order(y_train, self.balance, generator),
                                    self.batch_size):
                    members = train_idx[batch]
                    logits, _, _ = net.forward_rows([rows[i] for i in members])  # (b,)
                    t = torch.from_numpy(y[members]).float()  # (b,)
                    total += optimise_step(optimizer, logits, t,
                                           weights if self.balance == "weighted" else None)
                    seen += len(members)
                return total / max(seen, 1)

            def validate() -> tuple[float, float]:
                p = [self._forward_one(net, rows[i], n_images[i])[0] for i in val_idx]
                return score_validation(y[val_idx], np.array(p))

            history, best = fit_loop(net, train_epoch=train_epoch,
                                     validate=validate if len(val_idx) else None,
                                     max_epochs=self.max_epochs, patience=self.patience,
                                     description="mil")
        self.net_ = net
        self.history_, self.best_epoch_, self.seed_ = history, best, seed
        self.classes_ = np.array([0, 1])
        self.is_fitted_ = True
        return self

    def _rows(self, m: np.ndarray) -> torch.Tensor:
        """(n, d, h, w) map -> standardised positions as rows (n*h*w, d), image after image."""
        n, d, h, w = m.shape
        rows = np.ascontiguousarray(m.transpose(0, 2, 3, 1)).reshape(n * h * w, d)
        return torch.from_numpy((rows - self.channel_mean_) / self.channel_scale_)  # (n*h*w, d)

    def _forward_one(self, net: BNSigmoidMIL, rows: torch.Tensor, n_images: int
                     ) -> tuple[float, np.ndarray]:
        """One patient alone, eval mode: (P(malignant), cell scores (n,))."""
        with torch.no_grad():
            logit, _, positions = net.forward_rows([rows])  # (1,), [(n*h*w,)]
        per_image = positions[0].reshape(n_images, -1)  # (n, h*w)
        return float(torch.sigmoid(logit)[0]), _cell_scores(per_image, self.cell_score)

    def _outputs(self, patients) -> list[tuple[float, np.ndarray]]:
        self._check_fitted()
        maps = read_bags(check_patients(patients), self._spec(), self.feature_kind,
                         self.n_features_)
        self.net_.eval()
        return [self._forward_one(self.net_, self._rows(m), len(m)) for m in maps]

    def predict_proba(self, patients):
        p1 = np.array([p for p, _ in self._outputs(patients)])
        return np.column_stack([1 - p1, p1])

    def instance_scores(self, patients):
        """Per cell image, the max (or mean) of its position logits."""
        return [s for _, s in self._outputs(patients)]

    def _get_state(self):
        meta = {"n_features": self.n_features_, **self._loop_meta()}
        arrays = {"channel_mean": self.channel_mean_, "channel_scale": self.channel_scale_,
                  **module_arrays(self.net_)}
        return meta, arrays

    def _set_state(self, meta, arrays):
        self.n_features_ = int(meta["n_features"])
        self._set_loop_meta(meta)
        self.channel_mean_ = np.asarray(arrays["channel_mean"], dtype=np.float32)
        self.channel_scale_ = np.asarray(arrays["channel_scale"], dtype=np.float32)
        self.net_ = BNSigmoidMIL(self.n_features_)
        load_module_arrays(self.net_, arrays)
        self.net_.eval()
        self.classes_ = np.array([0, 1])


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
        if channels_last:  # 4-6x faster convolutions on CPU (DESIGN §3)
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
    """Centre-cropped uint8 cell images per patient, decoded on demand (optionally kept)."""

    def __init__(self, crop: int, keep: bool):
        self.crop, self.keep = crop, keep
        self._kept: dict[str, torch.Tensor] = {}

    def __call__(self, patient) -> torch.Tensor:
        from lymphomil.features.preprocess import centre_crop, decode_image

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


def _freeze_batchnorm(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@register_class
class MILEndToEndModel(PatientModel):
    """The founding MIL model fine-tuned end to end from the cell images (report §3.2.2)."""

    family = "mil"
    instance_score_units = "position logit of the cell (max or mean over its map positions)"

    def __init__(self, backbone="efficientnet-lite0", weights="imagenet", crop=112,
                 grad_images=32, batch_size=2, lr=1e-3, backbone_lr=None, weight_decay=0.0,
                 flips=True, freeze_bn=True, max_epochs=10, patience=3,
                 validation_fraction=0.2, balance="weighted", cell_score="max",
                 cache_images=True, chunk_size=64, channels_last=True, random_state=0):
        self.backbone = backbone
        self.weights = weights
        self.crop = crop
        self.grad_images = grad_images
        self.batch_size = batch_size
        self.lr = lr
        self.backbone_lr = backbone_lr
        self.weight_decay = weight_decay
        self.flips = flips
        self.freeze_bn = freeze_bn
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.balance = balance
        self.cell_score = cell_score
        self.cache_images = cache_images
        self.chunk_size = chunk_size
        self.channels_last = channels_last
        self.random_state = random_state

    def required_features(self):
        return []  # reads the cell images themselves

    def _check_params(self) -> None:
        check_int("crop", self.crop, 8)
        if self.crop > 224:
            raise LymphomilError(f"crop={self.crop} is larger than the 224 px images",
                                 fix="use a crop between 8 and 224")
        check_int("grad_images", self.grad_images)
        check_int("batch_size", self.batch_size)
        check_float("lr", self.lr, 0.0, low_open=True)
        if self.backbone_lr is not None:
            check_float("backbone_lr", self.backbone_lr, 0.0)
        check_float("weight_decay", self.weight_decay, 0.0)
        check_int("max_epochs", self.max_epochs)
        check_int("patience", self.patience)
        check_float("validation_fraction", self.validation_fraction, 0.0, 0.5)
        check_choice("balance", self.balance, BALANCE)
        check_choice("cell_score", self.cell_score, CELL_SCORES)
        check_int("chunk_size", self.chunk_size)

    def fit(self, patients, y):
        from lymphomil.features.backbones import create_backbone
        from lymphomil.features.preprocess import make_preprocess, random_flips

        patients, y = check_patients_y(patients, y)
        self._check_params()
        seed = resolve_seed(self.random_state)
        train_idx, val_idx = inner_split(y, self.validation_fraction, seed)
        y_train = y[train_idx]
        weights = torch.from_numpy(class_weights(y_train, self.balance))  # (2,)
        images = _Images(self.crop, bool(self.cache_images))

        with seeded(seed):
            bb = create_backbone(self.backbone, self.weights)
            self.feature_dim_ = int(bb.feature_dim)
            self.norm_mean_, self.norm_std_ = tuple(bb.mean), tuple(bb.std)
            self.weights_digest_ = bb.weights_digest
            preprocess = make_preprocess(self.crop, bb.mean, bb.std)
            net = MILNet(bb.model, self.feature_dim_, bool(self.channels_last))
            for p in net.parameters():
                p.requires_grad_(True)
            backbone_lr = self.lr if self.backbone_lr is None else self.backbone_lr
            groups = [{"params": net.head.parameters(), "lr": self.lr}]
            if backbone_lr > 0:
                groups.append({"params": net.backbone.parameters(), "lr": backbone_lr})
            else:
                net.backbone.requires_grad_(False)
            optimizer = torch.optim.Adam(groups, lr=self.lr, weight_decay=self.weight_decay)
            order_gen, flip_gen, subset_gen = (make_generator(seed, s) for s in (1, 2, 3))

            def train_epoch(epoch: int) -> float:
                if self.freeze_bn:
                    _freeze_batchnorm(net.backbone)
                total, seen = 0.0, 0
                for batch in chunks(epoch_order(y_train, self.balance, order_gen),
                                    self.batch_size):
                    rows = train_idx[batch]
                    raw = [images(patients[i]) for i in rows]  # [(n_b, 3, c, c) uint8]
                    x = preprocess(torch.cat(raw))  # (M, 3, c, c)
                    if self.flips:
                        x = random_flips(x, flip_gen)  # (M, 3, c, c)
                    logits, _ = forward_with_subset(net, x, [len(r) for r in raw],
                                                    self.grad_images, subset_gen,
                                                    self.chunk_size)  # (b,)
                    t = torch.from_numpy(y[rows]).float()  # (b,)
                    total += optimise_step(optimizer, logits, t,
                                           weights if self.balance == "weighted" else None)
                    seen += len(rows)
                return total / max(seen, 1)

            def validate() -> tuple[float, float]:
                p = [self._forward_one(net, preprocess, images(patients[i]))[0] for i in val_idx]
                return score_validation(y[val_idx], np.array(p))

            history, best = fit_loop(net, train_epoch=train_epoch,
                                     validate=validate if len(val_idx) else None,
                                     max_epochs=self.max_epochs, patience=self.patience,
                                     description=f"mil-e2e {self.backbone}")
        net.requires_grad_(False)
        self.net_ = net
        self.history_, self.best_epoch_, self.seed_ = history, best, seed
        self.classes_ = np.array([0, 1])
        self.is_fitted_ = True
        return self

    def _forward_one(self, net: MILNet, preprocess, raw: torch.Tensor
                     ) -> tuple[float, np.ndarray]:
        """One patient alone, eval mode: (P(malignant), cell scores (n,))."""
        with torch.no_grad():
            maps = net.maps(preprocess(raw), self.chunk_size)  # (n, d, h, w)
            logit, _, positions = net.head.forward_images(maps, [len(raw)])  # (1,)
        return float(torch.sigmoid(logit)[0]), _cell_scores(positions, self.cell_score)

    def _outputs(self, patients) -> list[tuple[float, np.ndarray]]:
        from lymphomil.features.preprocess import make_preprocess

        self._check_fitted()
        preprocess = make_preprocess(self.crop, self.norm_mean_, self.norm_std_)
        images = _Images(self.crop, keep=False)
        self.net_.eval()
        return [self._forward_one(self.net_, preprocess, images(p))
                for p in check_patients(patients)]

    def predict_proba(self, patients):
        p1 = np.array([p for p, _ in self._outputs(patients)])
        return np.column_stack([1 - p1, p1])

    def instance_scores(self, patients):
        """Per cell image, the max (or mean) of its position logits."""
        return [s for _, s in self._outputs(patients)]

    def _get_state(self):
        meta = {"feature_dim": self.feature_dim_, "norm_mean": list(self.norm_mean_),
                "norm_std": list(self.norm_std_), "weights_digest": self.weights_digest_,
                "history": self.history_, "best_epoch": int(self.best_epoch_),
                "seed": int(self.seed_)}
        return meta, module_arrays(self.net_)

    def _set_state(self, meta, arrays):
        from lymphomil.features.backbones import create_backbone

        self.feature_dim_ = int(meta["feature_dim"])
        self.norm_mean_ = tuple(float(v) for v in meta["norm_mean"])
        self.norm_std_ = tuple(float(v) for v in meta["norm_std"])
        self.weights_digest_ = meta.get("weights_digest", "")
        self.history_ = list(meta.get("history", []))
        self.best_epoch_ = int(meta.get("best_epoch", 0))
        self.seed_ = int(meta.get("seed", 0))
        bb = create_backbone(self.backbone, "none")  # architecture only: the weights follow
        self.net_ = MILNet(bb.model, self.feature_dim_, bool(self.channels_last))
        load_module_arrays(self.net_, arrays)
        self.net_.requires_grad_(False)
        self.net_.eval()
        self.classes_ = np.array([0, 1])


@register_model("mil-e2e", "founding MIL model fine-tuned end to end (EfficientNet-Lite0, 112 px)")
def _mil_e2e() -> MILEndToEndModel:
    return MILEndToEndModel()
