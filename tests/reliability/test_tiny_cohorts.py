"""Issue 32, class 7: tiny cohorts. Every command on any cohort size, for every registered model,
gives a result (the referral rule left out, and said so, where it cannot be fitted) or states
the minimum it needs; never an internal error. The minimum is each model's
``minimum_per_class`` (models/base.py), checked by the flows before any fit; at the stated
minimum the command works. Rows in docs/bad-inputs.md (issue 32).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from lymphomil.cli import app
from lymphomil.models.base import create_model, list_models
from lymphomil.models.checks import cv_minimum
from tests.reliability.test_bad_inputs import no_traceback, runner

FEATURES = ["--features", "small-cnn:none@32"]  # every image model on fast features
#: the models `make test` runs the matrix on (the issue's example among them); `make
#: test-slow` runs every other registered model (tests/slow_tests.txt)
FAST = ("logreg-compact", "image-logreg", "fusion-alpha")
OTHERS = sorted(set(list_models()) - set(FAST))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 synthetic patients of 2-3 cells: enough of each class to cut any tiny cohort."""
    from lymphomil.data.synth import write_synthetic_cohort

    return write_synthetic_cohort(tmp_path_factory.mktemp("tiny") / "source", n_patients=40,
                                  seed=5, images_per_patient=(2, 3))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-cache")


def tiny(source: Path, out: Path, per_class: int, unlabelled: int = 2) -> Path:
    """``per_class`` reactive and malignant patients of ``source`` and ``unlabelled`` to predict."""
    rows = list(csv.DictReader(open(source / "clinical_annotation.csv", encoding="utf-8")))
    chosen = ([r for r in rows if r["LABEL"] == "0"][:per_class]
              + [r for r in rows if r["LABEL"] == "1"][:per_class]
              + [r for r in rows if r["LABEL"] == "-1"][:unlabelled])
    out.mkdir(parents=True)
    with open(out / "clinical_annotation.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["", "ID", "LABEL", "GENDER", "DOB", "LYMPH_COUNT"])
        for i, row in enumerate(chosen):
            writer.writerow([i, row["ID"], row["LABEL"], row["GENDER"], row["DOB"],
                             row["LYMPH_COUNT"]])
            split = "testset" if row["LABEL"] == "-1" else "trainset"
            shutil.copytree(source / split / row["ID"], out / split / row["ID"])
    return out


def assert_result_or_minimum(result) -> None:
    """Exit 0, or exit 2 with a message that states what the data lacks: never a crash."""
    no_traceback(result)
    text = result.output.replace("\n", " ")
    assert "internal error" not in text, result.output
    if result.exit_code != 0:
        assert result.exit_code == 2, result.output
        assert "needs at least" in text and "fix:" in text, result.output


def every_command(model: str, data: Path, out: Path, cache: Path) -> None:
    """cv (2 folds, the nested referral pass included), train, then predict with what train
    wrote: each gives a result or states the minimum."""
    cache_opt = ["--cache-dir", str(cache)]
    result = runner.invoke(app, ["cv", str(data), "-m", model, "--folds", "2", "--repeats", "1",
                                 *FEATURES, *cache_opt])
    assert_result_or_minimum(result)
    result = runner.invoke(app, ["train", str(data), "-m", model, "--out", str(out / "model"),
                                 *FEATURES, *cache_opt])
    assert_result_or_minimum(result)
    if result.exit_code == 0:
        text = result.output.replace("\n", " ")
        assert "referral rule: refers" in text or "no referral rule: its 5-fold inner CV" in text
        result = runner.invoke(app, ["predict", str(out / "model"), str(data), "--all", "--out",
                                     str(out / "pred.csv"), *cache_opt])
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize("per_class", [1, 2, 3])
@pytest.mark.parametrize("model", FAST)
def test_every_command_on_a_tiny_cohort(source: Path, cache: Path, tmp_path: Path, model: str,
                                        per_class: int) -> None:
    """1+1, 2+2 and 3+3 labelled patients (and 2 to predict) (was: `cv -m image-logreg` on
    2+2 an internal error in the nested referral rule, `train -m logreg` on 2+2 a failure
    inside the rule's inner CV)."""
    data = tiny(source, tmp_path / "data", per_class)
    every_command(model, data, tmp_path, cache)


@pytest.mark.parametrize("per_class", [1, 2, 3])
@pytest.mark.parametrize("model", OTHERS)
def test_every_command_on_a_tiny_cohort_every_model(source: Path, cache: Path, tmp_path: Path,
                                                    model: str, per_class: int) -> None:
    """The same for every other registered model (`make test-slow`)."""
    data = tiny(source, tmp_path / "data", per_class)
    every_command(model, data, tmp_path, cache)


@pytest.mark.parametrize("model", sorted(list_models()))
def test_the_stated_minimum_is_enough(source: Path, cache: Path, tmp_path: Path,
                                      model: str) -> None:
    """At the minimum each command states, it works: train on ``minimum_per_class`` patients
    of each class, a 2-fold CV on what that needs (`make test-slow`)."""
    need = create_model(model).minimum_per_class()
    data = tiny(source, tmp_path / "train", need)
    result = runner.invoke(app, ["train", str(data), "-m", model, "--out",
                                 str(tmp_path / "model"), *FEATURES, "--cache-dir", str(cache)])
    assert_works_or_needs_cells(result)
    data = tiny(source, tmp_path / "cv", cv_minimum(need, 2, adaptive=False))
    result = runner.invoke(app, ["cv", str(data), "-m", model, "--folds", "2", "--repeats", "1",
                                 *FEATURES, "--cache-dir", str(cache)])
    assert_works_or_needs_cells(result)


def assert_works_or_needs_cells(result) -> None:
    """Exit 0; or, for the prototypes' k-means, the number of cells it needs (these patients
    hold 2-3 cells each), stated as such."""
    if result.exit_code != 0:
        text = result.output.replace("\n", " ")
        assert "the prototype model needs at least" in text and " cells " in text, text


def test_run_on_a_tiny_cohort_says_what_it_left_out(source: Path, cache: Path,
                                                    tmp_path: Path) -> None:
    """`run` on 2+2: the CV, the model and the predictions; the refit spread left out and
    said so."""
    data = tiny(source, tmp_path / "data", 2)
    result = runner.invoke(app, ["run", str(data), "--folds", "2", "--repeats", "1",
                                 "--candidates", "image-logreg", *FEATURES, "--out",
                                 str(tmp_path / "run"), "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    assert "no refit spread of the predictions" in result.output.replace("\n", " ")
    assert (tmp_path / "run" / "predictions.csv").is_file()


def test_cv_minimum_counts_the_training_parts() -> None:
    assert cv_minimum(1, 5) == 2  # 2 folds of 2: training parts of 1
    assert cv_minimum(2, 5) == 3  # 3 folds of 3: training parts of 2
    assert cv_minimum(2, 2, adaptive=False) == 4
    assert cv_minimum(3, 2, adaptive=False) == 6
    assert cv_minimum(2, 5, adaptive=False) == 5  # 5 folds need 5 of a class anyway
