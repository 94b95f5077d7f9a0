"""A backbone cut before its last stage: the frozen *front* (cached) and the trainable *tail*.

Partial fine-tuning on 2 CPU cores (issue 18): the front of a backbone runs once per image and
its output — the ``"trunk"`` feature kind, ``(n, d, h, w)`` per patient, float16 on disk — is
stored in the content-addressed feature cache like ``pooled`` and ``map``; a model then trains
only the tail (the last stage, the 1×1 head convolution and its norm) and a MIL head from the
cache. ``tail(front(x))`` is exactly the backbone's map ``model(x)``: the same modules called in
the same order.

Where each backbone is cut (:data:`TRUNK_CUTS`), at 112 px:

* ``efficientnet-lite0``: front = stem + blocks 0–14 (output 192×4×4, stride 32); tail = the
  last block (stage 6, one MBConv, 192→320) + ``_conv_head`` (320→1280) + ``_bn1`` + ReLU6 —
  0.6 M of the 3.4 M trunk parameters, ≈ 16 M of ≈ 100 M multiply-adds an image;
* ``mobilenet-v2``: front = ``features[:14]`` (96×7×7); tail = the 160- and 320-channel stages
  and the last 1×1 convolution;
* ``resnet18`` / ``resnet34`` / ``resnet50``: front = up to ``layer3``; tail = ``layer4``;
* ``small-cnn``: front = its first three conv stages; tail = the fourth.

``split_trunk(name, model)`` works on ``Backbone.model`` and on the extractor's inference copy
(BatchNorm folded): it selects sub-modules by name, so the parts share the given model's
parameters.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lymphomil.features.backbones import create_backbone
from lymphomil.runtime.errors import LymphomilError


class Tail(nn.Module):
    """The trainable part: ``(M, d_trunk, h, w) -> (M, d, h', w')`` (the backbone's map)."""

    def __init__(self, *parts: nn.Module):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            x = part(x)
        return x


def _lite0(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    net = model.net  # backbones._Lite0Trunk -> efficientnet_lite_pytorch.EfficientNet
    front = nn.Sequential(net._conv_stem, net._bn0, net._swish, *list(net._blocks)[:-1])
    return front, Tail(net._blocks[-1], net._conv_head, net._bn1, net._swish)


def _mobilenet_v2(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    layers = list(model.children()) if not hasattr(model, "features") else list(model.features)
    return nn.Sequential(*layers[:14]), Tail(*layers[14:])


def _sequential_last(n_tail: int) -> Callable[[nn.Module], tuple[nn.Module, nn.Module]]:
    def split(model: nn.Module) -> tuple[nn.Module, nn.Module]:
        layers = list(model.features if hasattr(model, "features") else model)
        return nn.Sequential(*layers[:-n_tail]), Tail(*layers[-n_tail:])

    return split


#: backbone name -> splitter of its ``Backbone.model`` into (front, tail)
TRUNK_CUTS: dict[str, Callable[[nn.Module], tuple[nn.Module, nn.Module]]] = {
    "efficientnet-lite0": _lite0,
    "mobilenet-v2": _mobilenet_v2,
    "resnet18": _sequential_last(1),  # torchvision trunk: conv1..layer3 | layer4
    "resnet34": _sequential_last(1),
    "resnet50": _sequential_last(1),
    "small-cnn": _sequential_last(4),  # conv, bn, relu, pool of the last stage
}


def check_trunk_backbone(name: str) -> None:
    if name not in TRUNK_CUTS:
        raise LymphomilError(f"backbone {name!r} has no trunk cut (the 'trunk' feature kind)",
                             fix=f"use one of: {', '.join(sorted(TRUNK_CUTS))}")


def split_trunk(name: str, model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(front, tail) of backbone ``name``'s ``model``, sharing its parameters."""
    check_trunk_backbone(name)
    return TRUNK_CUTS[name](model)


def trunk_tail(name: str, weights: str) -> tuple[nn.Module, int, tuple, tuple, str]:
    """A fresh copy of backbone ``name``'s tail with ``weights``: (tail, map channels d,
    normalisation mean, std, weights digest). The front is dropped (it lives in the cache)."""
    check_trunk_backbone(name)
    bb = create_backbone(name, weights)
    _, tail = split_trunk(name, bb.model)
    return tail, int(bb.feature_dim), tuple(bb.mean), tuple(bb.std), bb.weights_digest
