"""One test over every registered model name (timm-style): builds, clones, saves its params."""

from __future__ import annotations

import json

import pytest
from sklearn.base import clone

from lymphomil.flows.defaults import DEFAULT_CANDIDATES, DEFAULT_MODEL
from lymphomil.models.base import (
    PatientModel,
    create_model,
    decode_param,
    describe_models,
    encode_param,
    list_models,
)
from lymphomil.runtime.errors import LymphomilError


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds_clones_and_round_trips_its_params(name: str) -> None:
    model = create_model(name)
    assert isinstance(model, PatientModel)
    copy = clone(model)
    encoded = json.loads(json.dumps(encode_param(copy.get_params(deep=False))))
    rebuilt = type(model)(**decode_param(encoded))
    assert encode_param(rebuilt.get_params(deep=False)) == encoded
    assert describe_models()[name]
    for spec, kind in model.required_features():
        assert kind in ("pooled", "views", "map", "trunk")


def test_defaults_are_registered() -> None:
    assert DEFAULT_MODEL in list_models()
    assert set(DEFAULT_CANDIDATES) <= set(list_models())


def test_unknown_option_names_the_valid_ones() -> None:
    with pytest.raises(LymphomilError, match="its options are"):
        create_model("logreg", nonsense=1)


def test_the_family_table_is_the_registry() -> None:
    """``base.FAMILIES`` (what a name imports) lists each model and class under the module that
    registers it, and nothing else."""
    from lymphomil.models import base

    base.list_models()  # every family imported
    table = {(family, n) for family, (classes, names) in base.FAMILIES.items()
             for n in (*classes, *names)}
    registered = {(factory.__module__.rsplit(".", 1)[1], name)
                  for name, (factory, _) in base._MODELS.items()}
    registered |= {(cls.__module__.rsplit(".", 1)[1], name) for name, cls in base._CLASSES.items()
                   if cls.__module__.startswith("lymphomil.models.")}
    assert table == registered
