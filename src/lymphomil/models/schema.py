"""A model folder read through a strict schema (pydantic): every field's type and range.

``checksums.json`` proves the files are the ones written, not that they make sense: a hand-edited
model.json with its checksum recomputed must still be a clear error, never a crash deep inside
a fit's state. :func:`read_model_folder` checks the checksums, then ``metadata.json`` and every
``model.json`` (sub-models too) against the schema, then loads the model and checks that its
feature specs are the ones the metadata names.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lymphomil.data.reference_date import MAX_YEAR, MIN_YEAR
from lymphomil.features.weights import known_backbones, weights_digest
from lymphomil.models.base import (
    METADATA_JSON,
    known_classes,
    known_models,
    load_model,
    model_class,
)
from lymphomil.outputs import read_json, verify_dir
from lymphomil.runtime.errors import LymphomilError, one_of, plain_problems

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
FIX = "re-create the model folder with `lymphomil train` (never edit it by hand)"


def _backbones() -> list[str]:
    return known_backbones()


def _models() -> list[str]:
    return known_models()


def _classes() -> Collection[str]:
    return known_classes()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SpecSchema(_Strict):
    backbone: Annotated[str, one_of(_backbones, "unknown backbone {value!r}")]
    weights: str
    crop: int = Field(ge=8, le=224)
    tta: bool
    precision: Literal["fp32", "bf16"]


class FeatureUse(_Strict):
    spec: SpecSchema
    kind: Literal["pooled", "views", "map", "trunk"]
    weights_sha256: str | None = None  # recorded at training (older folders: the model card's)


class TrainingSchema(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    n_patients: int = Field(ge=2)
    n_malignant: int = Field(ge=1)
    n_reactive: int = Field(ge=1)
    patient_ids: list[str]


class MetadataSchema(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    #: the registered name and the training seed, when the model was trained under a name
    #: (`lymphomil train`, `run`); a model saved from Python without them has null
    model_name: Annotated[str, one_of(_models, "{value!r} is not a registered model")] | None
    reference_date: str
    seed: int | None
    features: list[FeatureUse]
    training: TrainingSchema | None
    versions: dict[str, str]

    @field_validator("reference_date")
    @classmethod
    def _date(cls, value: str) -> str:
        try:
            parsed = date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a date in YYYY-MM-DD") from None
        if not MIN_YEAR <= parsed.year <= MAX_YEAR:
            raise ValueError(f"{value!r} is implausible (years {MIN_YEAR} to {MAX_YEAR})")
        return value


class ModelJsonSchema(_Strict):
    format: Literal[1]
    class_: Annotated[str, one_of(_classes, "{value!r} is not a lymphomil model class")] = Field(
        alias="class")
    family: str
    params: dict[str, Any]
    state: dict[str, Any]
    submodels: list[str]
    versions: dict[str, str]

    @field_validator("submodels")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not _SAFE_NAME.match(v) or ".." in v]
        if bad:
            raise ValueError(f"sub-model name(s) {bad} are not plain folder names")
        return value


def _problems(exc: ValidationError) -> str:
    return plain_problems(exc)


def _check(schema: type[BaseModel], path: Path) -> BaseModel:
    data = read_json(path)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise LymphomilError(f"the file does not describe a valid model ({_problems(exc)})",
                             file=path, fix=FIX) from None


def _param_types(path: Path, class_name: str, params: dict[str, Any]) -> None:
    """Each saved hyper-parameter has the type of the class's default (an int stays an int)."""
    try:
        defaults = model_class(class_name)().get_params(deep=False)
    except Exception:  # a class without defaults for every parameter: the load checks it
        return
    for name, value in params.items():
        if name not in defaults:
            raise LymphomilError(f"the file does not describe a valid model (params.{name}: "
                                 f"not a parameter of {class_name})", file=path, fix=FIX)
        default = defaults[name]
        if default is None or value is None or isinstance(value, dict):
            continue
        number = (int, float)
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) == isinstance(default, bool)
        elif isinstance(default, number):
            ok = isinstance(value, number)  # an int where a float was, and the other way
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            ok = True  # lists, tuples, specs, models: their own decoders check them
        if not ok:
            raise LymphomilError(f"the file does not describe a valid model (params.{name}: "
                                 f"{value!r} is not a {type(default).__name__})", file=path,
                                 fix=FIX)


