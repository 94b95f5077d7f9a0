"""The patient-model contract (docs/design.md, "The model contract") on every registered model,
in the spirit of scikit-learn's ``parametrize_with_checks``: fit, predict_proba, save/load,
clone, same seed → same output, and a patient's output never depends on padding or on the other
patients. The checks themselves are :func:`tests.models.conftest.check_contract`.

The models read a toy feature cohort (tests/models/conftest.py) through a store that answers every
feature spec with the toy features, so nested image models (an ensemble's members, a selection's
candidates, named by registry name) read them too. Options that only set how much work a fit does
(epochs, inner folds, the attribute grid) are made small; per-family tests keep what is specific.
"""

from __future__ import annotations

import numpy as np
import pytest

from lymphomil.features.in_memory import InMemoryStore
from lymphomil.models.base import PatientModel, create_model, list_models
from tests.models.conftest import DIM, HW, SPEC, check_contract, make_patients

#: models that decode cell images and build a backbone inside ``fit`` (no cached features): the
#: contract of ``mil-e2e`` is checked on a synthetic image cohort in tests/models/test_mil.py
NEEDS_IMAGES = {"mil-e2e": "fits a backbone on decoded cell images; check_contract runs on a "
                           "synthetic image cohort in test_mil.py::test_end_to_end_contract"}
#: models on the cached 'trunk' kind (a real backbone's tail reads it: the toy 16-d maps do not
#: fit);
#: the same contract runs on a toy trunk cohort in tests/models/test_finetune.py
_TRUNK = ("reads 'trunk' activations of a real backbone; check_contract runs on a toy trunk "
          "cohort in test_finetune.py::test_contract_on_the_trunk_cohort")
NEEDS_IMAGES.update({name: _TRUNK for name in list_models()
                     if any(kind == "trunk" for _, kind in create_model(name).required_features())})

#: options that only size the work of a fit, wherever they appear (nested models included)
FAST = {"max_epochs": 3, "inner_folds": 2, "param_grid": "compact", "inner_repeats": 1}


class AnySpecStore(InMemoryStore):
    """The toy features, whatever spec a model asks for."""

    def load(self, patient, spec, kind="pooled"):
        return super().load(patient, SPEC, kind)

    def ensure(self, patients, spec, kinds=("pooled",)):
        super().ensure(patients, SPEC, kinds)


@pytest.fixture(scope="module")
def cohort():
    store = AnySpecStore()
    train, y = make_patients(12, seed=3, store=store, prefix="C", n_range=(4, 10))
    test, _ = make_patients(4, seed=4, store=store, prefix="D", n_range=(4, 10))
    return train, y, test, store


def fast(model):
    """``model`` with the options in FAST set wherever they appear, nested models (a fusion's
    parts, an ensemble's members) included; bagging cut to 2 bootstrap samples."""
    params = model.get_params(deep=False)
    model.set_params(**{key: value for key, value in FAST.items() if key in params})
    if params.get("bootstrap"):
        model.set_params(bootstrap=min(int(params["bootstrap"]), 2))
    for value in params.values():
        for part in (value if isinstance(value, (tuple, list)) else (value,)):
            if isinstance(part, PatientModel):
                fast(part)
    return model


@pytest.mark.parametrize("name", list_models())
def test_contract(name: str, cohort, tmp_path) -> None:
    if name in NEEDS_IMAGES:
        pytest.skip(NEEDS_IMAGES[name])
    train, y, test, store = cohort

    def changed(patient):  # other cells, 13 more of them (padding), whatever spec is asked
        rng = np.random.default_rng(7)
        maps = rng.normal(size=(patient.bag(SPEC).shape[0] + 13, DIM, HW, HW)) * 5
        maps = maps.astype(np.float32)
        return patient.with_features(AnySpecStore({(patient.id, SPEC, "map"): maps,
                                                   (patient.id, SPEC, "pooled"):
                                                       maps.mean(axis=(2, 3))}))

    check_contract(fast(create_model(name)), train, y, test, tmp_path / "model", name=name,
                   changed=changed)
