"""The default referral rule with the OOD checks, nested (issue 25): what a lab meets.

    PYTHONPATH=src python benchmarks/referral_with_ood.py ../shared/data/dlmi-lymphocytosis

One nested pass of ``fusion-mean`` (5 folds × 5 repeats, seed 0: each outer fold's margin
threshold fitted by a 5-fold inner CV on its training part only), and in each outer fold the
OOD checks fitted on that fold's training patients and applied to its test patients. A patient
is referred when the rule or any check refers it (what ``predict`` does). Prints the rule alone,
the rule with the checks on top, and the default: the band fitted to what the checks, held out
on the training part, leave of the budget (``steps.fit_rule``).
"""

from __future__ import annotations

import sys
import time
from datetime import date

import numpy as np

from lymphomil.data.cohort import labelled_patients, load_cohort
from lymphomil.flows.caches import attach_features
from lymphomil.flows.patients import configure_model
from lymphomil.ood import fit_ood_checks
from lymphomil.referral import DEFAULT_MAX_REFERRAL, nested_referral

MODEL = "fusion-mean"
METRICS = ("referred", "auto_balanced_accuracy", "hard_referred", "hard_auto_balanced_accuracy")


def ood_referrals(nested, model, patients) -> np.ndarray:
    """(R, n): each outer fold's checks, fitted on its training part, flag its test patients.
    Also records, per outer fold, the training patients the checks flag when held out
    (``referred_anyway``: what the default rule leaves out of its budget, as `train` does)."""
    flags = np.zeros(nested.proba.shape, dtype=bool)
    for item in nested.inner:
        checks = fit_ood_checks(model, list(patients[item["train"]]))
        results = checks.check(list(patients[item["test"]]))
        flags[item["repeat"], item["test"]] = [r.flagged for r in results]
        item["referred_anyway"] = checks.held_out_flagged_
    return flags


def main(data: str) -> None:
    cohort = load_cohort(data, reference_date=date(2024, 1, 1))
    labelled = labelled_patients(cohort)
    model = configure_model(MODEL)
    patients = np.asarray(attach_features(labelled.patients, [model]), dtype=object)
    start = time.perf_counter()
    nested = nested_referral([(MODEL, model)], patients, labelled.y, folds=5, repeats=5,
                             seed=0)[0]
    middle = time.perf_counter()
    flags = ood_referrals(nested, model, patients)
    print(f"nested pass {middle - start:.0f} s; OOD checks of 25 folds "
          f"{time.perf_counter() - middle:.0f} s")
    print(f"OOD-flagged held-out patients: {flags.mean():.3f} "
          f"(per repeat {', '.join(f'{v:.3f}' for v in flags.mean(axis=1))})")
    print("| rule | referred | auto-call bal. acc. | hard referred | hard auto-call bal. acc. |")
    print("|---|---|---|---|---|")
    budgets = [item.pop("referred_anyway") for item in nested.inner]
    rows = [(f"margin, max_referral {DEFAULT_MAX_REFERRAL}", None, False),
            (f"margin, max_referral {DEFAULT_MAX_REFERRAL} + OOD checks (band fitted alone)",
             flags, False),
            (f"margin, max_referral {DEFAULT_MAX_REFERRAL} + OOD checks, one budget (default)",
             flags, True)]
    for name, extra, shared_budget in rows:
        for item, anyway in zip(nested.inner, budgets):
            item["referred_anyway"] = anyway if shared_budget else None
        f = nested.evaluate(max_referral=DEFAULT_MAX_REFERRAL, also_refer=extra)
        cells = [f"{f[m]['mean']:.3f} ± {f[m]['std']:.3f} [{f[m]['ci_low']:.3f}, "
                 f"{f[m]['ci_high']:.3f}]" for m in METRICS]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
