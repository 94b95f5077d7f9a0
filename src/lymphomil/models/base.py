"""The one patient-level model contract (docs/design.md §2) and the model registry.

Every family — attribute models, image models, MIL heads, fusion — is a :class:`PatientModel`:

* hyper-parameters are constructor arguments, stored as given (``get_params``/``clone`` work);
* ``fit(patients, y)`` / ``predict_proba(patients)`` over a 1-D object array of
  :class:`~lymphomil.data.cohort.Patient` (scikit-learn splitters index it like rows);
* image models say which cells drove a call (:meth:`PatientModel.instance_scores`);
* ``save(dir)`` / ``load(dir)``: JSON + safetensors + ``metadata.json`` + checksums, never
  pickle; the one model-folder format (``lymphomil train`` writes it through ``save`` too).

Families are registered by name (timm-style ``create_model(name, **overrides)``); the saved
``model.json`` names a registered class, so loading never imports an arbitrary object.
"""

from __future__ import annotations

import platform
from datetime import date
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

import lymphomil
from lymphomil.data.cohort import DEFAULT_REFERENCE_DATE
from lymphomil.features.spec import FeatureSpec
from lymphomil.features.weights import weights_digest
from lymphomil.models.schema import (
    ARRAYS,
    FIX,
    FORMAT_VERSION,
    METADATA_JSON,
    MODEL_JSON,
    Registry,
    check_features,
    check_model_folder,
    check_weights_unchanged,
)
from lymphomil.outputs import atomic_write_bytes, atomic_write_json, read_json, staged_dir
from lymphomil.runtime.environment import package_versions, source_digest
from lymphomil.runtime.errors import LymphomilError

#: what the folder's model was trained on and for (read by `lymphomil predict` and `run`)

_CLASSES: dict[str, type["PatientModel"]] = {}
_MODELS: dict[str, tuple[Callable[..., "PatientModel"], str]] = {}


def register_class(cls: type["PatientModel"]) -> type["PatientModel"]:
    """Allow ``cls`` to be re-created from a saved ``model.json`` (an allow-list, not an import)."""
    _CLASSES[cls.__name__] = cls
    return cls


def register_model(name: str, description: str = "") -> Callable:
    """Register a named configuration: ``@register_model("logreg")`` on a factory function."""

    def decorator(factory: Callable[..., "PatientModel"]) -> Callable[..., "PatientModel"]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = (factory, description or (factory.__doc__ or "").strip().split("\n")[0])
        return factory

    return decorator


#: family module -> (the saved classes, the model names) it registers. A named or saved model
#: imports its own family only (predicting with fusion-mean imports no torch); a name not listed
#: imports every family. tests/models/test_registry.py keeps the table true to the registry.
FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "attributes": (("AttributeModel",), ("logreg", "svm", "tree", "forest", "mlp",
                                          "logreg-compact")),
    "pooled": (("ImageLogRegModel",), ("image-logreg", "image-logreg-thin")),
    "fusion": (("FusionModel",), (
        "fusion-alpha", "fusion-min", "fusion-max", "fusion-stack", "fusion-mean",
        "fusion-mean-cells", "fusion-mean-cells-attr", "fusion-mean-proto", "fusion-mean-ens",
        "fusion-mean-seeds", "fusion-mean-bagged", "fusion-mean-gated", "fusion-mean-ens-gated",
        "fusion-alpha-cells")),
    "cells": (("CellTopKModel",), ("cell-topk", "cell-topk-attr")),
    "prototypes": (("PrototypeModel",), ("prototypes",)),
    "ensemble": (("EnsembleModel", "SelectModel"), (
        "image-ensemble", "image-logreg-thin-seeds", "image-logreg-thin-bagged", "select-default")),
    "instance": (("InstanceModel",), ("instance",)),
    "bag": (("BagModel",), ("bag",)),
    "mil": (("MILModel", "MILEndToEndModel"), ("mil", "mil-e2e")),
    "abmil": (("ABMILModel",), ("abmil", "abmil-attr")),
    "mil_trunk": (("MILTrunkModel",), ("mil-trunk", "fusion-mean-miltrunk")),
    "topk_trunk": (("TopKTrunkModel",), ("topk-trunk", "topk-trunk-image",
                                         "fusion-mean-topktrunk")),
}
_FAMILY_OF = {name: family for family, (classes, names) in FAMILIES.items()
              for name in (*classes, *names)}


