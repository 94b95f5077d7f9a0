"""Which calls to trust: a referral rule that auto-calls the firm patients and refers the rest.

A fitted model gives P(malignant); the rule turns it into ``malignant``, ``reactive`` or
``refer`` (a haematologist looks), each with reasons a person reads. The rule ranks patients by a
*firmness score* and refers those below a threshold:

* ``margin``: |P − 0.5|, the distance of the model's probability from the decision threshold;
* ``agreement``: the smallest margin, in the direction of the call, of the probability and of
  each expert the model fuses (a fusion's attribute and image sides, ``part_probas``); negative
  when an expert contradicts the call.

The threshold is fitted **on the training patients only**: an inner stratified K-fold CV gives
each training patient an out-of-fold probability, and the threshold is chosen on those to the
user's target, either ``max_referral`` (refer at most this fraction) or ``target_accuracy`` (the
smallest referral rate whose auto-call balanced accuracy reaches it, capped at
:data:`MAX_ALLOWED_REFERRAL`). The rule is a small pydantic model saved as JSON beside the model.

:func:`nested_referral` measures the rule as a user would meet it: in each outer CV fold the
threshold comes from an inner CV of that fold's training part, and is applied to its test
patients (:mod:`lymphomil.evaluation.crossval`'s plan and seeds; the outer fits are the harness's
own).
"""

from lymphomil.referral.fit import (
    TOO_FEW,
    cached_inner_oof,
    can_fit,
    fit_referral,
    inner_oof,
    model_decisions,
    no_rule_note,
    rule_from_oof,
    rule_minimum,
)
from lymphomil.referral.nested import (
    NestedReferral,
    nested_referral,
    run_referral_task,
    same_as_cv,
)
from lymphomil.referral.rule import (
    DECISIONS,
    DEFAULT_MAX_REFERRAL,
    DEFAULT_SIGNAL,
    INNER_FOLDS,
    MAX_ALLOWED_REFERRAL,
    REFERRAL_JSON,
    SIGNALS,
    Decision,
    ReferralRule,
    check_target,
    choose_threshold,
    decisions_table,
    firmness,
    load_rule,
    referral_card,
    save_rule,
)

__all__ = ["DECISIONS", "DEFAULT_MAX_REFERRAL", "DEFAULT_SIGNAL", "INNER_FOLDS",
           "MAX_ALLOWED_REFERRAL", "REFERRAL_JSON", "SIGNALS", "TOO_FEW", "Decision",
           "NestedReferral", "ReferralRule", "cached_inner_oof", "can_fit", "check_target",
           "choose_threshold", "decisions_table", "firmness", "fit_referral", "inner_oof",
           "load_rule", "model_decisions", "nested_referral", "no_rule_note", "referral_card",
           "rule_from_oof", "rule_minimum", "run_referral_task", "same_as_cv", "save_rule"]
