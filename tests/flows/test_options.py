"""--features takes every form of a feature spec that `lymphomil features` can make."""

from __future__ import annotations

import pytest

from lymphomil.features.spec import FeatureSpec
from lymphomil.flows.options import check_features_option
from lymphomil.runtime.errors import LymphomilError


@pytest.mark.parametrize("text", ["small-cnn@48", "small-cnn:none@48", "small-cnn:none@48+bf16",
                                  "small-cnn:/w/cnn.pt@112+tta+bf16", "efficientnet-lite0@112+tta",
                                  "small-cnn"])
def test_every_spec_form_is_accepted(text: str) -> None:
    assert check_features_option(text) == text
    FeatureSpec.parse(text)  # and a model reads the same text


@pytest.mark.parametrize("text, message", [
    ("nope@112", "unknown backbone 'nope'"),
    ("nope:none@112", "unknown backbone 'nope'"),
    ("small-cnn@abc", "the crop 'abc' is not a number"),
    ("small-cnn@5000", "crop 5000 is out of range"),
    ("small-cnn:none@48+fast", r"unknown option\(s\) \+fast"),
])
def test_bad_specs_are_refused_with_the_part_named(text: str, message: str) -> None:
    with pytest.raises(LymphomilError, match=message):
        check_features_option(text)


def test_a_torchvision_backbone_without_its_extra_is_refused(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if not installed
    with pytest.raises(LymphomilError, match=r'pip install "lymphomil\[torchvision\]"'):
        check_features_option("resnet18@112")