def _ensure_registered(name: str | None = None) -> None:
    """Import the family that registers ``name`` (a model or class name); every family for
    ``None`` or a name the table does not know (they register themselves when imported)."""
    import importlib

    if name is not None:
        if name in _MODELS or name in _CLASSES:
            return
        family = _FAMILY_OF.get(name)
        if family is not None:
            importlib.import_module(f"lymphomil.models.{family}")
            if name in _MODELS or name in _CLASSES:
                return
    for family in FAMILIES:
        importlib.import_module(f"lymphomil.models.{family}")


def known_models() -> list[str]:
    """Every model name, without importing a family (the table, and what is registered)."""
    return sorted({n for _, names in FAMILIES.values() for n in names} | set(_MODELS))


def known_classes() -> set[str]:
    """Every saved-model class name, without importing a family."""
    return {c for classes, _ in FAMILIES.values() for c in classes} | set(_CLASSES)


def list_models() -> list[str]:
    _ensure_registered()
    return sorted(_MODELS)


def describe_models() -> dict[str, str]:
    _ensure_registered()
    return {name: _MODELS[name][1] for name in sorted(_MODELS)}


def describe_model(name: str) -> str:
    """One model's description ("" for an unknown name), importing its family only."""
    _ensure_registered(name)
    return _MODELS[name][1] if name in _MODELS else ""


#: ``select:A,B,C`` names the nested choice among registered models A, B, C (models/ensemble.py)
SELECT_PREFIX = "select:"


def selection_name(candidates: Sequence[str]) -> str:
    return SELECT_PREFIX + ",".join(candidates)


def selection_candidates(name: str) -> list[str] | None:
    """The candidates of a ``select:A,B,C`` name; ``None`` for any other name."""
    if not name.startswith(SELECT_PREFIX):
        return None
    return [part.strip() for part in name[len(SELECT_PREFIX):].split(",") if part.strip()]


def create_model(name: str, **overrides: Any) -> "PatientModel":
    """Build a registered model configuration; ``overrides`` become constructor arguments.
    ``select:A,B,C`` builds the nested selection among the registered models A, B and C."""
    candidates = selection_candidates(name)
    for needed in candidates if candidates is not None else [name]:
        _ensure_registered(needed)
    if candidates is not None:
        unknown = [c for c in candidates if c not in _MODELS]
        if not candidates or unknown:
            raise LymphomilError(f"selection {name!r}: unknown or missing candidate(s) "
                                 f"{', '.join(unknown) or '(none)'}",
                                 fix=f"name registered models: {', '.join(sorted(_MODELS))}")
        return model_class("SelectModel")(candidates=tuple(candidates), **overrides)
    if name not in _MODELS:
        raise LymphomilError(f"unknown model {name!r}",
                             fix=f"choose one of: {', '.join(sorted(_MODELS))}")
    model = _MODELS[name][0]()
    if overrides:
        valid = model.get_params(deep=False)
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise LymphomilError(f"model {name!r} has no option(s) {', '.join(unknown)}",
                                 fix=f"its options are: {', '.join(sorted(valid))}")
        model.set_params(**overrides)
    return model


# --------------------------------------------------------------------------- parameter codec


def encode_param(value: Any) -> Any:
    """Hyper-parameter → JSON (nested models and feature specs included)."""
    if isinstance(value, PatientModel):
        return {"__model__": type(value).__name__,
                "params": {k: encode_param(v) for k, v in value.get_params(deep=False).items()}}
    if isinstance(value, FeatureSpec):
        return {"__spec__": value.to_dict()}
    if isinstance(value, tuple):
        return {"__tuple__": [encode_param(v) for v in value]}
    if isinstance(value, list):
        return [encode_param(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode_param(v) for k, v in value.items()}
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"hyper-parameter of type {type(value).__name__} cannot be saved as JSON")


