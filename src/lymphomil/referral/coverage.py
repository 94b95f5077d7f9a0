"""Risk–coverage of a model's out-of-fold probabilities: what referring the least firm buys.

In each CV repeat the patients are ranked by their margin |P − 0.5|; at coverage c the firmest
round(c·n) are auto-called and the rest referred. The balanced accuracy of the auto-calls is
reported per coverage as mean ± std over repeats with a 95 % patient-bootstrap interval (the
patients are resampled, then ranked within the draw), and the area under the risk–coverage curve
(AURC: the mean over k = 1..n of the error rate of the k firmest calls; lower is better).

This ranking uses the out-of-fold probabilities themselves, so it shows what the margin can buy;
the referral rule's own figure, with thresholds fitted inside each training part, is
:func:`lymphomil.referral.nested_referral`.
"""

from __future__ import annotations

import numpy as np

from lymphomil.evaluation.crossval import CVResult, bootstrap_summary, derive_seed, format_metric
from lymphomil.evaluation.metrics import balanced_accuracy
from lymphomil.referral import DEFAULT_SIGNAL, check_target, same_as_cv

COVERAGES = (1.0, 0.95, 0.9, 0.85, 0.8, 0.7)


def _firmest(proba: np.ndarray, k: int | np.ndarray) -> np.ndarray:
    """Mask of the ``k`` largest margins along the last axis (ties: the earlier patient)."""
    order = np.argsort(-np.abs(proba - 0.5), axis=-1, kind="stable")
    ranks = np.argsort(order, axis=-1, kind="stable")
    return ranks < np.asarray(k)[..., None] if np.ndim(k) else ranks < k


def _count(coverage: float, n: int) -> int:
    return max(1, int(round(coverage * n)))


def coverage_curve(proba: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    """Mean over repeats, at every coverage k/n, of the auto-calls' balanced accuracy and error
    (the points of the risk–coverage figure)."""
    proba = np.atleast_2d(proba)
    n = proba.shape[1]
    ks = np.arange(1, n + 1)
    bal, err = np.zeros(n), np.zeros(n)
    for p in proba:
        masks = _firmest(np.broadcast_to(p, (n, n)), ks)  # (n coverages, n patients)
        pred = p[None, :] >= 0.5
        bal += balanced_accuracy(np.broadcast_to(pred, masks.shape), y[None, :], masks)
        err += ((pred != (y[None, :] == 1)) & masks).sum(-1) / ks
    r = proba.shape[0]
    return {"coverage": (ks / n).round(6).tolist(),
            "balanced_accuracy": [None if not np.isfinite(v) else float(v) for v in bal / r],
            "error": (err / r).tolist()}


def aurc(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Area under the risk–coverage curve of each row of ``proba`` (..., n)."""
    n = proba.shape[-1]
    order = np.argsort(-np.abs(proba - 0.5), axis=-1, kind="stable")
    wrong = np.take_along_axis((proba >= 0.5) != (y == 1), order, axis=-1)
    return (np.cumsum(wrong, axis=-1) / np.arange(1, n + 1)).mean(-1)


def risk_coverage(result: CVResult, coverages: tuple[float, ...] = COVERAGES,
                  n_bootstrap: int = 1000) -> dict:
    """Per coverage, the auto-calls' balanced accuracy (margin ranking); the AURC; the curve."""
    y = result.y
    n = len(y)

    def values(index: np.ndarray | None, r: int) -> dict[str, np.ndarray]:
        p = result.proba[r] if index is None else result.proba[r][index]
        yy = y if index is None else y[index]
        out = {f"{c:.2f}": balanced_accuracy(p >= 0.5, yy, _firmest(p, _count(c, n)))
               for c in coverages}
        out["aurc"] = aurc(p, yy)
        return out

    summary = bootstrap_summary(values, result.proba.shape[0], n, n_bootstrap,
                                derive_seed(result.seed, "bootstrap-coverage", result.model_name))
    return {"ranking": "margin |P - 0.5| of the out-of-fold probability, per repeat",
            "balanced_accuracy_at_coverage": {k: v for k, v in summary.items() if k != "aurc"},
            "aurc": summary["aurc"], "curve": coverage_curve(result.proba, y)}


def cv_trust(results: list[CVResult], nested: dict, *, signal: str | None = None,
             max_referral: float | None = None, target_accuracy: float | None = None,
             n_bootstrap: int = 1000) -> dict[str, dict]:
    """Per model: its risk–coverage and, where ``nested`` (name -> NestedReferral) has it, the
    nested figure of the referral rule and whether the outer probabilities stayed bit-identical
    to the harness's (the forced call unchanged)."""
    max_referral, target_accuracy = check_target(max_referral, target_accuracy)
    out = {}
    for result in results:
        entry = {"risk_coverage": risk_coverage(result, n_bootstrap=n_bootstrap)}
        if result.model_name in nested:
            item = nested[result.model_name]
            figure = item.evaluate(signal or DEFAULT_SIGNAL, max_referral, target_accuracy,
                                   n_bootstrap=n_bootstrap)
            figure["forced_call_unchanged"] = same_as_cv(item, result)
            entry["referral"] = figure
        out[result.model_name] = entry
    return out


def _cell(stats: dict | None, digits: int = 3) -> str:
    return "n/a" if not stats else format_metric(stats, digits)


def trust_markdown(trust: dict[str, dict]) -> str:
    """The risk–coverage and referral tables of ``cv_trust`` as markdown."""
    cover = list(next(iter(trust.values()))["risk_coverage"]["balanced_accuracy_at_coverage"]) \
        if trust else []
    lines = ["", "Auto-call balanced accuracy at coverage (margin ranking of the out-of-fold "
             "probabilities; mean ± std over repeats [95 % patient bootstrap]):", "",
             "| model | " + " | ".join(f"{float(c):.0%}" for c in cover) + " | AURC |",
             "|---|" + "---|" * (len(cover) + 1)]
    for name, entry in trust.items():
        rc = entry["risk_coverage"]
        lines.append(f"| {name} | " + " | ".join(
            _cell(rc["balanced_accuracy_at_coverage"][c]) for c in cover)
            + f" | {_cell(rc['aurc'], 4)} |")
    nested = {name: e["referral"] for name, e in trust.items() if "referral" in e}
    if nested:
        rule = next(iter(nested.values()))["rule"]
        target = (f"max_referral {rule['max_referral']}" if rule["max_referral"] is not None
                  else f"target_accuracy {rule['target_accuracy']}")
        lines += ["", f"Referral rule, nested (signal {rule['signal']}, {target}; thresholds "
                      "fitted by inner CV on each outer training part only):", "",
                  "| model | referred | auto-call bal. acc. | hard referred | hard auto-call "
                  "bal. acc. | forced bal. acc. | target reached in folds | forced call "
                  "unchanged |", "|---|---|---|---|---|---|---|---|"]
        for name, f in nested.items():
            lines.append(" | ".join([
                f"| {name}", _cell(f["referred"]), _cell(f["auto_balanced_accuracy"]),
                _cell(f["hard_referred"]), _cell(f["hard_auto_balanced_accuracy"]),
                _cell(f["balanced_accuracy"]),
                f"{f['rule']['reached_in_folds']}/{f['rule']['folds']}",
                f"{'yes' if f['forced_call_unchanged'] else 'NO'} |"]))
    return "\n".join(lines) + "\n"
