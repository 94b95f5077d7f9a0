"""Image backbones, preprocessing and the cached instance-feature extractor (docs/design.md §3).

Image models read features, not JPEGs: they ask each patient for ``patient.bag(spec, kind)`` and
the attached :class:`FeatureCache` answers from disk, computing what is missing once. The one
exception is ``mil-e2e`` (:mod:`lymphomil.models.mil`), which fine-tunes a whole backbone and so
decodes its patients' images itself (docs/design.md §3, "Where an image is decoded").

Names that need torch (backbones, preprocessing) load on first use: a fully cached run reads
features without importing torch at all.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterable

import numpy as np

from lymphomil.features.cache import FeatureCache, default_root
from lymphomil.features.env import bf16_supported, resolve_precision
from lymphomil.features.spec import KINDS, FeatureSpec, FeatureStore

_LAZY = {
    "Backbone": "lymphomil.features.backbones",
    "create_backbone": "lymphomil.features.backbones",
    "list_backbones": "lymphomil.features.backbones",
    "register_backbone": "lymphomil.features.backbones",
    "FLIP_VIEWS": "lymphomil.features.preprocess",
    "TTA_VIEWS": "lymphomil.features.preprocess",
    "decode_image": "lymphomil.features.preprocess",
    "flip_view": "lymphomil.features.preprocess",
    "make_preprocess": "lymphomil.features.preprocess",
    "random_flips": "lymphomil.features.preprocess",
}

__all__ = ["FeatureCache", "FeatureSpec", "FeatureStore", "KINDS", "attach_store",
           "bf16_supported", "default_root", "resolve_precision", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lymphomil.features' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def attach_store(patients: Iterable[Any], store: Any) -> np.ndarray:
    """A 1-D object array of the patients, each with ``store`` attached (``patient.bag`` works)."""
    items = [patient.with_features(store) for patient in patients]
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out
