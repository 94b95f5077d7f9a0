"""The referral rule's signals and targets compared in the nested protocol (issue 25).

    PYTHONPATH=src python benchmarks/referral_signals.py ../shared/data/dlmi-lymphocytosis

One nested pass of ``fusion-mean`` (5 folds × 5 repeats, seed 0: each outer fold's thresholds
fitted by a 5-fold inner CV on its training part only), then every (signal, target) evaluated on
it. Also checks that the pass's outer probabilities equal the plain CV's (the forced call).
"""

from __future__ import annotations

import sys
import time
from datetime import date

from lymphomil.data.cohort import labelled_patients, load_cohort
from lymphomil.flows.caches import attach_features
from lymphomil.flows.cv import run_cv
from lymphomil.flows.patients import configure_model
from lymphomil.referral import nested_referral, same_as_cv

MODEL = "fusion-mean"


def main(data: str) -> None:
    cohort = load_cohort(data, reference_date=date(2024, 1, 1))
    labelled = labelled_patients(cohort)
    model = configure_model(MODEL)
    patients = attach_features(labelled.patients, [model])
    plain = run_cv([MODEL], labelled.patients, labelled.y, folds=5, repeats=5, seed=0)[0]
    start = time.perf_counter()
    nested = nested_referral([(MODEL, model)], patients, labelled.y, folds=5, repeats=5,
                             seed=0)[0]
    print(f"nested pass {time.perf_counter() - start:.0f} s; forced call bit-identical: "
          f"{same_as_cv(nested, plain)}")
    print("| signal | target | referred | auto-call bal. acc. | hard referred | hard auto-call "
          "bal. acc. | target reached in folds |")
    print("|---|---|---|---|---|---|---|")
    for signal in ("margin", "agreement"):
        targets = [{"max_referral": m} for m in (0.1, 0.15, 0.2, 0.25)] + \
            [{"target_accuracy": t} for t in (0.95, 0.97)]
        for target in targets:
            f = nested.evaluate(signal, **target)
            cells = [f"{f[m]['mean']:.3f} ± {f[m]['std']:.3f}" for m in
                     ("referred", "auto_balanced_accuracy", "hard_referred",
                      "hard_auto_balanced_accuracy")]
            name, value = next(iter(target.items()))
            print(f"| {signal} | {name} {value} | " + " | ".join(cells)
                  + f" | {f['rule']['reached_in_folds']}/{f['rule']['folds']} |")


if __name__ == "__main__":
    main(sys.argv[1])