def _check_tree(folder: Path, depth: int = 0) -> None:
    if depth > 8:
        raise LymphomilError("sub-models nest too deep", file=folder, fix=FIX)
    parsed = _check(ModelJsonSchema, folder / "model.json")
    _param_types(folder / "model.json", parsed.class_, parsed.params)  # type: ignore
    for name in parsed.submodels:  # type: ignore[attr-defined]
        sub = folder / "sub" / name
        if not (sub / "model.json").is_file():
            raise LymphomilError(f"sub-model {name!r} is missing", file=sub, fix=FIX)
        _check_tree(sub, depth + 1)


def read_model_folder(folder: str | Path):
    """(model, metadata dict) of a folder written by :meth:`PatientModel.save` (`lymphomil
    train` and `run` save through it), checked strictly."""
    folder = Path(folder)
    verify_dir(folder, "model")
    if not (folder / METADATA_JSON).is_file():
        raise LymphomilError("not a model folder (no metadata.json)", file=folder,
                             fix="give a folder written by `lymphomil train` or model.save()")
    metadata = _check(MetadataSchema, folder / METADATA_JSON)
    _check_tree(folder)
    try:
        model = load_model(folder)
    except LymphomilError as exc:
        if exc.file is None:  # a model's own check (e.g. saved predictions not reproduced)
            raise LymphomilError(exc.problem, file=folder / "model.json",
                                 fix=exc.fix or FIX) from None
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
        raise LymphomilError(f"model.json does not describe a model lymphomil can load "
                             f"({type(exc).__name__}: {exc})", file=folder / "model.json",
                             fix=FIX) from None
    wanted = sorted(_key((s.to_dict(), k)) for s, k in _required(model))
    stated = sorted(_key((f.spec.model_dump(), f.kind)) for f in metadata.features)  # type: ignore
    if wanted != stated:
        raise LymphomilError("metadata.json names other features than the model's parameters "
                             "(edited by hand?)", file=folder / "metadata.json", fix=FIX)
    return model, metadata.model_dump()


def _required(model: Any) -> list:
    try:
        return list(model.required_features())
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise LymphomilError(f"the model's feature parameters are not valid ({exc})",
                             fix=FIX) from None


def _key(item: tuple[dict, str]) -> str:
    import json

    return json.dumps(item, sort_keys=True, default=str)


def recorded_weights(folder: Path, metadata: dict) -> dict[tuple[str, str], str]:
    """(backbone, weights) -> the sha256 the training recorded: from metadata.json, else (older
    model folders) from model_card.json's provenance."""
    recorded: dict[tuple[str, str], str] = {}
    for use in metadata.get("features", []):
        if use.get("weights_sha256"):
            spec = use["spec"]
            recorded[(spec["backbone"], spec["weights"])] = use["weights_sha256"]
    card = folder / "model_card.json"
    if not recorded and card.is_file():
        try:
            uses = read_json(card)["inputs"]["image_features"]
            for use in uses:
                digest = use["provenance"].get("sha256")
                weights = use["provenance"]["weights"]
                weights = "imagenet" if str(weights).startswith("imagenet") else str(weights)
                if isinstance(digest, str) and digest:
                    recorded[(str(use["backbone"]), weights)] = digest
        except (LymphomilError, KeyError, TypeError, AttributeError):
            pass  # a card without the record: nothing to compare with
    return recorded


def check_weights_unchanged(folder: str | Path, metadata: dict) -> None:
    """Stop when a weights file the model was trained on has changed since (its sha256 differs
    from the recorded one): its features, hence the predictions, would change silently."""
    folder = Path(folder)
    for (backbone, weights), digest in recorded_weights(folder, metadata).items():
        if weights == "none":
            continue
        current = weights_digest(backbone, weights)
        if current != digest:
            where = weights if weights != "imagenet" else f"the {backbone} ImageNet weights file"
            raise LymphomilError(
                f"the weights of {backbone} ({where}) have changed since the model was trained "
                f"(sha256 {current[:12]}…, recorded {digest[:12]}…): its features and the "
                "predictions would differ", file=folder / "metadata.json",
                fix="restore the weights file the model was trained with, or train the model "
                    "again on the new weights")
