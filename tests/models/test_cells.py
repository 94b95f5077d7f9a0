"""cell-topk, prototypes, the ensemble and the nested selection (issue 17 items 3-5, 7)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from lymphomil.evaluation.crossval import cross_validate, derive_seed, with_seed
from lymphomil.models.base import create_model
from lymphomil.models.blocks import top_k_mean
from lymphomil.models.cells import CellTopKModel, _cell_weights
from lymphomil.models.checks import resolve_seed
from lymphomil.models.ensemble import EnsembleModel, SelectModel
from lymphomil.models.prototypes import PrototypeModel, histogram
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

CELL = dict(features=SPEC, ks=(0, 8, 2), C=0.1)
PROTO = dict(features=SPEC, n_prototypes=6, cells_per_patient=16)


@pytest.fixture(scope="module")
def cells(feature_cohort):
    return CellTopKModel(**CELL).fit(feature_cohort.train, feature_cohort.y_train)


@pytest.fixture(scope="module")
def prototypes(feature_cohort):
    return PrototypeModel(**PROTO).fit(feature_cohort.train, feature_cohort.y_train)


def assert_nested_round_trip(model, cohort, folder) -> None:
    """Save/load of a model holding models: same parameters (as saved JSON), same outputs."""
    from lymphomil.models.base import encode_param, load_model

    model.save(folder)
    loaded = load_model(folder)
    assert encode_param(loaded.get_params(deep=False)) == encode_param(model.get_params(deep=False))
    np.testing.assert_array_equal(loaded.predict_proba(cohort.test),
                                  model.predict_proba(cohort.test))
    head = cohort.test[:5]
    for a, b in zip(loaded.instance_scores(head), model.instance_scores(head)):
        np.testing.assert_array_equal(a, b)


def test_every_patient_and_each_class_weigh_the_same() -> None:
    y = np.array([0, 1, 1, 1])
    sizes = np.array([5, 2, 10, 3])
    w = _cell_weights(y, sizes)
    per_patient = np.add.reduceat(w, np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    assert per_patient[0] == pytest.approx(per_patient[1:].sum())  # the classes
    np.testing.assert_allclose(per_patient[1:], per_patient[1])  # patients of one class
    assert w.mean() == pytest.approx(1.0)


def test_cell_topk_learns_and_keeps_the_contract(cells, feature_cohort, tmp_path) -> None:
    # the toy data separate perfectly at the patient level; a cell classifier reaches ≥ 0.9
    assert_learns(cells, feature_cohort, minimum=0.9)
    assert_outputs(cells, feature_cohort)
    assert cells.k_ in (0, 8, 2) and len(cells.inner_auc_) == 3
    assert_round_trip(cells, feature_cohort, tmp_path / "model")
    assert_same_seed_same_result(cells, feature_cohort)
    assert_clone_and_params(cells, "cell-topk")
    assert_isolated(cells, feature_cohort)


def test_the_patient_logit_is_the_platt_map_of_the_top_k_mean(cells, feature_cohort) -> None:
    scores = cells.instance_scores(feature_cohort.test)
    expected = [cells.platt_slope_ * top_k_mean(s, cells.k_) + cells.platt_offset_ for s in scores]
    np.testing.assert_allclose(cells.decision_function(feature_cohort.test), expected)
    # malignant cells (shifted along the toy direction) score higher than reactive patients' cells
    y = feature_cohort.y_test
    top = np.array([s.max() for s in scores])
    assert top[y == 1].mean() > top[y == 0].mean() + 1.0


def test_cell_topk_with_attributes_reads_age_and_count(feature_cohort) -> None:
    model = CellTopKModel(attributes=True, **CELL).fit(feature_cohort.train, feature_cohort.y_train)
    assert model.coef_.shape == (model.n_features_ + 2,)
    # the toy cohort's ages and counts are noise, which the cell classifier partly fits (0.775)
    assert_learns(model, feature_cohort, minimum=0.75)
    patient = feature_cohort.test[0]
    older = type(patient)(**{**patient.__dict__, "age": patient.age + 30})
    assert model.decision_function(np.array([older], dtype=object))[0] != pytest.approx(
        model.decision_function(np.array([patient], dtype=object))[0])


def test_prototypes_learn_and_keep_the_contract(prototypes, feature_cohort, tmp_path) -> None:
    assert_learns(prototypes, feature_cohort, minimum=0.8)
    assert_outputs(prototypes, feature_cohort)
    assert prototypes.centres_.shape == (6, prototypes.n_features_)
    assert_round_trip(prototypes, feature_cohort, tmp_path / "model")
    assert_same_seed_same_result(prototypes, feature_cohort)
    assert_clone_and_params(prototypes, "prototypes")
    assert_isolated(prototypes, feature_cohort)


def test_histogram_is_proportions_and_entropy() -> None:
    h = histogram(np.array([0, 0, 1, 3]), 4)
    np.testing.assert_allclose(h[:4], [0.5, 0.25, 0.0, 0.25])
    assert h[4] == pytest.approx(-(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25)))


def _spy_train(feature_cohort, seen: list):
    class Spy:
        def load(self, patient, spec, kind="pooled"):
            seen.append(patient.id)
            return feature_cohort.store.load(patient, spec, kind)

    return np.array([p.with_features(Spy()) for p in feature_cohort.train], dtype=object)


@pytest.mark.parametrize("make", [lambda: CellTopKModel(**CELL), lambda: PrototypeModel(**PROTO),
                                  lambda: SelectModel(candidates=(CellTopKModel(**CELL),
                                                                  PrototypeModel(**PROTO)))],
                         ids=["cell-topk", "prototypes", "select"])
def test_fits_read_only_the_patients_they_are_given(feature_cohort, make) -> None:
    """The cell classifier, the k-means and the inner selection never see other patients."""
    seen: list[str] = []
    train = _spy_train(feature_cohort, seen)
    make().fit(train[:30], feature_cohort.y_train[:30])
    assert seen and set(seen) <= {p.id for p in feature_cohort.train[:30]}


def test_ensemble_is_the_mean_of_its_members(feature_cohort, tmp_path) -> None:
    members = (CellTopKModel(**CELL), PrototypeModel(**PROTO))
    ensemble = EnsembleModel(members=members).fit(feature_cohort.train, feature_cohort.y_train)
    seed = resolve_seed(ensemble.random_state)
    expected = np.mean([with_seed(clone(m), derive_seed(seed, "member", i, 0))
                        .fit(feature_cohort.train, feature_cohort.y_train)
                        .predict_proba(feature_cohort.test)[:, 1]
                        for i, m in enumerate(members)], axis=0)
    np.testing.assert_allclose(ensemble.predict_proba(feature_cohort.test)[:, 1], expected)
    assert_nested_round_trip(ensemble, feature_cohort, tmp_path / "model")
    bagged = EnsembleModel(members=members[:1], bootstrap=3).fit(feature_cohort.train,
                                                                feature_cohort.y_train)
    assert len(bagged.models_) == 3
    assert_learns(bagged, feature_cohort, minimum=0.9)
    assert_same_seed_same_result(bagged, feature_cohort)


class _Constant(CellTopKModel):
    """A candidate that always says 'malignant' (inner balanced accuracy 0.5)."""

    def predict_proba(self, patients):
        return np.tile([0.2, 0.8], (len(patients), 1))


def test_selection_picks_the_better_candidate_and_refits_it(feature_cohort, tmp_path,
                                                           register_for_test) -> None:
    register_for_test(_Constant)
    select = SelectModel(candidates=(_Constant(**CELL), CellTopKModel(**CELL)))
    select.fit(feature_cohort.train, feature_cohort.y_train)
    assert select.chosen_ == "CellTopKModel#1"
    assert select.inner_scores_["CellTopKModel#1"] > select.inner_scores_["_Constant#0"] == 0.5
    assert_learns(select, feature_cohort, minimum=0.9)
    assert_nested_round_trip(select, feature_cohort, tmp_path / "model")


def test_selection_by_name_and_its_outer_cv(feature_cohort) -> None:
    model = create_model("select:image-logreg,cell-topk", inner_folds=2)
    assert model.candidates == ("image-logreg", "cell-topk")
    with pytest.raises(LymphomilError, match="unknown or missing"):
        create_model("select:image-logreg,nonsense")
    nested = SelectModel(candidates=(CellTopKModel(**CELL), PrototypeModel(**PROTO)), inner_folds=2)
    result = cross_validate(nested, feature_cohort.train, feature_cohort.y_train, folds=2,
                            repeats=1, model_name="select")
    assert result.summary(n_bootstrap=10)["balanced_accuracy"]["mean"] >= 0.85


@pytest.mark.parametrize("bad", [dict(C=0.0), dict(ks=()), dict(ks=(-1,)), dict(inner_folds=1)])
def test_bad_cell_options(feature_cohort, bad) -> None:
    with pytest.raises(LymphomilError):
        CellTopKModel(**{**CELL, **bad}).fit(feature_cohort.train, feature_cohort.y_train)


def test_bad_ensemble_and_selection_options(feature_cohort) -> None:
    with pytest.raises(LymphomilError, match="at least one member"):
        EnsembleModel(members=()).fit(feature_cohort.train, feature_cohort.y_train)
    with pytest.raises(LymphomilError, match="no candidates"):
        SelectModel(candidates=()).fit(feature_cohort.train, feature_cohort.y_train)


def test_features_override_reaches_every_ensemble_member() -> None:
    from lymphomil.flows.patients import configure_model

    fusion = configure_model("fusion-mean-seeds", "toy@112")
    members = fusion.image_model.members
    assert len(members) == 5 and all(m.features == "toy@112" for m in members)


def test_cell_scores_do_not_depend_on_k_or_the_platt_map(cells, feature_cohort) -> None:
    """What the report's galleries rely on: the cheap scorer (no inner CV) ranks cells exactly
    as the tuned cell-topk does."""
    cheap = CellTopKModel(**{**CELL, "ks": (0,)}, calibrate=False)
    cheap.fit(feature_cohort.train, feature_cohort.y_train)
    test = feature_cohort.test
    for a, b in zip(cheap.instance_scores(test), cells.instance_scores(test)):
        np.testing.assert_array_equal(a, b)
