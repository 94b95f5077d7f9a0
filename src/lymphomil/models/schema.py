"""A model folder checked before anything in it is used: every file, every field's type and range.

``checksums.json`` proves the files are the ones written, not that they make sense: a hand-edited
model.json with its checksum recomputed must still be a clear error, never a crash deep inside
a fit's state, and a folder's own files must never lead lymphomil outside it.
:func:`check_model_folder` checks the checksums (every file listed, inside the folder, no link),
that the folder holds the files a model folder has and no others, ``metadata.json`` and every
``model.json`` (sub-models too) against the schema, and that the other JSON files are JSON
objects; :func:`check_features` then compares the built model's features with the metadata's.
:func:`lymphomil.models.base.load_model`, the one reader of a model folder, runs both; the
registry of model names and classes is handed in (this module imports nothing above it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from lymphomil.data.reference_date import MAX_YEAR, MIN_YEAR
from lymphomil.features.weights import known_backbones, weights_digest
from lymphomil.outputs import CHECKSUMS, read_json, verify_dir
from lymphomil.runtime.errors import (
    LymphomilError,
    did_you_mean,
    format_problem,
    one_of,
    plain_problems,
)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
FIX = "re-create the model folder with `lymphomil train` (never edit it by hand)"
MODEL_JSON, ARRAYS, METADATA_JSON = "model.json", "arrays.safetensors", "metadata.json"
#: the model.json format this lymphomil reads and writes
FORMAT_VERSION = 1
#: the files `train` and `run` add beside a model, each read (and checked) by its own module:
#: report/model_card.py, referral/rule.py, ood/folder.py
COMPANIONS = ("model_card.json", "referral.json", "ood.json")


@dataclass(frozen=True)
class Registry:
    """What a model folder may name: the model classes, the registered model names and a
    class's default parameters (handed in by :mod:`lymphomil.models.base`)."""

    classes: Callable[[], Collection[str]]
    models: Callable[[], Collection[str]]
    defaults: Callable[[str], dict[str, Any]]


def _backbones() -> list[str]:
    return known_backbones()


def _known(info: ValidationInfo, key: str, value: str, problem: str) -> str:
    """``value`` checked against the registry in the validation context."""
    choices = (info.context or {}).get(key)
    if choices is not None and value not in choices:
        raise ValueError(problem.format(value=value) + did_you_mean(value, choices))
    return value


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
    model_name: str | None
    reference_date: str
    seed: int | None
    features: list[FeatureUse]
    training: TrainingSchema | None
    versions: dict[str, str]

    @field_validator("model_name")
    @classmethod
    def _model(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _known(info, "models", value,
                                                 "{value!r} is not a registered model")

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
    class_: str = Field(alias="class")
    family: str
    params: dict[str, Any]
    state: dict[str, Any]
    submodels: list[str]
    versions: dict[str, str]

    @field_validator("class_")
    @classmethod
    def _class(cls, value: str, info: ValidationInfo) -> str:
        return _known(info, "classes", value, "{value!r} is not a lymphomil model class")

    @field_validator("submodels")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not _SAFE_NAME.match(v) or ".." in v]
        if bad:
            raise ValueError(f"sub-model name(s) {bad} are not plain folder names")
        return value


def _check(schema: type[BaseModel], path: Path, registry: Registry) -> BaseModel:
    data = read_json(path)
    if schema is ModelJsonSchema and isinstance(data, dict):
        problem = format_problem(data.get("format"), FORMAT_VERSION, "model folder")
        if problem:
            raise LymphomilError(f"model.json {problem[0]}", file=path, fix=problem[1])
    context = {"classes": registry.classes(), "models": registry.models()}
    try:
        return schema.model_validate(data, context=context)
    except ValidationError as exc:
        raise LymphomilError(f"the file does not describe a valid model ({plain_problems(exc)})",
                             file=path, fix=FIX) from None


def _param_types(path: Path, class_name: str, params: dict[str, Any],
                 registry: Registry) -> None:
    """Each saved hyper-parameter has the type of the class's default (an int stays an int)."""
    try:
        defaults = registry.defaults(class_name)
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


def _check_tree(folder: Path, registry: Registry, prefix: str = "", depth: int = 0) -> set[str]:
    """Every model.json of the tree checked; the files the tree holds (relative paths)."""
    if depth > 8:
        raise LymphomilError("sub-models nest too deep", file=folder, fix=FIX)
    parsed = _check(ModelJsonSchema, folder / MODEL_JSON, registry)
    _param_types(folder / MODEL_JSON, parsed.class_, parsed.params, registry)  # type: ignore
    files = {prefix + MODEL_JSON, prefix + ARRAYS}
    for name in parsed.submodels:  # type: ignore[attr-defined]
        sub = folder / "sub" / name
        if not (sub / MODEL_JSON).is_file():
            raise LymphomilError(f"sub-model {name!r} is missing", file=sub, fix=FIX)
        files |= _check_tree(sub, registry, f"{prefix}sub/{name}/", depth + 1)
    return files


def check_model_folder(folder: str | Path, registry: Registry) -> dict:
    """Everything in a model folder checked before any of it is used (see the module doc);
    returns ``metadata.json``'s content."""
    folder = Path(folder)
    listed = verify_dir(folder, "model")  # every file listed, inside the folder, unchanged
    if not (folder / METADATA_JSON).is_file():
        raise LymphomilError("not a model folder (no metadata.json)", file=folder,
                             fix="give a folder written by `lymphomil train` or model.save()")
    metadata = _check(MetadataSchema, folder / METADATA_JSON, registry)
    expected = _check_tree(folder, registry) | {METADATA_JSON, *COMPANIONS}
    unknown = sorted(set(listed) - expected)
    if unknown:
        raise LymphomilError(f"the model folder holds file(s) a model folder does not have: "
                             f"{', '.join(unknown[:5])}", file=folder / unknown[0], fix=FIX)
    missing = sorted(f for f in expected - set(COMPANIONS) if f not in listed)
    if missing:
        raise LymphomilError(f"model file {missing[0]} is not listed in {CHECKSUMS}",
                             file=folder, fix=FIX)
    for name in COMPANIONS:  # each read by its own module: a JSON object, at least
        if name in listed and not isinstance(read_json(folder / name), dict):
            raise LymphomilError("the file is not a JSON object", file=folder / name, fix=FIX)
    return metadata.model_dump()


def check_features(folder: str | Path, model: Any, metadata: dict) -> None:
    """The features the built model reads are the ones ``metadata.json`` names."""
    wanted = sorted(_key((s.to_dict(), k)) for s, k in _required(model))
    stated = sorted(_key((f["spec"], f["kind"])) for f in metadata["features"])
    if wanted != stated:
        raise LymphomilError("metadata.json names other features than the model's parameters "
                             "(edited by hand?)", file=Path(folder) / METADATA_JSON, fix=FIX)


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
