"""Attribute models: each learns, tunes inside fit, and saves/loads without pickle."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone

from lymphomil.data.cohort import Patient, as_patient_array
from lymphomil.models.attributes import (
    ALGORITHMS,
    NATURAL_LOG_COUNT,
    AttributeModel,
    attribute_matrix,
    attribute_names,
    statistics_in_log10,
)
from lymphomil.models.base import load_model
from lymphomil.runtime.errors import LymphomilError


def attribute_patients(n: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Patients drawn like the real table: reactive young with low counts, malignant older."""
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < 0.65).astype(int)
    patients = []
    for i, label in enumerate(y):
        age = rng.normal(58, 18) if label == 0 else rng.normal(79, 11)
        count = rng.uniform(4, 7.7) if label == 0 else rng.lognormal(np.log(12.4), 0.8)
        patients.append(Patient(f"P{i}", int(label), "MF"[i % 2], date(1940, 1, 1),
                                float(np.clip(age, 20, 100)), float(np.clip(count, 2.3, 300)),
                                "train", ()))
    return as_patient_array(patients), y


@pytest.fixture(scope="module")
def data():
    train = attribute_patients(90, seed=0)
    test = attribute_patients(60, seed=1)
    return train, test


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_each_algorithm_learns(data, algorithm: str) -> None:
    (train, y), (test, y_test) = data
    grid = {"forest": {"n_estimators": [10, 30]}}.get(algorithm)  # keep the test fast
    model = AttributeModel(algorithm=algorithm, param_grid=grid, inner_folds=3).fit(train, y)
    pred = model.predict(test)
    tpr, tnr = pred[y_test == 1].mean(), 1 - pred[y_test == 0].mean()
    observed = {"forest": 0.879, "logreg": 0.902, "mlp": 0.915, "svm": 0.892, "tree": 0.837}
    assert (tpr + tnr) / 2 > observed[algorithm] - 0.05
    # tuned inside fit: a choice for every option of the grid, each value one the grid offers
    grid = model._grid()
    chosen = {f"clf__{k}": v for k, v in model.best_params_.items()}
    assert chosen and any(set(chosen) == set(g) and all(v in g[k] for k, v in chosen.items())
                          for g in grid)
    assert 0 <= model.search_score_ <= 1


def test_matrix_has_the_documented_columns() -> None:
    patients, _ = attribute_patients(3)
    X = attribute_matrix(patients, use_n_images=True)
    assert X.shape == (3, 4)
    assert X[0, 1] == pytest.approx(np.log10(patients[0].lymph_count))
    assert attribute_names(use_n_images=True) == ["age", "log10_lymph_count", "male", "n_images"]
    assert attribute_matrix(patients, gender=False).shape == (3, 2)
    assert attribute_names(gender=False) == ["age", "log10_lymph_count"]


def test_natural_log_statistics_standardise_the_log10_column_alike() -> None:
    """Folders saved before the one log base kept the count's statistics in natural-log units."""
    counts = np.array([3.0, 8.0, 40.0])
    ln_mean, ln_scale = np.log(counts).mean(), np.log(counts).std()
    names = ["age", NATURAL_LOG_COUNT, "male"]
    mean, scale = statistics_in_log10(names, [70.0, ln_mean, 0.5], [9.0, ln_scale, 0.5])
    assert mean.dtype == scale.dtype == np.float32
    assert mean[[0, 2]].tolist() == [70.0, 0.5] and scale[[0, 2]].tolist() == [9.0, 0.5]
    np.testing.assert_allclose((np.log10(counts) - mean[1]) / scale[1],
                               (np.log(counts) - ln_mean) / ln_scale, atol=1e-6)
    same, _ = statistics_in_log10(attribute_names(), [70.0, 1.0, 0.5], [9.0, 0.3, 0.5])
    assert same[1] == np.float32(1.0)  # already log10: unchanged


def test_clone_and_params_round_trip() -> None:
    model = AttributeModel(algorithm="svm", inner_folds=3, random_state=7)
    copy = clone(model)
    assert copy.get_params() == model.get_params()


@pytest.mark.parametrize("algorithm", ["logreg", "svm", "forest", "mlp"])
def test_save_load_gives_identical_probabilities(data, tmp_path: Path, algorithm: str) -> None:
    (train, y), (test, _) = data
    model = AttributeModel(algorithm=algorithm, param_grid="none").fit(train, y)
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert np.array_equal(loaded.predict_proba(test), model.predict_proba(test))
    # nothing but JSON, safetensors, the checksum list and lymphomil's record of what it wrote
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        ".lymphomil-output.json", "arrays.safetensors", "checksums.json", "metadata.json",
        "model.json"]


def test_tampered_model_is_refused(data, tmp_path: Path) -> None:
    (train, y), _ = data
    AttributeModel(param_grid="none").fit(train, y).save(tmp_path / "m")
    spec = json.loads((tmp_path / "m" / "model.json").read_text())
    spec["state"]["best_params"]["C"] = 1e-6
    (tmp_path / "m" / "model.json").write_text(json.dumps(spec))
    with pytest.raises(LymphomilError, match="checksum"):
        load_model(tmp_path / "m")


def test_a_planted_pickle_is_never_executed(data, tmp_path: Path) -> None:
    import pickle

    class Boom:
        def __reduce__(self):
            return (Path.write_text, (tmp_path / "pwned", "x"))

    (train, y), _ = data
    AttributeModel(param_grid="none").fit(train, y).save(tmp_path / "m")
    (tmp_path / "m" / "arrays.safetensors").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(LymphomilError):
        load_model(tmp_path / "m")
    # even with matching checksums it is not unpickled
    from lymphomil.outputs import write_checksums

    write_checksums(tmp_path / "m")
    with pytest.raises(LymphomilError):
        load_model(tmp_path / "m")
    assert not (tmp_path / "pwned").exists()


def test_one_class_is_a_clear_error(data) -> None:
    (train, y), _ = data
    with pytest.raises(LymphomilError, match="both"):
        AttributeModel().fit(train[y == 1], y[y == 1])
