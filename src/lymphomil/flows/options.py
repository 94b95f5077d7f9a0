"""Every option value is checked before any work: ranges, names, and against the data.

Each check raises a :class:`LymphomilError` that names the option, the value, the bound and a
fix. The bounds also cap memory: no option value can make a command allocate more than a few
GiB before it refuses (a 5000-pixel crop ran a 5000x5000 probe through the backbone before).
Commands call these first; :func:`check_folds_against` once the labelled patients are known,
before any feature is computed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date
from typing import Any

from lymphomil.data.reference_date import DEFAULT_REFERENCE_DATE, MAX_YEAR, MIN_YEAR
from lymphomil.runtime.errors import LymphomilError, did_you_mean

MIN_CROP, MAX_CROP = 8, 224  # the images are resized to 224 x 224; a crop is a centre square
MAX_FOLDS = 50
MAX_REPEATS = 100
MAX_THREADS = 256
MAX_WORKERS = 64
MAX_BATCH = 512  # images per forward pass
#: images in flight (streams x batch): the network's activations at 224 px are ~5 MB an image
#: for EfficientNet-Lite0, so 512 in flight stay within a few GiB
MAX_IN_FLIGHT = 512
MAX_PATIENTS = 100_000  # synthetic cohorts
MAX_IMAGES_PER_PATIENT = 2_000


def _int_range(option: str, value: int, low: int, high: int, fix: str | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise LymphomilError(f"{option} {value!r} is out of range ({low} to {high})",
                             fix=fix or f"give {option} a whole number between {low} and {high}")
    return value


def check_crop(crop: int, option: str = "--crop") -> int:
    return _int_range(option, crop, MIN_CROP, MAX_CROP,
                      f"use {option} between {MIN_CROP} and {MAX_CROP} pixels (the images are "
                      f"224 x 224; {MAX_CROP} = the whole image, 112 the default)")


def check_folds(folds: int, option: str = "--folds") -> int:
    return _int_range(option, folds, 2, MAX_FOLDS, f"use {option} between 2 and {MAX_FOLDS} "
                                                   "(5 is the default)")


def check_repeats(repeats: int, option: str = "--repeats") -> int:
    return _int_range(option, repeats, 1, MAX_REPEATS, f"use {option} between 1 and "
                                                       f"{MAX_REPEATS} (5 is the default)")


def check_threads(threads: int, option: str = "--threads") -> int:
    return _int_range(option, threads, 1, MAX_THREADS, f"use {option} between 1 and "
                                                       f"{MAX_THREADS} (one per core at most)")


def check_workers(workers: int | None, option: str = "--workers") -> int | None:
    if workers is None:
        return None
    return _int_range(option, workers, 1, MAX_WORKERS, f"use {option} between 1 and "
                                                       f"{MAX_WORKERS}, or leave it out (one per "
                                                       "core)")


def check_batch_size(batch: int, option: str = "--batch-size") -> int:
    return _int_range(option, batch, 1, MAX_BATCH, f"use {option} between 1 and {MAX_BATCH} "
                                                   "(16 is the default)")


def check_in_flight(workers: int | None, batch: int) -> None:
    """Streams x batch size bounds the extraction's memory."""
    import os

    streams = workers or len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else workers or (os.cpu_count() or 1)
    if streams * batch > MAX_IN_FLIGHT:
        raise LymphomilError(f"--workers {streams} x --batch-size {batch} = {streams * batch} "
                             f"images in flight, more than {MAX_IN_FLIGHT}",
                             fix=f"lower --batch-size to {max(1, MAX_IN_FLIGHT // streams)} or "
                                 "fewer, or use fewer --workers")


def check_synthetic(patients: int, option: str = "--patients") -> int:
    return _int_range(option, patients, 8, MAX_PATIENTS,
                      f"use {option} between 8 and {MAX_PATIENTS}")


