"""Per-patient spread of P(malignant): refits on subsamples, out-of-fold ranges, borderline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lymphomil.data.cohort import labelled_patients, load_cohort
from lymphomil.evaluation.uncertainty import (
    borderline,
    refit_probas,
    refit_spread,
    subsample_plan,
)
from lymphomil.models.base import create_model


def test_subsamples_are_stratified_and_seeded() -> None:
    y = np.array([0] * 10 + [1] * 30)
    plans = subsample_plan(y, 5, 0.8, seed=3)
    assert len(plans) == 5 and all(len(p) == 32 for p in plans)
    assert all(int(y[p].sum()) == 24 for p in plans)  # 80 % of each class
    again = subsample_plan(y, 5, 0.8, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(plans, again))
    assert not all(np.array_equal(a, b) for a, b in zip(plans, subsample_plan(y, 5, 0.8, 4)))


def test_refits_predict_every_target_the_same_way_twice(synthetic_root: Path) -> None:
    cohort = load_cohort(synthetic_root)
    labelled = labelled_patients(cohort)
    targets = cohort.unlabelled
    model = create_model("logreg-compact")
    probas = refit_probas(model, labelled.patients, labelled.y, targets, seed=0, n_refits=6)
    assert probas.shape == (6, len(targets))
    assert np.all((probas >= 0) & (probas <= 1))
    assert np.array_equal(probas, refit_probas(model, labelled.patients, labelled.y, targets,
                                               seed=0, n_refits=6))
    spread = refit_spread(probas)
    assert np.allclose(spread.low, np.percentile(probas, 10, axis=0))
    assert np.allclose(spread.high, np.percentile(probas, 90, axis=0))
    assert np.all(spread.low <= spread.high)
    assert "6 refits" in spread.method
    assert np.array_equal(spread.borderline(), borderline(spread.low, spread.high))


def test_refits_are_read_back_from_the_cache(synthetic_root: Path, tmp_path: Path,
                                             monkeypatch) -> None:
    import lymphomil.evaluation.uncertainty as uncertainty
    from lymphomil.evaluation.uncertainty import cached_refit_probas

    cohort = load_cohort(synthetic_root)
    labelled = labelled_patients(cohort)
    model = create_model("logreg-compact")
    first = cached_refit_probas(tmp_path, model, labelled.patients, labelled.y, cohort.unlabelled,
                                seed=1, name="logreg-compact", n_refits=4)

    def refuse(*args, **kwargs):
        raise AssertionError("refitted although cached")

    monkeypatch.setattr(uncertainty, "refit_probas", refuse)
    again = cached_refit_probas(tmp_path, model, labelled.patients, labelled.y, cohort.unlabelled,
                                seed=1, name="logreg-compact", n_refits=4)
    assert np.array_equal(first, again)
