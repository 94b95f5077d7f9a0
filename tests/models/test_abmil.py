"""Gated attention MIL (Ilse et al. 2018), with and without the clinical attributes."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest
import torch

from lymphomil.data.cohort import Patient, as_patient_array
from lymphomil.features.in_memory import InMemoryStore
from lymphomil.models.abmil import ABMILModel
from lymphomil.models.base import create_model
from lymphomil.models.heads import GatedAttentionMIL
from lymphomil.models.inputs import pad_bags
from tests.models.conftest import (
    SPEC,
    assert_learns,
    assert_outputs,
    balanced_accuracy,
    make_natural_log_folder,
)


@pytest.fixture(scope="module", params=["abmil", "abmil-attr"])
def fitted(request, feature_cohort):
    model = create_model(request.param, features=SPEC, max_epochs=40)
    return request.param, model.fit(feature_cohort.train, feature_cohort.y_train)


def test_registered_configurations() -> None:
    assert create_model("abmil").use_attributes is False
    assert create_model("abmil-attr").use_attributes is True


def test_learns_and_outputs(fitted, feature_cohort) -> None:
    _, model = fitted
    assert_learns(model, feature_cohort, minimum=0.875)  # observed 0.925 (both)
    assert_outputs(model, feature_cohort)
    for weights in model.instance_scores(feature_cohort.test):  # attention weights
        assert weights.sum() == pytest.approx(1.0)


def _attribute_only_cohort(n: int, seed: int, store: InMemoryStore
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Cells are pure noise; the lymphocyte count alone separates the classes."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.array([0, 1] * (n // 2)))
    patients = []
    for i, label in enumerate(y):
        pid = f"A{seed}-{i}"
        store.put(pid, SPEC, "pooled", rng.normal(size=(int(rng.integers(8, 20)), 16)))
        count = rng.uniform(4, 7.5) if label == 0 else rng.uniform(9, 40)
        patients.append(Patient(pid, int(label), "MF"[i % 2], date(1950, 1, 1),
                                float(rng.normal(70, 10)), float(count), "train", (),
                                features=store))
    return as_patient_array(patients), y


def test_attributes_reach_the_head() -> None:
    store = InMemoryStore()
    train, y = _attribute_only_cohort(40, 1, store)
    test, y_test = _attribute_only_cohort(40, 2, store)
    with_attr = ABMILModel(features=SPEC, use_attributes=True, max_epochs=40)
    with_attr.fit(train, y)
    assert balanced_accuracy(y_test, with_attr.predict(test)) >= 0.925  # observed 0.975
    # standardised with the training patients' statistics
    assert with_attr.attribute_mean_.shape == (3,)
    assert with_attr.attribute_mean_[1] == pytest.approx(
        np.mean([np.log10(p.lymph_count) for p in train]), rel=1e-5)


def test_a_folder_saved_with_the_natural_log_count_predicts_the_same(feature_cohort,
                                                                      tmp_path) -> None:
    """Before the one log base (issue 23) abmil-attr saved natural-log statistics."""
    from lymphomil.models.base import load_model

    fitted = ABMILModel(features=SPEC, use_attributes=True, max_epochs=2).fit(
        feature_cohort.train, feature_cohort.y_train)
    fitted.save(tmp_path / "m")
    make_natural_log_folder(tmp_path / "m", names=["age", "log_lymph_count", "gender_male"])
    old = load_model(tmp_path / "m")
    np.testing.assert_allclose(old.attribute_mean_, fitted.attribute_mean_, rtol=1e-6)
    np.testing.assert_allclose(old.predict_proba(feature_cohort.test),
                               fitted.predict_proba(feature_cohort.test), atol=1e-6)


def test_gated_attention_masks_padding() -> None:
    torch.manual_seed(0)
    head = GatedAttentionMIL(6, hidden=8, attention_dim=4, dropout=0.0, n_extra=3).eval()
    bags = [torch.randn(4, 6), torch.randn(2, 6)]
    X, mask = pad_bags(bags)  # (2, 4, 6), (2, 4)
    extra = torch.randn(2, 3)
    logits, attention = head(X, mask, extra)
    assert logits.shape == (2,) and attention.shape == (2, 4)
    assert torch.all(attention[1, 2:] == 0)
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(2))
    X2 = X.clone()
    X2[1, :2] += 3.0  # patient B's cells change
    X2[1, 2:] = float("inf")  # and its padding is garbage
    extra2 = extra.clone()
    extra2[1] = 100.0
    logits2, attention2 = head(X2, mask, extra2)
    assert torch.equal(logits[0], logits2[0]) and torch.equal(attention[0], attention2[0])
    alone, _ = head(bags[1].unsqueeze(0), None, extra[1:])
    torch.testing.assert_close(logits[1:], alone)
    with pytest.raises(ValueError):
        head(X, mask)  # the attributes are required when the head was built for them
