"""The founding MIL model: BN-sigmoid aggregation, on cached maps and end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lymphomil.models.base import create_model
from lymphomil.models.checks import make_generator
from lymphomil.models.heads import BNSigmoidAggregation, BNSigmoidMIL
from lymphomil.models.inputs import pad_bags
from lymphomil.models.mil import MILNet, forward_with_subset
from tests.models.conftest import SPEC, assert_learns, assert_outputs, check_contract

OPTIONS = dict(features=SPEC, lr=1e-2, max_epochs=40)


# --------------------------------------------------------------------------- the aggregation


def _numpy_aggregate(logits: list[np.ndarray], gamma: float, beta: float, mu: float,
                     var: float, eps: float = 1e-5) -> tuple[np.ndarray, list[np.ndarray]]:
    out, weights = [], []
    for z in logits:
        a = 1 / (1 + np.exp(-(beta + gamma * (z - mu) / np.sqrt(var + eps))))
        weights.append(a / a.sum())
        out.append(np.sum(a * z) / np.sum(a))
    return np.array(out), weights


def test_bn_sigmoid_aggregation_matches_hand_computation() -> None:
    patients = [np.array([1.0, 2.0, -1.0]), np.array([0.5, 3.0])]
    agg = BNSigmoidAggregation()
    with torch.no_grad():
        agg.gamma.fill_(2.0)
        agg.beta.fill_(-0.5)
    L, mask = pad_bags([torch.tensor(p, dtype=torch.float64) for p in patients])  # (2, 3)
    L[1, 2] = 1e6  # padding never counts
    agg = agg.double().train()
    out, weights = agg(L, mask)
    valid = np.concatenate(patients)
    mu, var = valid.mean(), valid.var()  # batch statistics (biased), as BatchNorm
    expected, expected_w = _numpy_aggregate(patients, 2.0, -0.5, mu, var)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(weights[0].detach().numpy(), expected_w[0], rtol=1e-12)
    np.testing.assert_allclose(weights[1, :2].detach().numpy(), expected_w[1], rtol=1e-12)
    assert weights[1, 2] == 0
    # running statistics: momentum 0.1 from (0, 1), unbiased variance
    assert agg.running_mean.item() == pytest.approx(0.1 * mu)
    assert agg.running_var.item() == pytest.approx(0.9 + 0.1 * valid.var(ddof=1))
    # eval mode: running statistics, not the batch's
    agg.eval()
    out_eval, _ = agg(L, mask)
    expected_eval, _ = _numpy_aggregate(patients, 2.0, -0.5, agg.running_mean.item(),
                                        agg.running_var.item())
    np.testing.assert_allclose(out_eval.detach().numpy(), expected_eval, rtol=1e-12)


def test_batch_statistics_carry_no_gradient() -> None:
    z = torch.tensor([[1.0, 2.0, -1.0, 0.5]], dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 4, dtype=torch.bool)
    agg = BNSigmoidAggregation().double().train()
    out, _ = agg(z, mask)
    (grad,) = torch.autograd.grad(out.sum(), z)
    # the same formula with mu / var as constants
    mu, var = z.detach().mean(), z.detach().var(unbiased=False)
    l2 = z.detach().clone().requires_grad_(True)
    a = torch.sigmoid(agg.beta + agg.gamma * (l2 - mu) / torch.sqrt(var + agg.eps))
    (grad2,) = torch.autograd.grad(((a * l2).sum() / a.sum()), l2)
    torch.testing.assert_close(grad, grad2)


def test_head_ignores_padding_and_other_patients() -> None:
    torch.manual_seed(0)
    head = BNSigmoidMIL(5).eval()
    X = torch.randn(2, 3, 5, 2, 2)  # (B, N, d, h, w)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    logits, attention = head(X, mask)
    assert attention.shape == (2, 3, 2, 2)
    torch.testing.assert_close(attention.sum(dim=(1, 2, 3)), torch.ones(2))
    assert torch.all(attention[1, 1:] == 0)
    X2 = X.clone()
    X2[1, 0] += 4.0
    X2[1, 1:] = float("nan")
    logits2, attention2 = head(X2, mask)
    assert torch.equal(logits[0], logits2[0]) and torch.equal(attention[0], attention2[0])
    alone, _ = head(X[1:, :1], None)
    torch.testing.assert_close(logits[1:], alone)


# --------------------------------------------------------------------------- on cached maps


@pytest.fixture(scope="module")
def fitted(feature_cohort):
    return create_model("mil", **OPTIONS).fit(feature_cohort.train, feature_cohort.y_train)


def test_learns_and_outputs(fitted, feature_cohort) -> None:
    assert fitted.required_features()[0][1] == "map"
    assert_learns(fitted, feature_cohort, minimum=0.925)  # observed 0.975
    assert_outputs(fitted, feature_cohort)


def test_cell_scores_follow_the_shifted_cells(fitted, feature_cohort) -> None:
    """Cells shifted along the malignant direction score higher than the others."""
    from tests.models.conftest import DIM

    direction = np.random.default_rng(12345).normal(size=DIM)
    direction /= np.linalg.norm(direction)
    scores = np.concatenate(fitted.instance_scores(feature_cohort.test))
    projection = np.concatenate([p.bag(SPEC).astype(np.float64) @ direction
                                 for p in feature_cohort.test])
    assert np.corrcoef(scores, projection)[0, 1] > 0.8  # observed 0.887


# --------------------------------------------------------------------------- end to end


def _small_net() -> MILNet:
    from lymphomil.features.backbones import create_backbone

    backbone = create_backbone("small-cnn", "none")
    return MILNet(backbone.model, backbone.feature_dim)


def test_gradient_reaches_only_the_sampled_images() -> None:
    net = _small_net().train()
    x = torch.randn(10, 3, 32, 32, requires_grad=True)  # two patients: 4 + 6 images
    logits, subset = forward_with_subset(net, x, [4, 6], n_grad=3,
                                         generator=make_generator(0), chunk=4)
    assert logits.shape == (2,) and len(subset) == 3
    logits.sum().backward()
    per_image = x.grad.abs().sum(dim=(1, 2, 3))  # (10,)
    inside = torch.zeros(10, dtype=torch.bool)
    inside[subset] = True
    assert torch.all(per_image[~inside] == 0)
    assert torch.all(per_image[inside] > 0)


def test_subset_forward_equals_full_forward_in_eval_mode() -> None:
    net = _small_net().eval()
    x = torch.randn(7, 3, 32, 32)
    logits, _ = forward_with_subset(net, x, [3, 4], n_grad=2, generator=make_generator(1))
    full, _, _ = net.head.forward_images(net.maps(x, 64), [3, 4])
    torch.testing.assert_close(logits, full)


@pytest.fixture(scope="module")
def image_patients(synthetic_root):
    from lymphomil.data.cohort import as_patient_array, labels_of, load_cohort

    patients = as_patient_array(load_cohort(synthetic_root).labelled)
    return patients, labels_of(patients)


E2E = dict(backbone="small-cnn", weights="none", crop=64, max_epochs=2, grad_images=8,
           batch_size=4)


def test_end_to_end_contract(image_patients, tmp_path) -> None:
    """The contract every registered model keeps (conftest.check_contract), on decoded images:
    a changed patient has other images, and more of them."""
    from dataclasses import replace

    patients, y = image_patients
    others = list(patients[-1].image_paths)

    def changed(patient):
        return replace(patient, image_paths=tuple(others + list(patient.image_paths[:13])))

    model = check_contract(create_model("mil-e2e", **E2E), patients, y, patients[:4],
                           tmp_path / "e2e", name="mil-e2e", bag=lambda p: p.n_images,
                           changed=changed)
    assert model.required_features() == []
    assert 1 <= len(model.history_) <= 2


def test_end_to_end_default_is_an_offline_backbone() -> None:
    from lymphomil.features.backbones import OFFLINE_BACKBONES

    model = create_model("mil-e2e")
    assert model.backbone in OFFLINE_BACKBONES and model.crop == 112
