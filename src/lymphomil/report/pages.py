"""The reports of ``lymphomil run`` and ``lymphomil predict --report``: each patient's entry
(call, probability, cells, decision), the files a run folder lists, and the run's model card;
:mod:`lymphomil.report.render` draws them. What a page shows is computed by a flow and handed
in (the cells' scores among it): the report draws, it never fits or scores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lymphomil.data.synth import MARKER
from lymphomil.evaluation.crossval import CVResult
from lymphomil.models.base import describe_model, library_versions, selection_candidates
from lymphomil.outputs import read_json
from lymphomil.referral import decisions_table, referral_card
from lymphomil.report.model_card import (
    MODEL_CARD_JSON,
    build_model_card,
    score_units,
    write_model_card,
)
from lymphomil.report.render import (
    PatientCall,
    ReportContext,
    calibration_stats,
    oof_errors,
    render_report,
)
from lymphomil.runtime.errors import LymphomilError


@dataclass
class CellEvidence:
    """What ranks a report's cells: the scoring model's name and what its scores are
    (``instance_score_units``), and its cell scores of the predicted patients and of the
    labelled ones the chosen model gets wrong out of fold (:func:`oof_errors`' order)."""

    scorer: str
    units: str | None
    predicted: Sequence[Any] | None
    wrong: Sequence[Any] | None = field(default_factory=list)


def referral_metrics(rule, decisions) -> dict:
    """The rule and what it decided, for metrics.json and the model card."""
    return {**referral_card(rule),
            "predicted": decisions_table(decisions) if decisions is not None else None}


def patient_calls(pred, spread=None, scores: Sequence[Any] | None = None) -> list:
    """One report entry per predicted patient: call, probability, its spread (if measured), the
    cells behind it (their ``scores``, one array per patient), each expert's probability and
    the referral rule's decision and reasons when ``pred`` carries them (``pred.parts``;
    ``pred.decisions``: one :class:`lymphomil.referral.Decision` per patient)."""
    if not len(pred.ids):
        return []
    decisions = getattr(pred, "decisions", None)
    parts = getattr(pred, "parts", None)
    return [PatientCall(
        id=patient.id, proba=float(pred.proba[i]), predicted=int(pred.labels[i]),
        true_label=int(patient.label), age=float(patient.age), gender=patient.gender,
        lymph_count=float(patient.lymph_count), n_images=patient.n_images,
        image_paths=list(patient.image_paths),
        instance_scores=None if scores is None else np.asarray(scores[i]),
        part_probas=None if parts is None else {k: float(v[i]) for k, v in parts.items()},
        interval=None if spread is None else (float(spread.low[i]), float(spread.high[i])),
        decision=None if decisions is None else decisions[i].decision,
        reasons=() if decisions is None else tuple(decisions[i].reasons))
        for i, patient in enumerate(pred.patients)]


def synthetic_origin(data: Path | None) -> dict | None:
    """What generated the cohort at ``data`` (None: the built-in demo cohort), or None when it is
    not a synthetic cohort. ``lymphomil synth`` leaves its marker file in every cohort it writes."""
    if data is None:
        return {}
    marker = Path(str(data)) / MARKER  # a lab's export (a PlainLayout) names its CSV
    if not marker.is_file():
        return None
    try:
        origin = read_json(marker)
    except LymphomilError:  # a damaged marker still marks the folder as generated
        return {}
    return origin if isinstance(origin, dict) else {}


#: what each file of a run folder holds, in the order the report lists them
RUN_FILES = (("predictions.csv", "ID, LABEL and P(malignant) of every predicted patient"),
             ("submission.csv", "the Kaggle submission: Id, Predicted"),
             ("cv/oof_{model}.csv", "the chosen model's out-of-fold probability of every labelled "
                                    "patient in every repeat"),
             ("cv/results.md", "the cross-validation table of every candidate"),
             ("metrics.json", "every candidate's CV metrics, the choice, the timings"),
             ("model/model_card.json", "the model card (what the model is, how it was checked)"),
             ("config.toml", "the resolved configuration: repeat the run with --config"))


def run_files(folder: Path, model_name: str) -> list[tuple[str, str]]:
    """(relative path, what it holds) of the files written so far into a run folder; the report
    links to them. The config and metrics.json are always written, after the report."""
    files = []
    for name, what in RUN_FILES:
        name = name.format(model=model_name)
        if name in ("config.toml", "metrics.json") or (folder / name).is_file():
            files.append((name, what))
    return files


def error_calls(chosen: CVResult, labelled: Sequence[Any],
                scores: Sequence[Any] | None) -> list:
    """Report entries of the labelled patients ``chosen`` gets wrong out of fold: their mean
    out-of-fold probability and its range, and their cells (``scores``, in
    :func:`oof_errors`' order)."""
    errors = oof_errors(chosen)
    if not errors:
        return []
    by_id = {p.id: p for p in labelled}
    patients = [by_id[e["id"]] for e in errors]
    return [PatientCall(
        id=e["id"], proba=e["mean"], predicted=int(e["mean"] >= 0.5), true_label=e["label"],
        age=float(p.age), gender=p.gender, lymph_count=float(p.lymph_count),
        n_images=p.n_images, image_paths=list(p.image_paths),
        instance_scores=None if scores is None else np.asarray(scores[i]),
        interval=(e["low"], e["high"]), oof_wrong=(e["wrong"], e["repeats"]))
        for i, (e, p) in enumerate(zip(errors, patients))]


def write_run_model_card(model_dir: Path, model, config: Any, chosen: CVResult,
                         results: list[CVResult], spread=None, rule=None) -> dict:
    """The trained model's card (lymphomil.report.model_card), written into its folder; returned
    for the report. ``config``: the run's (lymphomil.flows.config.RunConfig)."""
    card = build_model_card(
        model, chosen.model_name, read_json(Path(model_dir) / "metadata.json"), chosen=chosen,
        results=results, forced=bool(config.model), brier=calibration_stats(chosen)["brier"],
        uncertainty=None if spread is None else spread.method,
        description=describe_model(chosen.model_name),
        referral=None if rule is None else referral_metrics(rule, None))
    write_model_card(model_dir, card)
    return card


def write_run_report(path: Path, config: Any, data: Path, chosen: CVResult,
                     results: list[CVResult], summary: dict, pred, cohort, labelled,
                     timings, files: list[tuple[str, str]] | None = None, spread=None,
                     card: dict | None = None, evidence: CellEvidence | None = None,
                     figure_cache: Path | None = None) -> None:
    """report.html of a run (``config``: its lymphomil.flows.config.RunConfig; ``evidence``:
    the cells' scores; ``figure_cache``: where drawn figures are kept by their inputs)."""
    notes = ["The chosen model's CV figure is optimistic: it was picked as the best of "
             f"{len(results)} candidates on the same folds."]
    nested = [r for r in results if selection_candidates(r.model_name)]
    if nested:
        ba = nested[0].summary(n_bootstrap=10)["balanced_accuracy"]
        notes.append(f"Honest figure of the choice itself (row {nested[0].model_name}): the "
                     "choice among the candidates made inside each outer training part scores "
                     f"{ba['mean']:.3f} ± {ba['std']:.3f} balanced accuracy.")
    evidence = evidence or CellEvidence(chosen.model_name, None, None, None)
    context = ReportContext(
        title="lymphomil report", data_root=str(data), model_name=chosen.model_name,
        model_description=describe_model(chosen.model_name), cv_results=results,
        explore=summary, calls=patient_calls(pred, spread, evidence.predicted),
        skipped=cohort.skipped_table(),
        config=config.model_dump(mode="json"), versions=library_versions(), timings=timings,
        notes=notes,
        counts={p.id: float(p.lymph_count) for p in labelled},
        synthetic=synthetic_origin(data),
        reference_date=config.reference_date.isoformat(), files=files or [],
        interval_method=spread.method if spread is not None else None,
        score_units=evidence.units, cell_scorer=evidence.scorer,
        errors=error_calls(chosen, labelled, evidence.wrong), model_card=card)
    render_report(context, path, gallery_k=config.gallery_k, figure_cache=figure_cache)


def write_prediction_report(path: Path, pred, data: Path, model_dir: Path,
                            gallery_k: int = 8, csv_path: Path | None = None,
                            scores: Sequence[Any] | None = None,
                            write: Callable[[Path, bytes, str], Path] | None = None) -> Path:
    """The per-patient galleries for new patients (no CV: the model was trained elsewhere);
    ``scores``: each patient's cell scores by the model."""
    metadata = read_json(Path(model_dir) / "metadata.json")
    card_path = Path(model_dir) / MODEL_CARD_JSON
    cv = metadata.get("cv")
    training = metadata.get("training") or {}  # null: a model saved from Python without it
    notes = [f"Model {metadata.get('model_name') or 'unnamed'} from {model_dir}"
             + (f", trained on {training['n_patients']} patients." if training else ".")]
    if cv:
        ba = cv["balanced_accuracy"]
        notes.append(f"Its cross-validated balanced accuracy at training time: "
                     f"{ba['mean']:.3f} ± {ba['std']:.3f}.")
    context = ReportContext(
        title="lymphomil predictions", data_root=str(data),
        model_name=str(metadata.get("model_name")), model_description="", cv_results=[],
        explore=None, calls=patient_calls(pred, scores=scores),
        skipped=pred.skipped, config={},
        versions=library_versions(), timings={}, notes=notes,
        synthetic=synthetic_origin(data), reference_date=metadata.get("reference_date"),
        score_units=score_units(pred.model),
        model_card=read_json(card_path) if card_path.is_file() else None,
        files=[] if csv_path is None else [(_relative(csv_path, Path(path).parent),
                                            "the predictions this page shows")])
    return render_report(context, path, gallery_k=gallery_k, write=write)


def _relative(target: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(target).absolute(), Path(start).absolute())).as_posix()
