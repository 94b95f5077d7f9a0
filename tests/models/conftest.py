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


@pytest.fixture(autouse=True)
def toy_backbone_is_known(monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy features' backbone (an in-memory store) is known to the model-folder schema, as
    a backbone registered at run time would be: a toy model's folder loads."""
    from lymphomil.features.weights import known_backbones
    from lymphomil.models import schema

    monkeypatch.setattr(schema, "known_backbones", lambda: [*known_backbones(), "toy"])


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
# The one definition of the patient-model contract (docs/design.md §2): test_contract.py runs
# check_contract on every registered model, test_finetune.py on the trunk cohort, test_mil.py on
# decoded images; the per-family tests call its parts.


def assert_learns(model, cohort: FeatureCohort, minimum: float) -> float:
    """Balanced accuracy on the held-out toy patients >= ``minimum``: set it near the observed
    score (one patient of a class of 20 moves it by 0.025), so a regression shows."""
    score = balanced_accuracy(cohort.y_test, model.predict(cohort.test))
    assert score >= minimum, f"balanced accuracy {score:.3f} < {minimum}"
    return score


def _toy_bag(patient) -> int:
    return patient.bag(SPEC).shape[0]


def assert_outputs(model, cohort, bag=_toy_bag) -> None:
    """Probabilities (float64, rows sum to 1), calls at 0.5, one finite score per cell."""
    test = getattr(cohort, "test", cohort)
    proba = model.predict_proba(test)
    assert proba.shape == (len(test), 2) and proba.dtype == np.float64
    assert np.all((proba >= 0) & (proba <= 1))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(model.predict(test), (proba[:, 1] >= 0.5).astype(int))
    np.testing.assert_array_equal(model.classes_, [0, 1])
    scores = model.instance_scores(test)
    if scores is not None:
        assert [len(s) for s in scores] == [bag(p) for p in test]
        assert all(np.isfinite(s).all() for s in scores)


def _scores_equal(a, b) -> None:
    assert (a is None) == (b is None)
    if a is not None:
        assert len(a) == len(b)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def assert_round_trip(model, cohort, folder) -> None:
    """Saved and loaded: the same class, parameters, probabilities and cell scores."""
    from lymphomil.models.base import encode_param, load_model

    test = getattr(cohort, "test", cohort)
    model.save(folder)
    loaded = load_model(folder)
    assert type(loaded) is type(model)
    assert encode_param(loaded.get_params(deep=False)) == encode_param(
        model.get_params(deep=False))
    np.testing.assert_array_equal(loaded.predict_proba(test), model.predict_proba(test))
    _scores_equal(loaded.instance_scores(test), model.instance_scores(test))


def assert_same_seed_same_result(model, cohort, y=None, test=None) -> None:
    """A clone fitted again (with the global torch/numpy generators disturbed) is identical,
    and fitting leaves the global generators where they were."""
    import torch
    from sklearn.base import clone

    train = getattr(cohort, "train", cohort)
    y = getattr(cohort, "y_train", y)
    test = getattr(cohort, "test", test)
    torch.manual_seed(999)
    np.random.seed(999)
    torch_state, numpy_state = torch.get_rng_state().clone(), np.random.get_state()[1].copy()
    again = clone(model).fit(train, y)
    assert torch.equal(torch.get_rng_state(), torch_state), "fit moved torch's global generator"
    assert np.array_equal(np.random.get_state()[1], numpy_state), "fit moved numpy's generator"
    np.testing.assert_array_equal(again.predict_proba(test), model.predict_proba(test))


def assert_clone_and_params(model, name: str | None) -> None:
    """A clone keeps the parameters, not the fit; the registered name takes them back."""
    from sklearn.base import clone

    from lymphomil.models.base import create_model, encode_param

    params = encode_param(model.get_params(deep=False))
    copy = clone(model)
    assert encode_param(copy.get_params(deep=False)) == params
    assert not hasattr(copy, "is_fitted_")
    if name is not None:
        fresh = create_model(name).set_params(**model.get_params(deep=False))
        assert encode_param(fresh.get_params(deep=False)) == params


def _toy_changed(patient) -> Patient:
    rng = np.random.default_rng(7)
    maps = rng.normal(size=(_toy_bag(patient) + 13, DIM, HW, HW)).astype(np.float32) * 5
    return with_new_features(patient, {"map": maps, "pooled": maps.mean(axis=(2, 3))})


def assert_isolated(model, cohort, changed=_toy_changed) -> None:
    """A patient's output is its own: alone, beside another patient, beside that patient
    changed (its cells, their number: padding), bit for bit."""
    test = getattr(cohort, "test", cohort)
    a, b = test[0], test[1]
    b_changed = changed(b)
    alone = model.predict_proba(as_patient_array([a]))[0]
    for pair in ([a, b], [a, b_changed], [a, b_changed, b]):
        np.testing.assert_array_equal(model.predict_proba(as_patient_array(pair))[0], alone)
    if model.instance_scores(as_patient_array([a])) is not None:
        _scores_equal(model.instance_scores(as_patient_array([a, b_changed]))[:1],
                      model.instance_scores(as_patient_array([a]))[:1])


def check_contract(model, train, y, test, folder, *, name: str | None = None,
                   bag=_toy_bag, changed=_toy_changed):
    """The whole contract on an unfitted ``model``: fit (global generators untouched), outputs,
    save/load, clone and parameters, same seed → same output, a patient's output its own.
    ``bag(patient)`` is the number of cells a score is expected for; ``changed(patient)`` a
    copy with other (and more) cells. Returns the fitted model."""
    from sklearn.base import clone

    fitted = clone(model)
    assert_same_seed_same_result(fitted.fit(train, y), train, y, test)
    assert_outputs(fitted, test, bag)
    assert_round_trip(fitted, test, folder)
    assert_clone_and_params(fitted, name)
    assert_isolated(fitted, test, changed)
    return fitted


def make_natural_log_folder(folder, names: list[str] | None) -> None:
    """Rewrite a saved model folder as it was before the one log base (issue 23): the count's
    standardiser statistics in natural-log units, the count column named ``log_lymph_count``
    (``names``), or no names at all (``None``: ``topk-trunk`` saved none)."""
    import math

    from safetensors.numpy import load_file, save_file

    from lymphomil.outputs import atomic_write_json, read_json, write_checksums

    arrays = load_file(folder / "arrays.safetensors")
    for key in ("attribute_mean", "attribute_scale"):
        arrays[key] = arrays[key].copy()
        arrays[key][1] = np.float32(np.float64(arrays[key][1]) * math.log(10))
    save_file(arrays, str(folder / "arrays.safetensors"))
    model = read_json(folder / "model.json")
    if names is None:
        del model["state"]["attributes"]
    else:
        model["state"]["attributes"] = names
    atomic_write_json(folder / "model.json", model)
    write_checksums(folder)
