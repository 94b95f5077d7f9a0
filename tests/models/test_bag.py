"""Many-to-one model: fixed-size bags of cells, pooled, MLP; bag probabilities averaged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lymphomil.models.bag import BagModel, inference_bags, training_bags
from lymphomil.models.base import create_model
from lymphomil.models.heads import BAG_POOLINGS, PoolingMIL
from lymphomil.runtime.errors import LymphomilError
from tests.models.conftest import SPEC, assert_learns, assert_outputs

OPTIONS = dict(features=SPEC, bag_size=8, max_epochs=30)


@pytest.fixture(scope="module")
def fitted(feature_cohort):
    return create_model("bag", **OPTIONS).fit(feature_cohort.train, feature_cohort.y_train)


def test_learns_and_outputs(fitted, feature_cohort) -> None:
    assert fitted.pooling == "attention"
    assert_learns(fitted, feature_cohort, minimum=0.825)  # observed 0.875
    assert_outputs(fitted, feature_cohort)


@pytest.mark.parametrize("pooling", [p for p in BAG_POOLINGS if p != "attention"])
def test_each_pooling_learns(feature_cohort, pooling: str) -> None:
    model = BagModel(**{**OPTIONS, "pooling": pooling})
    observed = {"min": 0.875, "max": 0.875, "sum": 0.975, "mean": 0.95}[pooling]
    assert_learns(model.fit(feature_cohort.train, feature_cohort.y_train), feature_cohort,
                  minimum=observed - 0.05)


def test_training_bags_are_disjoint_or_resampled() -> None:
    rng = np.random.default_rng(0)
    bags = training_bags(37, 8, rng)
    assert bags.shape == (4, 8)
    assert len(np.unique(bags)) == 32  # disjoint
    small = training_bags(5, 8, rng)
    assert small.shape == (1, 8) and small.max() < 5  # drawn with replacement


def test_inference_bags_cover_every_cell_deterministically() -> None:
    for n in (1, 5, 8, 9, 16, 37):
        bags = inference_bags(n, 8)
        assert bags.shape == (max(1, -(-n // 8)), 8)
        assert set(bags.ravel()) == set(range(n))
        np.testing.assert_array_equal(bags, inference_bags(n, 8))


@pytest.mark.parametrize("pooling", BAG_POOLINGS)
def test_pooling_head_ignores_padding(pooling: str) -> None:
    torch.manual_seed(0)
    head = PoolingMIL(6, pooling, hidden=8, attention_dim=4).eval()
    X = torch.randn(2, 5, 6)  # (B, N, d)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    out_a, att_a = head(X, mask)
    X2 = X.clone()
    X2[1, :2] = torch.randn(2, 6) * 10  # patient B's cells change...
    X2[1, 2:] = float("nan")  # ...and its padding is garbage
    out_b, att_b = head(X2, mask)
    assert torch.isfinite(out_b).all()
    assert torch.equal(out_a[0], out_b[0])
    if pooling == "attention":
        assert torch.equal(att_a[0], att_b[0])
        assert torch.all(att_b[1, 2:] == 0)
        torch.testing.assert_close(att_b.sum(dim=1), torch.ones(2))
    # the padded rows give what the patient alone gives
    alone, _ = head(X[1:, :2], None)
    torch.testing.assert_close(out_a[1:], alone)


def test_bad_pooling(feature_cohort) -> None:
    with pytest.raises(LymphomilError, match="pooling"):
        BagModel(features=SPEC, pooling="median").fit(feature_cohort.train, feature_cohort.y_train)