def decode_param(value: Any) -> Any:
    if isinstance(value, dict):
        if "__model__" in value:
            cls = model_class(value["__model__"])
            return cls(**{k: decode_param(v) for k, v in value["params"].items()})
        if "__spec__" in value:
            return FeatureSpec.from_dict(value["__spec__"])
        if "__tuple__" in value:
            return tuple(decode_param(v) for v in value["__tuple__"])
        return {k: decode_param(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_param(v) for v in value]
    return value


def model_class(name: str) -> type["PatientModel"]:
    _ensure_registered(name)
    if name not in _CLASSES:
        raise LymphomilError(f"model class {name!r} is not a lymphomil model",
                             fix="use a model folder written by `lymphomil train`")
    return _CLASSES[name]


def library_versions() -> dict[str, str]:
    """The versions a saved model and a CV cache key record (torch's and scikit-learn's read
    from their metadata, the same strings as their ``__version__``: nothing imported), and the
    digest of lymphomil's source (the version stays put while the code is edited)."""
    versions = package_versions(("scikit-learn", "torch"))
    return {"lymphomil": getattr(lymphomil, "__version__", "0"),
            "lymphomil-source": source_digest(), "numpy": np.__version__,
            "scikit-learn": versions["scikit-learn"], "torch": versions["torch"],
            "python": platform.python_version()}


# --------------------------------------------------------------------------- the contract


class PatientModel(ClassifierMixin, BaseEstimator):
    """Base of every patient-level classifier (docs/design.md §2); subclasses implement hooks."""

    #: the family: the registered name of its base configuration ("cell-topk", "mil-e2e", ...),
    #: or the group's name where one class serves many names ("attributes", "fusion", "select")
    family: ClassVar[str] = "base"
    #: what one number of :meth:`instance_scores` is (the report's gallery legend says it)
    instance_score_units: ClassVar[str] = "cell score (units not stated by the model)"

    # -- to implement -------------------------------------------------------------------------
    def fit(self, patients: np.ndarray, y: np.ndarray) -> "PatientModel":  # pragma: no cover
        raise NotImplementedError

    def predict_proba(self, patients: np.ndarray) -> np.ndarray:  # pragma: no cover
        """(n_patients, 2): columns P(reactive), P(malignant)."""
        raise NotImplementedError

    def required_features(self) -> list[tuple[FeatureSpec, str]]:
        """(spec, kind) pairs this model reads from the feature store; none for attributes."""
        return []

    def minimum_per_class(self) -> int:
        """The fewest patients of each class ``fit`` needs: one of each here; a model that tunes
        itself by inner CV, or fits models on parts of its training patients, needs more
        (``models.checks.cv_minimum``). The flows check it before any fit, so a cohort too
        small is a message that states the minimum, never a failure inside a fit."""
        return 1

    def instance_scores(self, patients: np.ndarray) -> list[np.ndarray] | None:
        """Per patient, one score per cell (higher = more suspicious); ``None`` if not an image
        model."""
        return None

    def _get_state(self) -> tuple[dict, dict[str, np.ndarray]]:  # pragma: no cover
        """Fitted state as (JSON-able metadata, named float/int arrays)."""
        raise NotImplementedError

    def _set_state(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:  # pragma: no cover
        raise NotImplementedError

    def _fitted_submodels(self) -> dict[str, "PatientModel"]:
        """Fitted models held inside this one (saved in sub-folders)."""
        return {}

    def _set_submodels(self, submodels: dict[str, "PatientModel"]) -> None:
        if submodels:  # pragma: no cover
            raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    def _store_params(self, values: dict[str, Any]) -> None:
        """An ``__init__``'s whole body, ``self._store_params(locals())``: every constructor
        argument kept as given, nothing else (scikit-learn's rule)."""
        for name in self._get_param_names():
            setattr(self, name, values[name])

    def predict(self, patients: np.ndarray) -> np.ndarray:
        return (self.predict_proba(patients)[:, 1] >= 0.5).astype(int)

    def _set_arrays(self, arrays: dict[str, np.ndarray], names: Sequence[str],
                    dtype: Any = np.float64) -> None:
        """Loading: each saved array ``name`` becomes the fitted attribute ``name_``."""
        for name in names:
            setattr(self, f"{name}_", np.asarray(arrays[name], dtype=dtype))

    def _mark_fitted(self) -> "PatientModel":
        """End of ``fit`` (and of loading): the two classes, and fitted."""
        self.classes_ = np.array([0, 1])
        self.is_fitted_ = True
        return self

    def _check_fitted(self) -> None:
        if not getattr(self, "is_fitted_", False):
            raise LymphomilError(f"{type(self).__name__} is not fitted yet",
                                 fix="call fit() (or `lymphomil train`) first")

    def __sklearn_is_fitted__(self) -> bool:
        return bool(getattr(self, "is_fitted_", False))

    def save(self, folder: str | Path, *, name: str | None = None,
             reference_date: date | None = None, seed: int | None = None,
             training: dict | None = None, extra: dict | None = None,
             finish: Callable[[Path], None] | None = None) -> Path:
        """Write the fitted model to ``folder`` atomically: ``model.json`` + safetensors arrays
        (sub-models in ``sub/``), ``metadata.json`` and checksums. The one model-folder format:
        ``load_model``, ``lymphomil predict`` and ``lymphomil run`` read what this writes.

        ``metadata.json`` says what `predict` needs beside the model: the ``reference_date``
        ages were computed at (default: :func:`~lymphomil.data.cohort.load_cohort`'s), the
        features the model reads, and what is known of its training (``name``: the registered
        name; ``seed``; ``training``: the patients' counts and ids; ``extra``: more fields).
        ``finish(staging)`` writes more files into the folder before it is moved into place
        (covered by its checksums)."""
        self._check_fitted()
        folder = Path(folder)
        metadata = {
            "model_name": name,
            "reference_date": (reference_date or DEFAULT_REFERENCE_DATE).isoformat(),
            "seed": seed,
            "features": [{"spec": s.to_dict(), "kind": k, "weights_sha256": _weights_sha256(s)}
                         for s, k in self.required_features()],
            "training": training, "versions": library_versions(), **(extra or {})}
        with staged_dir(folder, "model") as staging:
            self._save_into(staging)
            atomic_write_json(staging / METADATA_JSON, metadata)
            if finish is not None:
                finish(staging)
        return folder

    def _save_into(self, folder: Path) -> None:
        from safetensors.numpy import save as save_arrays

        meta, arrays = self._get_state()
        submodels = self._fitted_submodels()
        for name, sub in submodels.items():
            sub._save_into(folder / "sub" / name)
        atomic_write_json(folder / MODEL_JSON, {
            "format": FORMAT_VERSION,
            "class": type(self).__name__,
            "family": self.family,
            "params": encode_param(self.get_params(deep=False)),
            "state": meta,
            "submodels": sorted(submodels),
            "versions": library_versions(),
        })
        clean = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        atomic_write_bytes(folder / ARRAYS, save_arrays(clean))

    @classmethod
    def load(cls, folder: str | Path) -> "PatientModel":
        """Load a folder written by :meth:`save` through :func:`load_model` (every check)."""
        model = load_model(folder)
        if not isinstance(model, cls):
            raise LymphomilError(f"the folder holds a {type(model).__name__}, not a {cls.__name__}",
                                 file=folder)
        return model


def _weights_sha256(spec: FeatureSpec) -> str | None:
    """The sha256 `predict` checks the backbone's weights against (None: random weights)."""
    if spec.weights == "none":
        return None
    try:
        return weights_digest(spec.backbone, spec.weights)
    except LymphomilError:  # a backbone only a test registers, or a missing extra: not checked
        return None


def _load_from(folder: Path) -> PatientModel:
    """The model of a folder whose files :func:`check_model_folder` has checked."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    spec = read_json(folder / MODEL_JSON)
    cls = model_class(spec["class"])
    model = cls(**decode_param(spec["params"]))
    try:
        arrays = load_file(str(folder / ARRAYS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise LymphomilError(f"cannot read the model arrays ({exc})", file=folder / ARRAYS,
                             fix=FIX) from None
    model._set_submodels({name: _load_from(folder / "sub" / name) for name in spec["submodels"]})
    model._set_state(spec["state"], arrays)
    return model._mark_fitted()


def _defaults(class_name: str) -> dict[str, Any]:
    return model_class(class_name)().get_params(deep=False)


#: what a model folder may name, for its schema (models/schema.py imports nothing above it)
_REGISTRY = Registry(known_classes, known_models, _defaults)


def load_model(folder: str | Path) -> PatientModel:
    """The one reader of a model folder (``predict``, the Python API, ``run`` and its cache):
    every file checked before any is used (checksums, the files a model folder holds, the
    schema of metadata.json and of every model.json: :mod:`lymphomil.models.schema`), the
    model built, its features compared with the metadata's and the backbone weights they were
    trained on checked unchanged. ``model.metadata_`` holds metadata.json; anything wrong is a
    :class:`LymphomilError` naming the file."""
    folder = Path(folder)
    metadata = check_model_folder(folder, _REGISTRY)
    try:
        model = _load_from(folder)
    except LymphomilError as exc:
        if exc.file is None:  # a model's own check (e.g. saved predictions not reproduced)
            raise LymphomilError(exc.problem, file=folder / MODEL_JSON,
                                 fix=exc.fix or FIX) from None
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError,
            OverflowError, RecursionError) as exc:
        raise LymphomilError(f"model.json does not describe a model lymphomil can load "
                             f"({type(exc).__name__}: {exc})", file=folder / MODEL_JSON,
                             fix=FIX) from None
    check_features(folder, model, metadata)
    check_weights_unchanged(folder, metadata)  # the same weights, hence the same features
    model.metadata_ = metadata
    return model


def positive_proba(model: PatientModel, patients: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict_proba(patients))[:, 1]
