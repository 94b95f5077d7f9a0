"""The training flow: what ``lymphomil train``, :func:`lymphomil.train` and the training stage of
``lymphomil run`` do (the referral rule by inner CV, then the model fitted and saved).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Callable

from lymphomil.flows.runcache import train_cached
from lymphomil.flows.steps import (
    LabelledSet,
    check_can_fit,
    configure_model,
    fit_rule,
    train_model,
)
from lymphomil.models.base import PatientModel, describe_model
from lymphomil.outputs import read_json
from lymphomil.referral import check_target, no_rule_note, referral_card
from lymphomil.report.model_card import build_model_card, write_model_card


@dataclass
class Trained:
    model: PatientModel
    #: the referral rule saved with it (lymphomil.referral); None: too few patients of a class
    rule: object | None
    #: why there is no rule (None when there is one), in the words the commands print
    note: str | None = None


def _no_stage(_name: str, _timing: str) -> AbstractContextManager[None]:
    return nullcontext()


def train(name: str, labelled: LabelledSet, out: Path, *, reference_date: date,
          features: str | None = None, seed: int = 0, cache_dir: Path | None = None,
          max_referral: float | None = None, target_accuracy: float | None = None,
          extra: dict | None = None, card: bool = True, reuse: bool = False,
          stage: Callable[[str, str], AbstractContextManager[None]] = _no_stage) -> Trained:
    """Fit the registered model ``name`` on every labelled patient and save its folder in
    ``out`` with its referral rule (fitted first, by inner CV, to the target) and, with
    ``card``, its model card (what it is and what it was trained on; ``run`` writes its own,
    with the CV); ``reuse``: the folder an earlier run trained from the same inputs
    (:func:`lymphomil.flows.runcache.train_cached`). ``stage(announce, timing)`` wraps each of the
    two parts (``run`` announces and times them)."""
    max_referral, target_accuracy = check_target(max_referral, target_accuracy,
                                                 ("max_referral", "target_accuracy"))
    model = configure_model(name, features)
    check_can_fit(model, name, labelled.y)  # too few patients: the minimum, before any work
    with stage("referral rule (inner CV)", "referral rule"):
        rule = fit_rule(model, labelled, name=name, seed=seed, max_referral=max_referral,
                        target_accuracy=target_accuracy, cache_dir=cache_dir)
    note = None if rule is not None else no_rule_note(labelled.y, model)
    with stage(f"train {name}", "train"):
        if reuse:
            model = configure_model(name, features)
            model = train_cached(model, labelled, out, name=name, reference_date=reference_date,
                                 cache_dir=cache_dir, seed=seed, extra=extra, referral=rule)
            return Trained(model, rule, note)

        def write_card(folder: Path) -> None:
            # no CV here: the card says what the model is and what it was trained on; written
            # into the staging folder, so the model appears whole or not at all
            write_model_card(folder, build_model_card(model, name,
                                                      read_json(folder / "metadata.json"),
                                                      description=describe_model(name),
                                                      referral=rule and referral_card(rule)))

        train_model(model, labelled, out, name=name, reference_date=reference_date,
                    cache_dir=cache_dir, seed=seed, extra=extra, referral=rule,
                    finish=write_card if card else None)
    return Trained(model, rule, note)
