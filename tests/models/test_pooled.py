"""image-logreg: logistic regression on per-patient pooled cell features."""

from __future__ import annotations

import numpy as np
import pytest

from lymphomil.models.base import create_model
from lymphomil.models.pooled import ImageLogRegModel, pool_bag
from lymphomil.runtime.errors import LymphomilError
from tests.models.conftest import (
    SPEC,
    assert_clone_and_params,
    assert_isolated,
    assert_learns,
    assert_outputs,
    assert_round_trip,
    assert_same_seed_same_result,
)


@pytest.fixture(scope="module", params=["mean", "mean+std"])
def fitted(request, feature_cohort):
    model = create_model("image-logreg", features=SPEC, pooling=request.param)
    return model.fit(feature_cohort.train, feature_cohort.y_train)


def test_learns_and_outputs(fitted, feature_cohort) -> None:
    observed = {"mean": 0.95, "mean+std": 0.975}[fitted.pooling]
    assert_learns(fitted, feature_cohort, minimum=observed - 0.05)
    assert_outputs(fitted, feature_cohort)
    assert fitted.C_ in fitted.Cs
    assert len(fitted.cv_scores_) == len(fitted.Cs)


def test_round_trip_seed_clone_isolation(fitted, feature_cohort, tmp_path) -> None:
    assert_round_trip(fitted, feature_cohort, tmp_path / "model")
    assert_same_seed_same_result(fitted, feature_cohort)
    assert_clone_and_params(fitted, "image-logreg")
    assert_isolated(fitted, feature_cohort)


def test_cell_scores_average_to_the_patient_logit(fitted, feature_cohort) -> None:
    logits = fitted.decision_function(feature_cohort.test)
    cells = fitted.instance_scores(feature_cohort.test)
    np.testing.assert_allclose([c.mean() for c in cells], logits, rtol=1e-6, atol=1e-9)


def test_matches_a_plain_scikit_learn_pipeline(feature_cohort) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = ImageLogRegModel(features=SPEC, Cs=(0.1,)).fit(feature_cohort.train,
                                                            feature_cohort.y_train)
    X = np.stack([pool_bag(p.bag(SPEC), "mean") for p in feature_cohort.train])
    X_test = np.stack([pool_bag(p.bag(SPEC), "mean") for p in feature_cohort.test])
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced",
                                                             max_iter=5000))
    ref.fit(X, feature_cohort.y_train)
    np.testing.assert_allclose(model.predict_proba(feature_cohort.test),
                               ref.predict_proba(X_test), rtol=1e-6)
    assert model.C_ == 0.1 and model.cv_scores_ == []


def test_inner_cv_sees_only_the_training_patients(feature_cohort) -> None:
    """Fitting on a subset never reads the other patients' features."""
    seen = []

    class Spy:
        def load(self, patient, spec, kind="pooled"):
            seen.append(patient.id)
            return feature_cohort.store.load(patient, spec, kind)

    train = np.array([p.with_features(Spy()) for p in feature_cohort.train], dtype=object)
    ImageLogRegModel(features=SPEC).fit(train, feature_cohort.y_train)
    assert set(seen) == {p.id for p in feature_cohort.train}


@pytest.mark.parametrize("bad", [dict(pooling="max"), dict(Cs=(0.0, 1.0)), dict(inner_folds=1)])
def test_bad_options(feature_cohort, bad) -> None:
    with pytest.raises(LymphomilError):
        ImageLogRegModel(features=SPEC, **bad).fit(feature_cohort.train, feature_cohort.y_train)
