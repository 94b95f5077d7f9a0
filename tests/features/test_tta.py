"""Test-time augmentation = the 8 dihedral views; pooled features through the backbone's own
pooling (dinov2-s: CLS + mean patch token) in the extractor and the cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from lymphomil.data.cohort import load_cohort
from lymphomil.data.synth import write_synthetic_cohort
from lymphomil.features import FeatureCache, FeatureSpec
from lymphomil.features.backbones import create_backbone
from lymphomil.features.cache import SUFFIX
from lymphomil.features.preprocess import (
    TTA_VIEWS,
    centre_crop,
    decode_image,
    flip_view,
    make_preprocess,
)

TTA = FeatureSpec(backbone="small-cnn", weights="none", crop=64, tta=True, precision="fp32")


@pytest.fixture
def patients(tmp_path: Path) -> list:
    root = write_synthetic_cohort(tmp_path / "cohort", n_patients=2, seed=3,
                                  images_per_patient=(3, 5))
    return load_cohort(root).patients


def _inputs(patient, crop: int, backbone) -> torch.Tensor:
    images = torch.stack([centre_crop(decode_image(p), crop) for p in patient.image_paths])
    return make_preprocess(crop, backbone.mean, backbone.std)(images)  # (n, 3, c, c)


def _dihedral_by_hand(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 symmetries of the square, written independently of flip_view: 4 rotations, each
    with and without a mirror."""
    out = []
    for k in range(4):
        turned = torch.rot90(x, k, dims=(-2, -1))
        out += [turned, turned.flip(-1)]
    return out


def test_the_eight_views_are_the_dihedral_group() -> None:
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    ours = [flip_view(x, v) for v in TTA_VIEWS]
    hand = _dihedral_by_hand(x)
    assert len(TTA_VIEWS) == 8 and TTA_VIEWS[0] == "none"
    key = lambda t: tuple(t.flatten().tolist())  # noqa: E731
    assert {key(t) for t in ours} == {key(t) for t in hand}
    assert len({key(t) for t in ours}) == 8
    with pytest.raises(ValueError, match="unknown view"):
        flip_view(x, "tt")


def test_tta_pooled_is_the_mean_of_the_8_transformed_images(patients, tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "cache", workers=1)
    cache.ensure(patients, TTA)
    backbone = create_backbone("small-cnn", "none")
    for patient in patients:
        x = _inputs(patient, TTA.crop, backbone)
        with torch.inference_mode():
            by_view = torch.stack([backbone.pooled(v) for v in _dihedral_by_hand(x)])  # (8, n, d)
        expected = by_view.mean(dim=0).numpy()
        pooled = cache.load(patient, TTA)  # (n, d)
        assert pooled.shape == expected.shape
        np.testing.assert_allclose(pooled, expected, rtol=1e-4, atol=1e-5)
        # the 8 views matter: the mean of the 4 flips alone is another number
        flips_only = by_view[[0, 1, 4, 5]].mean(dim=0).numpy()  # k = 0 and 2, mirrored or not
        assert np.abs(flips_only - expected).max() > 1e-3
        views = cache.load(patient, TTA, "views")  # (8, n, d), the plain view first
        assert views.shape == (8, *expected.shape)
        np.testing.assert_allclose(views[0], by_view[0].numpy(), rtol=1e-4, atol=1e-5)


def test_four_view_files_of_before_are_not_read_as_eight(patients, tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "cache", workers=1)
    cache.ensure(patients, TTA)
    eight = sorted(cache.root.rglob(f"*.views8{SUFFIX}"))
    assert len(eight) == len(patients) and not list(cache.root.rglob(f"*.views{SUFFIX}"))
    for path in eight:  # what the 4-view version named its files
        path.rename(path.with_name(path.name.replace(".views8.", ".views.")))
    again = FeatureCache(tmp_path / "cache", workers=1)
    again.ensure(patients, TTA)
    assert again.last_run["computed_patients"] == len(patients)
    plain = dataclasses.replace(TTA, tta=False)
    again.ensure(patients, plain)  # the plain view is its own file: still a hit
    assert again.last_run["computed_patients"] == 0


def test_dinov2_features_through_the_cache(patients, tmp_path: Path) -> None:
    """dinov2-s@112: pooled (n, 768) = [CLS, mean patch] as the backbone gives it (the extractor's
    packed fp32 copy agrees to 1e-4), map (n, 384, 8, 8) whose mean is the pooled second half."""
    spec = FeatureSpec.parse("dinov2-s@112")
    assert (spec.backbone, spec.crop, spec.tta, spec.precision) == ("dinov2-s", 112, False, "fp32")
    patient = patients[0]
    cache = FeatureCache(tmp_path / "cache", workers=1)
    cache.ensure([patient], spec, kinds=("pooled", "map"))
    pooled, fmap = cache.load(patient, spec), cache.load(patient, spec, "map")
    n = patient.n_images
    assert pooled.shape == (n, 768) and fmap.shape == (n, 384, 8, 8)
    backbone = create_backbone("dinov2-s", "imagenet")
    with torch.inference_mode():
        expected = backbone.pooled(_inputs(patient, 112, backbone)).numpy()
    np.testing.assert_allclose(pooled, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fmap.mean(axis=(2, 3)), pooled[:, 384:], rtol=1e-2, atol=2e-3)
    info = cache.info()["specs"][0]
    assert info["backbone"] == "dinov2-s" and info["crop"] == 112
    assert info["weights_digest"] == backbone.weights_digest[:16]