def check_synthetic_seed(seed: int, option: str = "--seed") -> int:
    """A synthetic cohort's seed feeds numpy's generator, which takes no negative seed."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise LymphomilError(f"{option} {seed!r} is negative",
                             fix=f"give {option} a whole number from 0 up (0 is the default)")
    return seed


def check_images_per_patient(low: int, high: int) -> tuple[int, int]:
    _int_range("--min-images", low, 1, MAX_IMAGES_PER_PATIENT)
    _int_range("--max-images", high, 1, MAX_IMAGES_PER_PATIENT)
    if low > high:
        raise LymphomilError(f"--min-images {low} is above --max-images {high}",
                             fix="give --min-images at most --max-images")
    return low, high


def check_fraction(value: float, option: str) -> float:
    import math

    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value < 1.0):
        raise LymphomilError(f"{option} {value!r} is out of range (0 to below 1)",
                             fix=f"give {option} as a share, e.g. 0.25")
    return float(value)


def check_reference_date(value: date, option: str = "--reference-date") -> date:
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise LymphomilError(f"{option} {value.isoformat()} is implausible (years {MIN_YEAR} to "
                             f"{MAX_YEAR})", fix=f"write e.g. {option} {DEFAULT_REFERENCE_DATE}")
    return value


def parse_date(text: str, option: str = "--reference-date") -> date:
    """A YYYY-MM-DD option value, or a clear error naming the option."""
    try:
        value = date.fromisoformat(text.strip())
    except ValueError:
        raise LymphomilError(f"{option} {text!r} is not a date in YYYY-MM-DD",
                             fix=f"write e.g. {option} {DEFAULT_REFERENCE_DATE}") from None
    return check_reference_date(value, option)


def check_model_names(names: Sequence[str], option: str = "--model") -> list[str]:
    """Registered model names, at least one, none twice."""
    # deferred for start-up time (numpy, scikit-learn), as for _feature_modules
    from lymphomil.models.base import known_models, selection_candidates

    names = [str(n).strip() for n in names]
    if not names or not all(names):
        raise LymphomilError(f"{option}: the list of models is empty",
                             fix=f"name at least one model (see `lymphomil models`), e.g. "
                                 f"{option} logreg")
    known = known_models()
    unknown = [c for n in names for c in (selection_candidates(n) or [n]) if c not in known]
    if unknown:
        hints = "".join(did_you_mean(u, known) for u in unknown)
        raise LymphomilError(f"{option}: unknown model(s) {', '.join(map(repr, unknown))}{hints}",
                             fix="`lymphomil models` lists the model names with what each is")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise LymphomilError(f"{option}: model(s) {', '.join(twice)} named twice",
                             fix="name each model once")
    return names


def _feature_modules() -> tuple[Any, Any]:
    """:mod:`lymphomil.features.spec` and :mod:`lymphomil.features.weights`, imported when a
    check runs: deferred for start-up time, as `--help` reads this module (through cli_app)
    and must import no numpy."""
    from lymphomil.features import spec, weights  # numpy: only when a check runs

    return spec, weights


def check_features_option(text: str | None, option: str = "--features") -> str | None:
    """``BACKBONE[:WEIGHTS]@CROP[+tta][+bf16]`` (what ``lymphomil features`` can make, read by
    :meth:`FeatureSpec.parse`): a registered backbone, a crop in range, known flags."""
    if text is None:
        return None
    spec_module, weights = _feature_modules()
    known_backbones, require_extra = weights.known_backbones, weights.require_extra
    try:
        spec = spec_module.FeatureSpec.parse(text)
    except ValueError as exc:
        raise LymphomilError(f"{option} {text!r}: {exc}",
                             fix="write BACKBONE[:WEIGHTS]@CROP[+tta][+bf16], e.g. "
                                 f"{option} efficientnet-lite0@112") from None
    backbones = known_backbones()
    if spec.backbone not in backbones:
        raise LymphomilError(f"{option} {text!r}: unknown backbone {spec.backbone!r}"
                             + did_you_mean(spec.backbone, backbones),
                             fix=f"write BACKBONE@CROP with a backbone of: {', '.join(backbones)}")
    require_extra(spec.backbone)  # a torchvision backbone without its extra: one line naming it
    check_crop(spec.crop, f"{option} crop")
    return text


def features_option(text: str | None, option: str = "--features") -> str | None:
    """``--features`` checked (:func:`check_features_option`) and its weights file, if any,
    written as an absolute path (:func:`absolute_weights`): what every flow stores."""
    return absolute_weights(check_features_option(text, option))


def absolute_weights(text: str | None) -> str | None:
    """``--features`` with a weights file written as an absolute path: the model stores it, and
    ``predict`` (run from another folder) finds and checks that file."""
    if text is None:
        return None
    import os

    FeatureSpec = _feature_modules()[0].FeatureSpec
    spec = FeatureSpec.parse(text)
    if spec.weights in ("imagenet", "none"):
        return text
    path = os.path.abspath(os.path.expanduser(spec.weights))
    if path == spec.weights:
        return text
    return FeatureSpec(spec.backbone, path, spec.crop, spec.tta, spec.precision).label()


def check_folds_against(folds: int, y: Iterable[int], option: str = "--folds") -> None:
    """Stratified folds need at least ``folds`` patients of each class."""
    import numpy as np

    counts = np.bincount(np.asarray(list(y), dtype=int), minlength=2)
    smallest = int(counts.min())
    if folds > smallest:
        which = "malignant (1)" if counts[1] < counts[0] else "reactive (0)"
        if smallest < 2:  # no number of folds works: say what the data lacks
            raise LymphomilError(f"only {smallest} {which} patient(s): cross-validation needs "
                                 "at least 2 patients of each class",
                                 fix="add labelled patients of that class")
        raise LymphomilError(f"{option} {folds} is more than the {smallest} {which} patients, "
                             "the smallest class", fix=f"use {option} {max(2, smallest)} or "
                                                       "fewer, or add labelled patients")


def check_backbone(name: str, option: str = "--backbone") -> str:
    """A known backbone (torch-free: names, not networks) whose extra, if any, is installed."""
    weights = _feature_modules()[1]
    backbones = weights.known_backbones()
    if name not in backbones:
        raise LymphomilError(f"{option}: unknown backbone {name!r}" + did_you_mean(name, backbones),
                             fix=f"choose one of: {', '.join(backbones)} "
                                 "(`lymphomil features --list`)")
    weights.require_extra(name)
    return name
