"""Shared training hygiene: splits, balance, seeds, collate, early stopping, the memory store."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from lymphomil.evaluation.metrics import balanced_accuracy, balanced_log_loss
from lymphomil.features.in_memory import InMemoryStore
from lymphomil.models.checks import check_patients_y, make_generator, resolve_seed, seeded
from lymphomil.models.inputs import pad_bags
from lymphomil.models.training import (
    class_weights,
    epoch_order,
    fit_loop,
    inner_split,
)
from lymphomil.runtime.errors import LymphomilError


def test_inner_split_is_stratified_disjoint_and_seeded() -> None:
    y = np.array([0] * 10 + [1] * 30)
    train, val = inner_split(y, 0.2, seed=3)
    assert len(np.intersect1d(train, val)) == 0
    assert len(train) + len(val) == 40
    assert np.bincount(y[val]).tolist() == [2, 6]
    again = inner_split(y, 0.2, seed=3)
    np.testing.assert_array_equal(val, again[1])
    assert not np.array_equal(val, inner_split(y, 0.2, seed=4)[1])


def test_inner_split_gives_up_when_a_class_is_too_small() -> None:
    train, val = inner_split(np.array([0, 1, 1, 1, 1]), 0.2, seed=0)
    assert len(val) == 0 and len(train) == 5
    train, val = inner_split(np.array([0, 0, 1, 1]), 0.0, seed=0)
    assert len(val) == 0


def test_class_weights_and_sampler() -> None:
    y = np.array([0] * 10 + [1] * 30)
    np.testing.assert_allclose(class_weights(y, "weighted"), [2.0, 2 / 3])
    np.testing.assert_allclose(class_weights(y, "none"), [1.0, 1.0])
    order = epoch_order(y, "sampler", make_generator(0))
    assert len(order) == 40
    big = epoch_order(np.repeat(y, 50), "sampler", make_generator(0))
    assert abs(np.mean(np.repeat(y, 50)[big]) - 0.5) < 0.05  # classes drawn equally often
    perm = epoch_order(y, "weighted", make_generator(1))
    assert sorted(perm.tolist()) == list(range(40))
    np.testing.assert_array_equal(perm, epoch_order(y, "weighted", make_generator(1)))


def test_pad_bags_keeps_patients_apart() -> None:
    bags = [torch.ones(3, 2), torch.full((1, 2), 2.0), torch.full((2, 2), 3.0)]
    X, mask = pad_bags(bags)
    assert X.shape == (3, 3, 2) and mask.tolist() == [[True, True, True], [True, False, False],
                                                      [True, True, False]]
    for b, bag in enumerate(bags):
        assert torch.equal(X[b, :len(bag)], bag)
        assert torch.all(X[b, len(bag):] == 0)


def test_seeded_restores_the_global_generator() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with seeded(123):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)
    with seeded(123):
        assert torch.equal(torch.rand(3), inside)


def test_resolve_seed() -> None:
    assert resolve_seed(7) == 7
    assert isinstance(resolve_seed(None), int)
    # a RandomState gives the seed its first draw: pinned, the same in every process
    assert resolve_seed(np.random.RandomState(0)) == 209652396
    with pytest.raises(LymphomilError):
        resolve_seed("seven")


def test_metrics() -> None:
    y = np.array([0, 0, 1, 1, 1, 1])
    p = np.array([0.2, 0.6, 0.9, 0.8, 0.4, 0.7])
    assert balanced_accuracy(p >= 0.5, y) == pytest.approx((0.5 + 0.75) / 2)
    expected = (-(np.log(0.8) + np.log(0.4)) / 2 - (np.log(0.9) + np.log(0.8) + np.log(0.4)
                                                    + np.log(0.7)) / 4) / 2
    assert balanced_log_loss(y, p) == pytest.approx(expected)


def test_fit_loop_stops_early_and_restores_the_best_weights(caplog) -> None:
    module = nn.Linear(1, 1)
    val_losses = iter([1.0, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0])
    weights_at = {}

    def train_epoch(epoch: int) -> float:
        with torch.no_grad():
            module.weight.fill_(float(epoch))
        weights_at[epoch] = float(epoch)
        return 1.0 / epoch

    def validate():
        return next(val_losses), 0.5

    with caplog.at_level(logging.DEBUG, logger="lymphomil.models"):
        history, best = fit_loop(module, train_epoch=train_epoch, validate=validate,
                                 max_epochs=7, patience=3, description="toy")
    assert best == 2 and len(history) == 5  # epochs 3, 4, 5 did not improve
    assert module.weight.item() == 2.0  # the best epoch's weights are back
    assert not module.training
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5]
    assert all(r["seconds"] >= 0 and r["cpu_seconds"] >= 0 for r in history)
    assert "toy epoch 1" in caplog.text and "best 2" in caplog.text


def test_fit_loop_without_validation_runs_every_epoch() -> None:
    module = nn.Linear(1, 1)
    history, best = fit_loop(module, train_epoch=lambda e: 0.1, validate=None, max_epochs=4,
                             patience=1)
    assert len(history) == 4 and best == 4
    assert all(math.isnan(r["val_loss"]) for r in history)


def test_check_patients_y() -> None:
    with pytest.raises(LymphomilError, match="single class"):
        check_patients_y([object(), object()], [1, 1])
    with pytest.raises(LymphomilError, match="0 \\(reactive\\) or 1"):
        check_patients_y([object(), object()], [1, -1])
    with pytest.raises(LymphomilError, match="labels"):
        check_patients_y([object()], [1, 0])
    patients, y = check_patients_y([object(), object()], [0.0, 1.0])
    assert patients.dtype == object and y.dtype == np.int64


class _P:
    def __init__(self, pid: str):
        self.id = pid


def test_memory_store() -> None:
    store = InMemoryStore({("P1", "toy@112", "pooled"): np.ones((3, 4))})
    bag = store.load(_P("P1"), "toy@112")
    assert bag.dtype == np.float32 and bag.shape == (3, 4) and not bag.flags.writeable
    from lymphomil.features.spec import FeatureSpec

    assert store.load(_P("P1"), FeatureSpec(backbone="toy", crop=112)) is bag
    store.ensure([_P("P1")], FeatureSpec.parse("toy@112"), kinds=("pooled",))
    with pytest.raises(LymphomilError, match="P2"):
        store.load(_P("P2"), "toy@112")
    with pytest.raises(LymphomilError, match="1 patient"):
        store.ensure(iter([_P("P1"), _P("P2")]), FeatureSpec.parse("toy@112"))
    with pytest.raises(LymphomilError, match="map"):
        store.ensure([_P("P1")], FeatureSpec.parse("toy@112"), kinds=("pooled", "map"))
    with pytest.raises(LymphomilError, match="dimensions"):
        store.put("P3", "toy@112", "map", np.ones((3, 4)))
    with pytest.raises(LymphomilError, match="kind"):
        store.put("P3", "toy@112", "spatial", np.ones((3, 4)))
