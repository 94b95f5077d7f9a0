"""Checks of a model's inputs and parameters, and its seeds (every patient-level model uses them).

* ``check_*``: a hyper-parameter or the patients/labels given to ``fit``, refused with a
  :class:`~lymphomil.runtime.errors.LymphomilError` that names the option and the fix.
* **Seeds.** Everything random comes from the model's ``random_state``: explicit
  :class:`torch.Generator` objects for shuffling/sampling, and :func:`seeded` around a whole fit
  (``torch.random.fork_rng`` + ``manual_seed``) for what torch draws from its global generator
  (weight initialisation, dropout). The global state is restored afterwards, so results are the
  same in any call order and a fit never disturbs its caller's random numbers.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from lymphomil.features.spec import FeatureSpec
from lymphomil.runtime.errors import LymphomilError

if TYPE_CHECKING:  # pragma: no cover
    import torch

BALANCE = ("none", "weighted", "sampler")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise LymphomilError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}",
                             fix=f"set {name} to one of the listed values")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise LymphomilError(f"{name}={value!r} must be True or False",
                             fix=f"set {name} to True or False")


def check_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise LymphomilError(f"{name}={value!r} must be an integer >= {minimum}",
                             fix=f"set {name} to an integer >= {minimum}")


def check_float(name: str, value: Any, low: float = 0.0, high: float = math.inf,
                low_open: bool = False, high_open: bool = False) -> None:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise LymphomilError(f"{name}={value!r} must be a number in {lo}{low:g}, {high:g}{hi}",
                             fix=f"set {name} to a number in that range")


def cv_minimum(need: int, folds: int, adaptive: bool = True) -> int:
    """The fewest patients of each class for a stratified ``folds``-fold CV whose every
    training part still holds ``need`` of each (a test fold takes at most ceil(m / K) of a
    class). ``adaptive``: the folds shrink to the class size, as every inner CV does; else
    exactly ``folds`` folds, as the harness's outer CV (which needs ``folds`` of each too)."""
    m = max(2, int(need))
    while True:
        k = min(folds, m) if adaptive else folds
        if m >= k >= 2 and m - math.ceil(m / k) >= need:
            return m
        m += 1


def check_patients(patients: Any) -> np.ndarray:
    """Patients as a 1-D object array (a list, a tuple or an object array are accepted)."""
    if isinstance(patients, np.ndarray) and patients.dtype == object and patients.ndim == 1:
        out = patients
    else:
        items = list(patients)
        out = np.empty(len(items), dtype=object)
        out[:] = items
    if len(out) == 0:
        raise LymphomilError("no patients given", fix="pass at least one patient")
    return out


def check_patients_y(patients: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``fit``'s inputs: patients as an object array, ``y`` as 0/1 with both classes."""
    patients = check_patients(patients)
    y = np.asarray(y).ravel()
    if len(y) != len(patients):
        raise LymphomilError(f"{len(patients)} patients but {len(y)} labels",
                             fix="give one label per patient")
    if y.dtype.kind not in "biuf" or not np.isin(y, (0, 1)).all():
        raise LymphomilError("labels must be 0 (reactive) or 1 (malignant)",
                             fix="fit on labelled patients only (leave out LABEL -1)")
    y = y.astype(np.int64)
    if len(np.unique(y)) < 2:
        raise LymphomilError("the training patients hold a single class",
                             fix="train on reactive and malignant patients")
    return patients, y




def resolve_seed(random_state: Any) -> int:
    """An int seed from ``random_state`` (int, ``None`` = fresh entropy, or a numpy generator)."""
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1)[0] & 0x7FFFFFFF)
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        if random_state < 0:
            raise LymphomilError(f"random_state={random_state} must be >= 0",
                                 fix="use a non-negative integer seed")
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    raise LymphomilError(f"random_state={random_state!r} is not an integer seed",
                         fix="use an integer seed (or None for a fresh one)")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global CPU generator set to ``seed``, restoring it afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def make_generator(seed: int, stream: int = 0) -> "torch.Generator":
    """An explicit generator; ``stream`` gives independent streams from one seed."""
    import torch

    generator = torch.Generator()
    generator.manual_seed(int(np.random.SeedSequence([seed, stream]).generate_state(1)[0]))
    return generator


def numpy_rng(seed: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def parse_spec(features: Any) -> "FeatureSpec":
    """``FeatureSpec.parse`` with a user-facing error for a malformed string."""
    try:
        return FeatureSpec.parse(features)
    except (ValueError, TypeError) as exc:
        raise LymphomilError(f"features={features!r} is not a feature spec ({exc})",
                             fix='write it as BACKBONE[:WEIGHTS]@CROP[+tta][+bf16], e.g. '
                                 '"efficientnet-lite0@112" or "resnet18:none@224+tta"') from None
