"""The harness: patient-level folds, nesting, metrics against scikit-learn, intervals."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from lymphomil.data.cohort import Patient, as_patient_array
from lymphomil.evaluation.crossval import cross_validate, derive_seed, fold_plan, hard_mask
from lymphomil.evaluation.metrics import metrics_of
from lymphomil.models.base import PatientModel
from lymphomil.models.fusion import FusionModel

FIT_LOG: list[set[str]] = []


class SpyModel(PatientModel):
    """Records the patients every fit sees; predicts from the count (so it is informative)."""

    family = "spy"

    def __init__(self, random_state: int = 0):
        self.random_state = random_state

    def fit(self, patients, y):
        FIT_LOG.append({p.id for p in patients})
        self.is_fitted_ = True
        return self

    def predict_proba(self, patients):
        p = np.array([min(1.0, q.lymph_count / 15.0) for q in patients])
        return np.column_stack([1 - p, p])


@pytest.fixture(autouse=True)
def _registered(register_for_test):
    """SpyModel loadable by name in this module's tests only."""
    register_for_test(SpyModel)


def make_patients(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.array([0] * (n // 3) + [1] * (n - n // 3))
    patients = []
    for i, label in enumerate(y):
        count = rng.uniform(4, 7.7) if label == 0 else rng.lognormal(np.log(12), 0.6)
        patients.append(Patient(f"P{i}", int(label), "M", date(1950, 1, 1), 74.0, float(count),
                                "train", ()))
    return as_patient_array(patients), y


def test_every_patient_in_exactly_one_test_fold_per_repeat() -> None:
    _, y = make_patients(53)
    plan = fold_plan(y, folds=5, repeats=4, seed=1)
    assert plan.shape == (4, 53)
    for r in range(4):
        assert set(plan[r]) == set(range(5))
        for k in range(5):  # stratified: each fold holds both classes
            assert set(y[plan[r] == k]) == {0, 1}
    assert not np.array_equal(plan[0], plan[1])  # repeats reshuffle
    assert np.array_equal(plan, fold_plan(y, folds=5, repeats=4, seed=1))  # fixed seeds


def test_fits_never_see_their_test_fold_even_inside_a_fusion() -> None:
    patients, y = make_patients(40)
    FIT_LOG.clear()
    fusion = FusionModel(attribute_model=SpyModel(), image_model=SpyModel(), rule="alpha",
                         inner_folds=3)
    result = cross_validate(fusion, patients, y, folds=4, repeats=2, seed=0, model_name="f")
    ids = np.array([p.id for p in patients])
    # per outer fit: 3 inner folds × 2 parts + 2 final fits = 8 fits, all inside the training part
    assert len(FIT_LOG) == 2 * 4 * 8
    for index, seen in enumerate(FIT_LOG):
        outer = index // 8
        r, k = divmod(outer, 4)
        test_ids = set(ids[result.folds[r] == k])
        assert not seen & test_ids


def test_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    proba = np.clip(y * 0.3 + rng.uniform(0, 0.7, 60), 0, 1)
    hard = rng.uniform(size=60) < 0.5
    m = metrics_of(proba, y, hard)
    pred = proba >= 0.5
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, proba))
    assert m["hard_balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(y[hard], pred[hard]))


def test_hard_subset_is_the_training_reactive_range() -> None:
    counts = np.array([4.0, 6.0, 20.0, 5.0, 3.0, 7.0, 5.5])
    y = np.array([0, 0, 1, 1, 1, 1, 0])
    train, test = np.array([0, 1, 2]), np.array([3, 4, 5, 6])
    assert hard_mask(counts, y, train, test).tolist() == [True, False, False, True]


def test_summary_has_intervals_that_contain_the_mean() -> None:
    patients, y = make_patients(60)
    result = cross_validate(SpyModel(), patients, y, folds=5, repeats=3, seed=0, model_name="s")
    summary = result.summary()
    ba = summary["balanced_accuracy"]
    assert ba["ci_low"] <= ba["mean"] <= ba["ci_high"]
    assert 0.5 < ba["mean"] <= 1.0
    assert np.isfinite(result.proba).all()
    assert len(result.oof_rows()) == 3 * 60


def test_derived_seeds_are_stable_and_distinct() -> None:
    # pinned: a hash of the parts (sha256), the same in every process and on every machine
    assert derive_seed(0, "logreg", 1, 2) == 1703740608
    assert derive_seed(0, "logreg", 1, 2) != derive_seed(0, "logreg", 2, 1)
    assert 0 <= derive_seed(5, "x") < 2**31
