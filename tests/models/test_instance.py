"""One-to-one model: per-cell classifier, cell probabilities aggregated per patient."""

from __future__ import annotations

import numpy as np
import pytest

from lymphomil.models.base import create_model
from lymphomil.models.instance import AGGREGATES, InstanceModel, aggregate_scores
from lymphomil.runtime.errors import LymphomilError
from tests.models.conftest import SPEC, assert_learns, assert_outputs

OPTIONS = dict(features=SPEC, max_epochs=25)


@pytest.fixture(scope="module")
def fitted(feature_cohort):
    return create_model("instance", **OPTIONS).fit(feature_cohort.train, feature_cohort.y_train)


def test_learns_and_outputs(fitted, feature_cohort) -> None:
    assert_learns(fitted, feature_cohort, minimum=0.95)  # observed 1.0
    assert_outputs(fitted, feature_cohort)


def test_history_records_each_epoch(fitted) -> None:
    assert 1 <= len(fitted.history_) <= OPTIONS["max_epochs"]
    assert 1 <= fitted.best_epoch_ <= len(fitted.history_)
    for i, record in enumerate(fitted.history_, start=1):
        assert record["epoch"] == i
        assert set(record) == {"epoch", "train_loss", "val_loss", "val_bal_acc", "seconds",
                               "cpu_seconds"}
        assert record["seconds"] >= 0 and record["cpu_seconds"] >= 0


def test_instance_scores_are_cell_probabilities(fitted, feature_cohort) -> None:
    raw = fitted.set_params(calibrate=False)  # same weights, no Platt step at predict time
    try:
        scores = raw.instance_scores(feature_cohort.test)
        proba = raw.predict_proba(feature_cohort.test)[:, 1]
    finally:
        fitted.set_params(calibrate=True)
    for s, p in zip(scores, proba):
        assert np.all((s >= 0) & (s <= 1))
        assert p == pytest.approx(s.mean())  # aggregate="mean"


@pytest.mark.parametrize("aggregate", ["max", "top-k", "vote"])  # min cannot: most
# of a malignant patient's cells look reactive here
def test_each_aggregate_learns_once_calibrated(feature_cohort, aggregate: str) -> None:
    model = InstanceModel(features=SPEC, aggregate=aggregate, top_k=5, max_epochs=15)
    observed = {"max": 0.875, "top-k": 0.975, "vote": 0.975}[aggregate]
    assert_learns(model.fit(feature_cohort.train, feature_cohort.y_train), feature_cohort,
                  minimum=observed - 0.05)


def test_aggregates() -> None:
    probs = np.array([0.1, 0.9, 0.6, 0.2, 0.7])
    assert aggregate_scores(probs, "min", 2) == pytest.approx(0.1)
    assert aggregate_scores(probs, "max", 2) == pytest.approx(0.9)
    assert aggregate_scores(probs, "mean", 2) == pytest.approx(0.5)
    assert aggregate_scores(probs, "vote", 2) == pytest.approx(0.6)
    assert aggregate_scores(probs, "top-k", 2) == pytest.approx(0.8)
    assert aggregate_scores(probs, "top-k", 50) == pytest.approx(0.5)  # k capped at n
    assert set(AGGREGATES) == {"min", "max", "mean", "vote", "top-k"}


def test_campanella_top_k_training(feature_cohort) -> None:
    model = InstanceModel(features=SPEC, aggregate="top-k", top_k=5, train_on="top-k",
                          lr=1e-2, max_epochs=40).fit(feature_cohort.train, feature_cohort.y_train)
    assert_learns(model, feature_cohort, minimum=0.925)  # observed 0.975


@pytest.mark.parametrize("balance", ["none", "sampler"])
def test_balance_options_run(feature_cohort, balance: str) -> None:
    options = dict(features=SPEC, max_epochs=3, hidden=0)
    model = InstanceModel(balance=balance, **options).fit(feature_cohort.train,
                                                          feature_cohort.y_train)
    assert len(model.history_) == 3  # patience 6: no early stop within 3 epochs
    assert 1 <= model.best_epoch_ <= 3
    weighted = InstanceModel(balance="weighted", **options).fit(feature_cohort.train,
                                                                feature_cohort.y_train)
    assert not np.array_equal(model.predict_proba(feature_cohort.test),
                              weighted.predict_proba(feature_cohort.test))  # the option acts


@pytest.mark.parametrize("bad", [dict(aggregate="median"), dict(balance="smote"),
                                 dict(max_epochs=0), dict(lr=-1.0), dict(features="toy@abc")])
def test_bad_options_are_user_errors(feature_cohort, bad) -> None:
    with pytest.raises(LymphomilError):
        InstanceModel(**{**OPTIONS, **bad}).fit(feature_cohort.train, feature_cohort.y_train)


def test_unfitted_and_wrong_dimension(feature_cohort, fitted) -> None:
    with pytest.raises(LymphomilError, match="not fitted"):
        InstanceModel(features=SPEC).predict_proba(feature_cohort.test)
    from tests.models.conftest import with_new_features

    odd = with_new_features(feature_cohort.test[0], {"pooled": np.zeros((4, 3))})
    with pytest.raises(LymphomilError, match="expects"):
        fitted.predict_proba([odd])
