"""The referral rule: threshold semantics, reasons, save/load, nesting (spy), forced call kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lymphomil.evaluation.crossval import cross_validate
from lymphomil.models.base import PatientModel, create_model, register_class
from lymphomil.models.fusion import FusionModel
from lymphomil.referral import (
    MAX_ALLOWED_REFERRAL,
    REFERRAL_JSON,
    ReferralRule,
    choose_threshold,
    firmness,
    load_rule,
    nested_referral,
    rule_from_oof,
    same_as_cv,
    save_rule,
)
from lymphomil.runtime.errors import LymphomilError
from tests.evaluation.test_crossval import make_patients

LOG: list[tuple[str, frozenset]] = []


@register_class
class ReferralSpy(PatientModel):
    """Records every fit's and every prediction's patients; predicts from the count."""

    family = "spy"

    def __init__(self, random_state: int = 0):
        self.random_state = random_state

    def fit(self, patients, y):
        LOG.append(("fit", frozenset(p.id for p in patients)))
        self.is_fitted_ = True
        return self

    def predict_proba(self, patients):
        LOG.append(("predict", frozenset(p.id for p in patients)))
        p = np.array([min(1.0, q.lymph_count / 15.0) for q in patients])
        return np.column_stack([1 - p, p])


# --------------------------------------------------------------------------- thresholds

#: margins exact in binary: 0.4375 0.375 0.125 0.125 0.1875 0.375 0.4375 0.25 0.25 0.03125
PROBA = np.array([0.0625, 0.125, 0.375, 0.625, 0.6875, 0.875, 0.9375, 0.25, 0.75, 0.53125])


def test_max_referral_refers_at_most_that_fraction() -> None:
    proba = PROBA
    y = np.array([0, 0, 1, 0, 1, 1, 1, 0, 1, 1])
    score = firmness(proba)
    for fraction, expected in ((0.05, 0), (0.1, 1), (0.2, 1), (0.35, 3), (0.45, 4)):
        threshold, reached = choose_threshold(score, y, proba, max_referral=fraction)
        assert reached and (score < threshold).sum() == expected
    # the least firm are referred; a tie at the limit (0.375 and 0.625) is never split
    threshold, _ = choose_threshold(score, y, proba, max_referral=0.35)
    assert set(np.flatnonzero(score < threshold)) == {2, 3, 9}


def test_target_accuracy_takes_the_smallest_rate_that_reaches_it() -> None:
    proba = PROBA
    y = np.array([0, 0, 1, 0, 1, 1, 1, 0, 1, 0])  # wrong: 0.375, 0.625, 0.53125
    score = firmness(proba)
    threshold, reached = choose_threshold(score, y, proba, target_accuracy=1.0)
    assert reached and (score < threshold).sum() == 3  # the three wrong calls, nothing more
    threshold, reached = choose_threshold(score, y, proba, target_accuracy=0.5001)
    assert reached and (score < threshold).sum() == 0  # already reached: refer nobody
    assert threshold == 0.0  # a finite threshold: the rule's JSON stays standard JSON
    # never reached below the cap: the cap's rate, flagged
    bad_y = 1 - y
    threshold, reached = choose_threshold(score, bad_y, proba, target_accuracy=0.99)
    assert not reached and (score < threshold).sum() <= MAX_ALLOWED_REFERRAL * len(y)
    rule = rule_from_oof(proba, bad_y, target_accuracy=0.99)
    assert not rule.reached and "not reached" in rule.describe()


def test_referrals_for_other_reasons_come_out_of_the_budget() -> None:
    proba = PROBA
    y = np.array([0, 0, 1, 0, 1, 1, 1, 0, 1, 1])
    score = firmness(proba)
    # two firm patients (margins 0.4375, 0.375) referred by the OOD checks anyway
    anyway = np.zeros(len(y), dtype=bool)
    anyway[[0, 5]] = True
    for fraction, band in ((0.1, 0), (0.2, 0), (0.35, 1), (0.45, 1), (0.55, 3)):
        threshold, _ = choose_threshold(score, y, proba, max_referral=fraction,
                                        referred_anyway=anyway)
        referred = (score < threshold) | anyway
        assert referred.sum() <= max(fraction * len(y), anyway.sum())
        assert (score < threshold).sum() == band
    # an anyway-referred patient inside the band is counted once
    inside = np.zeros(len(y), dtype=bool)
    inside[9] = True  # the least firm
    threshold, _ = choose_threshold(score, y, proba, max_referral=0.1, referred_anyway=inside)
    assert set(np.flatnonzero(score < threshold)) == {9}
    rule = rule_from_oof(proba, y, max_referral=0.2, referred_anyway=anyway)
    assert rule.inner_referred == pytest.approx(0.2) and rule.inner_referred_other == 0.2
    assert "by the OOD checks" in rule.describe()
    # without others the same target spends the budget on the band
    assert rule_from_oof(proba, y, max_referral=0.2).inner_referred_other == 0.0


def test_exactly_one_target() -> None:
    with pytest.raises(LymphomilError, match="exactly one"):
        choose_threshold(np.zeros(3), np.array([0, 1, 0]), np.zeros(3))
    from lymphomil.referral import check_target

    assert check_target(None, None) == (0.2, None)
    with pytest.raises(LymphomilError, match="exclude each other"):
        check_target(0.2, 0.97)
    with pytest.raises(LymphomilError, match="not a fraction"):
        check_target(1.5, None)


# --------------------------------------------------------------------------- decisions


def test_decisions_and_their_reasons() -> None:
    rule = ReferralRule(signal="margin", threshold=0.21, max_referral=0.2, reached=True,
                        inner_folds=5, n_patients=100, inner_referred=0.2)
    decided = rule.decide([0.9, 0.58, 0.1, 0.2], extra_reasons=[[], [], ["stain unlike the "
                                                                         "training cohort"], []])
    assert [d.decision for d in decided] == ["malignant", "refer", "refer", "reactive"]
    assert decided[1].reason == ("P(malignant) 0.58 is within the uncertain band 0.29–0.71 "
                                 "fitted on the training patients")
    assert decided[2].reasons == ("stain unlike the training cohort",)
    assert decided[0].reasons == ()


def test_agreement_refers_when_the_experts_disagree() -> None:
    rule = ReferralRule(signal="agreement", threshold=0.1, max_referral=0.2, reached=True,
                        inner_folds=5, n_patients=100, inner_referred=0.2,
                        parts=["attributes", "images"])
    parts = {"attributes": [0.81, 0.9], "images": [0.22, 0.95]}
    decided = rule.decide([0.515, 0.92], parts)
    assert decided[0].decision == "refer"
    assert "the attributes and images sides disagree (0.81 vs 0.22)" in decided[0].reasons
    assert decided[1].decision == "malignant"
    with pytest.raises(LymphomilError, match="does not give"):
        rule.decide([0.5], None)


# --------------------------------------------------------------------------- save / load


def test_save_load_keeps_the_rule(tmp_path: Path) -> None:
    proba = np.linspace(0.01, 0.99, 40)
    y = (proba > 0.45).astype(int)
    rule = rule_from_oof(proba, y, max_referral=0.2)
    save_rule(tmp_path, rule)
    assert load_rule(tmp_path) == rule
    assert load_rule(tmp_path / "elsewhere") is None  # a folder trained before rules


@pytest.mark.parametrize("edit", [{"threshold": "big"}, {"signal": "vibes"}, {"extra": 1},
                                  {"format": 2}, {"max_referral": 1.5}])
def test_an_edited_rule_is_a_clear_error(tmp_path: Path, edit: dict) -> None:
    rule = rule_from_oof(np.linspace(0.01, 0.99, 20), np.r_[np.zeros(10), np.ones(10)],
                         max_referral=0.2)
    data = {**rule.model_dump(mode="json"), **edit}
    (tmp_path / REFERRAL_JSON).write_text(json.dumps(data))
    words = "newer than this lymphomil reads" if "format" in edit else (
        "not describe a valid referral rule")
    with pytest.raises(LymphomilError, match=words):
        load_rule(tmp_path)
    (tmp_path / REFERRAL_JSON).write_text("{not json")
    with pytest.raises(LymphomilError, match="not valid JSON"):
        load_rule(tmp_path)


# --------------------------------------------------------------------------- nesting


def test_thresholds_of_a_fold_never_read_its_test_patients() -> None:
    patients, y = make_patients(40)
    LOG.clear()
    nested = nested_referral([("spy", ReferralSpy())], patients, y, folds=4, repeats=2,
                             seed=0, inner_folds=3)[0]
    ids = np.array([p.id for p in patients])
    # per outer fold: outer fit + predict, then 3 inner (fit, predict) pairs
    per_task = 2 + 2 * 3
    assert len(LOG) == 2 * 4 * per_task
    for task in range(8):
        r, k = divmod(task, 4)
        test_ids = set(ids[nested.folds[r] == k])
        entries = LOG[task * per_task:(task + 1) * per_task]
        assert entries[1] == ("predict", frozenset(test_ids))  # the outer call of the test part
        for kind, seen in entries[:1] + entries[2:]:  # everything the threshold is fitted from
            assert not seen & test_ids, (kind, task)
    for item in nested.inner:  # the inner out-of-fold probabilities cover the training part
        assert np.isfinite(item["proba"]).all() and len(item["proba"]) == len(item["train"])
    refer, rules = nested.referred(max_referral=0.25)
    assert len(rules) == 8 and refer.shape == (2, 40)
    assert all(r.n_patients == 30 for r in rules)


def test_the_forced_call_is_unchanged_by_the_nested_pass() -> None:
    patients, y = make_patients(40)
    # no grid search: the Table-2 grid inside 8 outer × 6 inner fits took minutes
    for name, model in (("logreg", create_model("logreg", param_grid="none")),
                        ("f", FusionModel(attribute_model=create_model("logreg",
                                                                       param_grid="none"),
                                          image_model=ReferralSpy(), rule="mean"))):
        plain = cross_validate(model, patients, y, folds=4, repeats=2, seed=3, model_name=name)
        nested = nested_referral([(name, model)], patients, y, folds=4, repeats=2, seed=3)[0]
        assert same_as_cv(nested, plain)  # bit-identical out-of-fold probabilities
        figure = nested.evaluate("agreement" if name == "f" else "margin", max_referral=0.2,
                                 n_bootstrap=50)
        assert 0 <= figure["referred"]["mean"] <= 0.35
        assert figure["balanced_accuracy"]["mean"] == pytest.approx(
            plain.summary(n_bootstrap=10)["balanced_accuracy"]["mean"])
    assert set(nested.parts) == {"attributes", "images"}


# --------------------------------------------------------------------------- risk–coverage


def test_risk_coverage_of_out_of_fold_probabilities() -> None:
    from lymphomil.referral.coverage import aurc, risk_coverage

    patients, y = make_patients(40)
    result = cross_validate(ReferralSpy(), patients, y, folds=4, repeats=2, seed=0,
                            model_name="spy")
    rc = risk_coverage(result, n_bootstrap=50)
    at = rc["balanced_accuracy_at_coverage"]
    assert at["1.00"]["mean"] == pytest.approx(
        result.summary(n_bootstrap=10)["balanced_accuracy"]["mean"])
    assert {"1.00", "0.95", "0.90", "0.85", "0.80", "0.70"} == set(at)
    assert len(rc["curve"]["coverage"]) == 40 and rc["curve"]["coverage"][-1] == 1.0
    perfect = np.array([[0.9, 0.1, 0.8, 0.3]])
    assert aurc(perfect, np.array([1, 0, 1, 0]))[0] == 0.0
    # one wrong call, least firm: error only at full coverage (1/4) -> AURC (1/4) / 4
    assert aurc(np.array([[0.9, 0.1, 0.8, 0.45]]), np.array([1, 0, 1, 1]))[0] == 1 / 16
