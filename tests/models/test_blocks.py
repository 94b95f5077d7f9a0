"""The shared building blocks of the model families (lymphomil.models.blocks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lymphomil.models.blocks import (
    apply_platt,
    fit_platt,
    freeze_batchnorm,
    top_k_indices,
    top_k_mean,
    two_group_adam,
)


def test_top_k_mean_is_one_rule_for_numpy_and_torch() -> None:
    scores = np.array([3.0, -1.0, 5.0, 0.0])
    assert top_k_mean(scores, 2) == 4.0
    assert top_k_mean(scores, 0) == pytest.approx(1.75)  # 0 and k > n: every cell
    assert top_k_mean(scores, 10) == pytest.approx(1.75)
    t = torch.tensor(scores, requires_grad=True)
    value = top_k_mean(t, 2)
    value.backward()  # differentiable: the fine-tuned top-k model trains through it
    assert float(value) == 4.0 and t.grad.tolist() == [0.5, 0.0, 0.5, 0.0]
    assert top_k_indices(torch.tensor(scores), 2).tolist() == [0, 2]  # ascending positions


def test_platt_maps_one_score_or_several() -> None:
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 20)
    z = rng.normal(size=40) + 2 * y
    slopes, intercept = fit_platt(z, y)
    assert slopes.shape == (1,) and slopes[0] > 0
    np.testing.assert_array_equal(apply_platt(z, slopes, intercept), slopes[0] * z + intercept)
    Z = np.column_stack([z, rng.normal(size=40)])
    slopes2, intercept2 = fit_platt(Z, y)
    assert slopes2.shape == (2,)
    np.testing.assert_allclose(apply_platt(Z, slopes2, intercept2),
                               Z @ slopes2 + intercept2, rtol=1e-12)


def test_frozen_batchnorm_and_the_two_optimiser_groups() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    head = torch.nn.Linear(4, 1)
    net.train()
    freeze_batchnorm(net)
    assert not net[1].training and net[0].training
    optimiser = two_group_adam(head.parameters(), net, lr=1e-3, body_lr=1e-4, weight_decay=0.0)
    assert [g["lr"] for g in optimiser.param_groups] == [1e-3, 1e-4]
    frozen = two_group_adam(head.parameters(), net, lr=1e-3, body_lr=0.0, weight_decay=0.0)
    assert len(frozen.param_groups) == 1
    assert not any(p.requires_grad for p in net.parameters())
