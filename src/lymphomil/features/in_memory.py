"""A feature store held in memory: precomputed instance features, tests, notebooks.

:class:`InMemoryStore` implements the :class:`~lymphomil.features.spec.FeatureStore` protocol from a
plain dictionary keyed by ``(patient_id, spec_label, kind)``; it never computes anything, so
:meth:`InMemoryStore.ensure` only checks that what a model will ask for is there.

    store = InMemoryStore({("P1", "efficientnet-lite0@112", "pooled"): np.zeros((12, 1280))})
    patients = attach_store(cohort.labelled, store)     # or [p.with_features(store) for p in ...]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from lymphomil.features.spec import KINDS, FeatureSpec
from lymphomil.runtime.errors import LymphomilError

if TYPE_CHECKING:  # pragma: no cover
    from lymphomil.data.cohort import Patient

Key = tuple[str, str, str]  # (patient_id, spec label such as "resnet18@112", kind)


def _label(spec: "FeatureSpec | str") -> str:
    return FeatureSpec.parse(spec).label()


class InMemoryStore:
    """Instance features from a dict ``{(patient_id, spec_label, kind): array}``.

    ``spec_label`` is :meth:`FeatureSpec.label` (``"efficientnet-lite0@112"``); a
    :class:`FeatureSpec` or a spec string is accepted as the key's middle element too. Arrays are
    returned as float32, read-only views (a model cannot change the store by accident).
    """

    def __init__(self, arrays: Mapping[tuple, np.ndarray] | None = None):
        self._arrays: dict[Key, np.ndarray] = {}
        for (patient_id, spec, kind), array in (arrays or {}).items():
            self.put(patient_id, spec, kind, array)

    # -- building ----------------------------------------------------------------------------
    def put(self, patient_id: str, spec: "FeatureSpec | str", kind: str, array: np.ndarray) -> None:
        if kind not in KINDS:
            raise LymphomilError(f"unknown feature kind {kind!r}",
                                 fix=f"use one of: {', '.join(KINDS)}")
        value = np.asarray(array, dtype=np.float32)
        expected = {"pooled": 2, "views": 3, "map": 4, "trunk": 4}[kind]
        if value.ndim != expected:
            raise LymphomilError(
                f"{kind!r} features of patient {patient_id} have shape {value.shape}; "
                f"expected {expected} dimensions",
                fix="pooled: (n_images, d); views: (n_views, n_images, d); "
                    "map: (n_images, d, h, w)")
        value = value.copy()
        value.flags.writeable = False
        self._arrays[(str(patient_id), _label(spec), kind)] = value

    def __len__(self) -> int:
        return len(self._arrays)

    def keys(self) -> list[Key]:
        return list(self._arrays)

    # -- FeatureStore protocol ---------------------------------------------------------------
    def load(self, patient: "Patient", spec: FeatureSpec, kind: str = "pooled") -> np.ndarray:
        key = (patient.id, _label(spec), kind)
        try:
            return self._arrays[key]
        except KeyError:
            raise LymphomilError(
                f"no {kind!r} features for patient {patient.id} with {key[1]} in memory",
                fix="add them to the InMemoryStore (or use the on-disk FeatureCache, which "
                    "computes what is missing)") from None

    def ensure(self, patients: Iterable["Patient"], spec: FeatureSpec,
               kinds: Iterable[str] = ("pooled",)) -> None:
        """Nothing to compute; raise at once (naming the first gap) when something is missing."""
        label = _label(spec)
        patients = list(patients)
        for kind in kinds:
            missing = [p.id for p in patients if (p.id, label, kind) not in self._arrays]
            if missing:
                shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
                raise LymphomilError(
                    f"{len(missing)} patient(s) have no {kind!r} features for {label} in memory "
                    f"({shown})", fix="add them to the InMemoryStore before fitting")
