"""ResNet-50-thin (Caffe "ResNet-50 1by2") rebuilt in PyTorch from the Open-NSFW ONNX weights.

docs/design.md §3 measured these features as the best partner of the patient attributes, but the
package only ships an ONNX graph (NHWC, fp32, one fixed 224 px input, a 2-way classifier).
Rebuilding the network here gives it the same interface as every other backbone: any crop size, a
spatial map, bf16 and channels-last, and gradients for fine-tuning. Each convolution's bias and its
frozen batch-norm (exported as Sub/Mul/Add constants) are folded into the convolution itself.

The layout is the Caffe one: the stride sits on the first 1x1 convolution of a bottleneck, a
projection shortcut opens every stage, the stem pads 3 pixels, the max-pool pads
TensorFlow-"SAME" style (as the graph does).
:func:`resnet50_thin_from_onnx` checks every weight shape against that layout, so a different
graph fails loudly instead of giving silent garbage.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lymphomil.features.onnx_weights import OnnxGraph, read_onnx

STAGES = (3, 4, 6, 3)  # bottleneck blocks per stage
WIDTHS = (32, 64, 128, 256)  # bottleneck (mid) widths; outputs are 4x
STEM = 64
#: Caffe BGR means on the 0..255 scale (the graph's own preprocessing)
BGR_MEAN = (104.0, 117.0, 123.0)


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SamePad(nn.Module):
    """TensorFlow "SAME" zero padding for a given kernel and stride (depends on the input size)."""

    def __init__(self, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = _same_pad(x.shape[-2], self.kernel, self.stride)
        left, right = _same_pad(x.shape[-1], self.kernel, self.stride)
        return F.pad(x, (left, right, top, bottom))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int, project: bool):
        super().__init__()
        self.conv_a = nn.Conv2d(cin, mid, 1, stride=stride)
        self.conv_b = nn.Conv2d(mid, mid, 3, padding=1)
        self.conv_c = nn.Conv2d(mid, mid * 4, 1)
        self.shortcut = nn.Conv2d(cin, mid * 4, 1, stride=stride) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv_a(x))
        out = F.relu(self.conv_b(out))
        out = self.conv_c(out)
        skip = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + skip)


class ResNet50Thin(nn.Module):
    """(B, 3, H, W) BGR, mean-subtracted 0..255 -> (B, 1024, H/32, W/32) feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, STEM, 7, stride=2, padding=3), nn.ReLU(),
                                  SamePad(3, 2), nn.MaxPool2d(3, stride=2))
        blocks, cin = [], STEM
        for stage, (count, mid) in enumerate(zip(STAGES, WIDTHS)):
            for index in range(count):
                stride = 2 if (stage > 0 and index == 0) else 1
                blocks.append(Bottleneck(cin, mid, stride, project=index == 0))
                cin = mid * 4
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(cin, 2)  # kept so the graph's logits can be checked
        self.num_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))  # (B, 1024, h, w)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward(x).mean((2, 3)))  # (B, 2)


class RGBToCaffe(nn.Module):
    """Undo the shared RGB normalisation's channel order: Caffe models read BGR."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(1)  # (B, 3, H, W) RGB -> BGR


# --------------------------------------------------------------------------- weight folding


def _is_const(graph: OnnxGraph, name: str, aliases: dict[str, str]) -> bool:
    return aliases.get(name, name) in graph.initializers


def _conv_chains(graph: OnnxGraph) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every Conv in graph order as (folded weight, folded bias)."""
    aliases = {n.outputs[0]: n.inputs[0] for n in graph.nodes
               if n.op == "Identity" and n.inputs[0] in graph.initializers}
    consumers = graph.consumers()
    const = lambda name: graph.initializers[aliases.get(name, name)]  # noqa: E731
    out = []
    for node in graph.nodes:
        if node.op != "Conv":
            continue
        if node.attrs.get("group", 1) != 1:
            raise ValueError("grouped convolutions are not part of ResNet-50-thin")
        weight = const(node.inputs[1]).astype(np.float64)  # (C_out, C_in, k, k)
        channels = weight.shape[0]
        scale = np.ones(channels)
        shift = np.zeros(channels)
        if len(node.inputs) > 2 and node.inputs[2]:
            shift = const(node.inputs[2]).astype(np.float64).reshape(-1)
        name = node.outputs[0]
        while True:
            nexts = consumers.get(name, [])
            if len(nexts) != 1:
                break
            follower = nexts[0]
            if follower.op in ("Transpose", "Cast", "Identity"):
                name = follower.outputs[0]
                continue
            others = [i for i in follower.inputs if i != name]
            if follower.op not in ("Add", "Sub", "Mul") or len(others) != 1 \
                    or not _is_const(graph, others[0], aliases):
                break
            value = const(others[0]).astype(np.float64).reshape(-1)
            if follower.op == "Add":
                shift = shift + value
            elif follower.op == "Sub":
                shift = shift - value
            else:
                scale, shift = scale * value, shift * value
            name = follower.outputs[0]
        out.append(((weight * scale[:, None, None, None]).astype(np.float32),
                    shift.astype(np.float32)))
    return out


def resnet50_thin_from_onnx(path: str | Path) -> ResNet50Thin:
    """Build :class:`ResNet50Thin` with the ONNX file's weights (shape-checked, BN folded)."""
    graph = read_onnx(path)
    convs = iter(_conv_chains(graph))
    model = ResNet50Thin()

    def take(conv: nn.Conv2d) -> None:
        weight, bias = next(convs)
        if tuple(weight.shape) != tuple(conv.weight.shape):
            raise ValueError(f"ONNX conv weight {weight.shape} does not fit "
                             f"{tuple(conv.weight.shape)}")
        conv.weight.data.copy_(torch.from_numpy(weight))
        conv.bias.data.copy_(torch.from_numpy(bias))

    take(model.stem[0])
    for block in model.blocks:
        # graph order: a, b, (projection), c
        take(block.conv_a)
        take(block.conv_b)
        if block.shortcut is not None:
            take(block.shortcut)
        take(block.conv_c)
    if next(convs, None) is not None:
        raise ValueError("the ONNX graph has more convolutions than ResNet-50-thin")
    matmul = next(n for n in graph.nodes if n.op == "MatMul")
    fc_weight = graph.initializers[matmul.inputs[1]]  # (1024, 2)
    consumers, name = graph.consumers(), matmul.outputs[0]
    while consumers[name][0].op in ("Cast", "Identity"):
        name = consumers[name][0].outputs[0]
    add = consumers[name][0]
    fc_bias = graph.initializers[next(i for i in add.inputs if i != name)]  # (2,)
    model.classifier.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(fc_weight.T)))
    model.classifier.bias.data.copy_(torch.from_numpy(fc_bias))
    return model.eval()
