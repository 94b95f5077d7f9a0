"""The prediction flow: what ``lymphomil predict`` and :func:`lymphomil.predict` do (a saved
model's calls and decisions on the patients of a folder, and the files beside them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lymphomil.flows.steps import Predictions, predict_folder, write_predictions
from lymphomil.outputs import dumps_json, remove_owned_file, write_owned_file


@dataclass
class PredictRun:
    pred: Predictions
    metrics_path: Path | None  # written when predicted patients carry labels
    skipped_path: Path | None  # written when inputs were skipped


def prediction_files(out: Path) -> tuple[Path, Path]:
    """The label metrics and skipped-list files written beside the predictions CSV ``out``."""
    return (out.with_name(out.stem + ".metrics.json"), out.with_name(out.stem + ".skipped.json"))


def predict(model_dir: Path, data: Path, out: Path, *, kaggle: bool = False,
            patients: str = "new", include_labelled: bool = False, on_error: str = "raise",
            cache_dir: Path | None = None, report: Path | None = None) -> PredictRun:
    """Predict the patients of ``data`` (:func:`lymphomil.flows.steps.predict_folder`) into the CSV
    ``out``, with the label metrics and the skipped inputs beside it (an earlier run's are
    removed when there are none now) and, with ``report``, the per-patient HTML report.
    Every file is recorded as this output's own (``out`` claimed by the caller)."""
    pred = predict_folder(model_dir, data, on_error=on_error, include_labelled=include_labelled,
                          cache_dir=cache_dir, patients=patients)
    metrics_path, skipped_path = prediction_files(out)
    write_predictions(pred, out, kaggle=kaggle, write=write_owned_file)
    if pred.metrics is not None:
        write_owned_file(metrics_path, dumps_json(pred.metrics).encode(), "metrics")
    else:  # an earlier run's metrics must not outlive a re-run without labels
        remove_owned_file(metrics_path)
        metrics_path = None
    if pred.skipped:
        write_owned_file(skipped_path, dumps_json(pred.skipped).encode(), "skipped list")
    else:  # an earlier run's list must not outlive a clean re-run
        remove_owned_file(skipped_path)
        skipped_path = None
    if report is not None:
        # deferred for start-up time: the report's plotting, only when a report is asked for
        from lymphomil.report.pages import write_prediction_report

        write_prediction_report(report, pred, data, model_dir, csv_path=out,
                                write=write_owned_file)
    return PredictRun(pred, metrics_path, skipped_path)
