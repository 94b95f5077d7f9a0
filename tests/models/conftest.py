"""A synthetic *feature* cohort for the image-model tests (no images, no backbone).

Every cell has a (d, h, w) "feature map" of standard normal noise; in a malignant patient a share
of the cells (25–60 %) is shifted along one fixed direction, in a reactive one at most a few
percent. The pooled features are the maps' spatial means. All of it lives in an
:class:`~lymphomil.features.in_memory.InMemoryStore` attached to the patients.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pytest

from lymphomil.data.cohort import Patient, as_patient_array
from lymphomil.features.in_memory import InMemoryStore
from lymphomil.features.spec import FeatureSpec

SPEC = "toy@112"
DIM = 16
HW = 2


@dataclass
class FeatureCohort:
    train: np.ndarray
    y_train: np.ndarray
    test: np.ndarray
    y_test: np.ndarray
    store: InMemoryStore


def make_patients(n: int, seed: int, store: InMemoryStore, prefix: str, *, dim: int = DIM,
                  hw: int = HW, shift: float = 2.0, n_range: tuple[int, int] = (10, 30),
                  spec: str = SPEC) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(12345).normal(size=dim)
    direction /= np.linalg.norm(direction)
    y = np.array([0, 1] * (n // 2) + [1] * (n % 2))
    rng.shuffle(y)
    patients = []
    for i, label in enumerate(y):
        n_cells = int(rng.integers(n_range[0], n_range[1] + 1))
        share = rng.uniform(0.25, 0.6) if label == 1 else rng.uniform(0.0, 0.05)
        positive = rng.uniform(size=n_cells) < share
        maps = rng.normal(size=(n_cells, dim, hw, hw)).astype(np.float32)
        maps[positive] += (shift * direction)[None, :, None, None].astype(np.float32)
        pid = f"{prefix}{i:03d}"
        store.put(pid, spec, "map", maps)
        store.put(pid, spec, "pooled", maps.mean(axis=(2, 3)))
        age = float(rng.normal(70, 10))
        count = float(rng.lognormal(np.log(8.0), 0.5))
        patients.append(Patient(pid, int(label), "MF"[i % 2], date(1950, 1, 1), age, count,
                                "train", (), features=store))
    return as_patient_array(patients), y


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """The toy tensors are tiny: one thread is faster and immune to a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def feature_cohort() -> FeatureCohort:
    store = InMemoryStore()
    train, y_train = make_patients(40, seed=1, store=store, prefix="T")
    test, y_test = make_patients(40, seed=2, store=store, prefix="H")
    return FeatureCohort(train, y_train, test, y_test, store)


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    y, pred = np.asarray(y), np.asarray(pred)
    return float(np.mean([np.mean(pred[y == c] == c) for c in (0, 1)]))


def with_new_features(patient: Patient, bags: dict[str, np.ndarray]) -> Patient:
    """A copy of ``patient`` whose features (per kind) come from a fresh store."""
    store = InMemoryStore({(patient.id, FeatureSpec.parse(SPEC).label(), kind): value
                           for kind, value in bags.items()})
    return patient.with_features(store)


# --------------------------------------------------------------------------- contract checks


def assert_learns(model, cohort: FeatureCohort, minimum: float) -> float:
    """Balanced accuracy on the held-out toy patients >= ``minimum``: set it near the observed
    score (one patient of a class of 20 moves it by 0.025), so a regression shows."""
    score = balanced_accuracy(cohort.y_test, model.predict(cohort.test))
    assert score >= minimum, f"balanced accuracy {score:.3f} < {minimum}"
    return score


def assert_outputs(model, cohort: FeatureCohort) -> None:
    proba = model.predict_proba(cohort.test)
    assert proba.shape == (len(cohort.test), 2)
    assert np.all((proba >= 0) & (proba <= 1))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    scores = model.instance_scores(cohort.test)
    assert len(scores) == len(cohort.test)
    for patient, s in zip(cohort.test, scores):
        assert s.shape == (patient.bag(SPEC).shape[0],)
        assert np.isfinite(s).all()


def assert_round_trip(model, cohort: FeatureCohort, folder) -> None:
    from lymphomil.models.base import load_model

    model.save(folder)
    loaded = load_model(folder)
    assert type(loaded) is type(model)
    assert loaded.get_params() == model.get_params()
    np.testing.assert_array_equal(loaded.predict_proba(cohort.test),
                                  model.predict_proba(cohort.test))
    head = cohort.test[:5]
    for a, b in zip(loaded.instance_scores(head), model.instance_scores(head)):
        np.testing.assert_array_equal(a, b)


def assert_same_seed_same_result(model, cohort: FeatureCohort) -> None:
    """A clone fitted again (with the global torch/numpy generators disturbed) is identical,
    and fitting leaves the global generators where they were."""
    import torch
    from sklearn.base import clone

    torch.manual_seed(999)
    np.random.seed(999)
    before = torch.get_rng_state().clone()
    again = clone(model).fit(cohort.train, cohort.y_train)
    assert torch.equal(torch.get_rng_state(), before)
    np.testing.assert_array_equal(again.predict_proba(cohort.test),
                                  model.predict_proba(cohort.test))


def assert_clone_and_params(model, name: str) -> None:
    from sklearn.base import clone

    from lymphomil.models.base import create_model

    params = model.get_params()
    copy = clone(model)
    assert copy.get_params() == params
    assert not hasattr(copy, "is_fitted_")
    fresh = create_model(name)
    fresh.set_params(**params)
    assert fresh.get_params() == params


def assert_isolated(model, cohort: FeatureCohort) -> None:
    """Changing patient B (its cells, their number) leaves patient A's outputs bit-identical."""
    a, b = cohort.test[0], cohort.test[1]
    rng = np.random.default_rng(7)
    n = b.bag(SPEC).shape[0] + 13
    maps = rng.normal(size=(n, DIM, HW, HW)).astype(np.float32) * 5
    b2 = with_new_features(b, {"map": maps, "pooled": maps.mean(axis=(2, 3))})
    first = as_patient_array([a, b])
    second = as_patient_array([a, b2])
    p1, p2 = model.predict_proba(first), model.predict_proba(second)
    np.testing.assert_array_equal(p1[0], p2[0])
    np.testing.assert_array_equal(model.instance_scores(first)[0],
                                  model.instance_scores(second)[0])
