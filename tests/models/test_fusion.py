"""Fusion rules on fixed probabilities, and the count gate (learned from the training part only)."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from lymphomil.data.cohort import Patient, as_patient_array
from lymphomil.models.base import PatientModel
from lymphomil.models.fusion import GATED_PROBA, FusionModel
from lymphomil.runtime.errors import LymphomilError


class FixedModel(PatientModel):
    """P(malignant) read from a table by patient ID (the same whatever it was fitted on)."""

    family = "fixed"

    def __init__(self, table=None, random_state=0):
        self.table = table
        self.random_state = random_state

    def fit(self, patients, y):
        self.is_fitted_ = True
        return self

    def predict_proba(self, patients):
        p = np.array([self.table[q.id] for q in patients])
        return np.column_stack([1 - p, p])

    def _get_state(self):
        return {}, {}

    def _set_state(self, meta, arrays):
        pass


@pytest.fixture(autouse=True)
def _registered(register_for_test):
    """FixedModel loadable by name in this module's tests only."""
    register_for_test(FixedModel)


def cohort(counts, labels):
    patients = [Patient(f"P{i}", int(label), "F", date(1950, 1, 1), 70.0, float(count), "train", ())
                for i, (count, label) in enumerate(zip(counts, labels))]
    return as_patient_array(patients), np.asarray(labels)


P_ATTR = {"P0": 0.2, "P1": 0.9, "P2": 0.6, "P3": 0.3}
P_IMG = {"P0": 0.4, "P1": 0.5, "P2": 0.1, "P3": 0.3}


@pytest.mark.parametrize("rule, expected", [
    ("mean", [0.3, 0.7, 0.35, 0.3]),
    ("min", [0.2, 0.5, 0.1, 0.3]),
    ("max", [0.4, 0.9, 0.6, 0.3]),
])
def test_each_rule_on_fixed_probabilities(rule, expected) -> None:
    patients, y = cohort([5, 6, 7, 20], [0, 1, 0, 1])
    fusion = FusionModel(FixedModel(P_ATTR), FixedModel(P_IMG), rule=rule).fit(patients, y)
    np.testing.assert_allclose(fusion.predict_proba(patients)[:, 1], expected)


def test_the_gate_calls_malignant_above_the_reactive_range_only() -> None:
    train, y = cohort([4.0, 7.0, 6.0, 30.0], [0, 0, 1, 1])  # reactive range up to 7.0
    fusion = FusionModel(FixedModel(P_ATTR), FixedModel(P_IMG), rule="mean", count_gate=0.1)
    fusion.fit(train, y)
    assert fusion.gate_count_ == pytest.approx(7.7)
    test, _ = cohort([7.6, 7.8, 3.0, 8.0], [0, 0, 0, 0])
    p = fusion.predict_proba(test)[:, 1]
    np.testing.assert_allclose(p, [0.3, GATED_PROBA, 0.35, GATED_PROBA])
    off = FusionModel(FixedModel(P_ATTR), FixedModel(P_IMG), rule="mean").fit(train, y)
    np.testing.assert_allclose(off.predict_proba(test)[:, 1], [0.3, 0.7, 0.35, 0.3])


def test_the_gate_survives_save_and_load(tmp_path) -> None:
    from lymphomil.models.base import load_model

    train, y = cohort([4.0, 7.0, 6.0, 30.0], [0, 0, 1, 1])
    fusion = FusionModel(FixedModel(P_ATTR), FixedModel(P_IMG), rule="mean", count_gate=0.0)
    fusion.fit(train, y).save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.gate_count_ == 7.0
    np.testing.assert_array_equal(loaded.predict_proba(train), fusion.predict_proba(train))


def test_a_negative_gate_margin_is_refused() -> None:
    train, y = cohort([4.0, 7.0, 6.0, 30.0], [0, 0, 1, 1])
    with pytest.raises(LymphomilError, match="count_gate"):
        FusionModel(FixedModel(P_ATTR), FixedModel(P_IMG), rule="mean", count_gate=-1).fit(train, y)
