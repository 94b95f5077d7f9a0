"""A FeatureSpec's text names every option of `lymphomil features`, and reads back to itself."""

from __future__ import annotations

import itertools

import pytest

from lymphomil.features.spec import DEFAULT_CROP, FeatureSpec
from lymphomil.features.weights import BUILTIN_BACKBONES
from lymphomil.models.base import create_model
from lymphomil.runtime.errors import LymphomilError


@pytest.mark.parametrize("backbone", BUILTIN_BACKBONES)
def test_every_option_round_trips(backbone: str) -> None:
    for weights, crop, tta, precision in itertools.product(
            ("imagenet", "none", "/weights/my r18@v2.pt"), (DEFAULT_CROP, 64, 224),
            (False, True), ("fp32", "bf16")):
        spec = FeatureSpec(backbone, weights, crop, tta, precision)
        assert FeatureSpec.parse(spec.label()) == spec, spec.label()


def test_the_short_forms_mean_the_defaults() -> None:
    assert FeatureSpec.parse("efficientnet-lite0@112") == FeatureSpec()
    assert FeatureSpec.parse("resnet50-thin") == FeatureSpec("resnet50-thin")
    assert FeatureSpec().label() == "efficientnet-lite0@112"  # defaults stay unwritten
    assert FeatureSpec.parse("dinov2-s@224+tta").label() == "dinov2-s@224+tta"


def test_a_model_can_read_bf16_features_made_from_a_weights_file() -> None:
    model = create_model("image-logreg", features="resnet18:/w/r18.pt@112+bf16")
    (spec, kind), = model.required_features()
    assert (spec.weights, spec.precision, spec.crop, kind) == ("/w/r18.pt", "bf16", 112, "pooled")


@pytest.mark.parametrize("bad", ["resnet18@abc", "resnet18@112+fp16", "resnet18@112+tta+x"])
def test_a_malformed_spec_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        FeatureSpec.parse(bad)
    with pytest.raises(LymphomilError, match="BACKBONE"):
        create_model("image-logreg", features=bad).required_features()
