"""`lymphomil predict`: apply a trained model folder to the patients of a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lymphomil.commands import common
from lymphomil.commands.app import OnError, PatientRule, app, console, err_console, handle_errors


@app.command()
@handle_errors
def predict(
    model_dir: Path = typer.Argument(...,
                                     help="folder written by `lymphomil train` or model.save()"),
    data: Path = common.DATA_ARG,
    out: Path = typer.Option(..., "--out", help="CSV to write"),
    kaggle: bool = typer.Option(False, "--kaggle", help="write Id,Predicted (Kaggle) instead "
                                                        "of ID,LABEL,PROBA"),
    patients: PatientRule = typer.Option("new", "--patients",
                                         help="which patients: new = unlabelled ones and all "
                                              "under testset/ (labelled training patients are "
                                              "listed); all = every patient"),
    include_labelled: bool = typer.Option(False, "--all", help="same as --patients all"),
    report: Optional[Path] = typer.Option(None, "--report", help="also write an HTML report "
                                                                 "with each patient's cells",
                                          show_default="no report"),
    on_error: OnError = common.ON_ERROR_OPT,
    cache_dir: Optional[Path] = common.CACHE_OPT,
    threads: int = common.THREADS_OPT,
    images: Optional[Path] = common.IMAGES_OPT,
    columns: Optional[str] = common.COLUMNS_OPT,
) -> None:
    """Predict the patients of DATA with a trained model: by default every unlabelled (LABEL -1)
    patient and every patient under testset/; the labelled patients left out are listed.

    DATA may hold only new patients (testset/ without trainset/). Where predicted patients carry
    a label, the metrics are printed and written to OUT's name + .metrics.json.

    Example: lymphomil predict runs/model ../shared/data/dlmi-lymphocytosis --out sub.csv --kaggle

    A lab's own export (a CSV, a folder of image folders; README): lymphomil predict
    runs/model lab/patients.csv --images lab/cells --columns id=Patient,count=Lymph --out x.csv
    """
    # deferred for start-up time (see lymphomil.commands.common)
    from lymphomil import outputs
    from lymphomil.data.plain import data_inputs, data_source
    from lymphomil.flows import predict as predict_flow

    source = data_source(data, images, columns)
    for path in data_inputs(source).values():
        outputs.check_cache_location(cache_dir, path)
    inputs = {"model folder": model_dir, **data_inputs(source),
              "cache folder": outputs.cache_root(cache_dir)}
    metrics_path, skipped_path = predict_flow.prediction_files(out)
    outputs.claim_output(out, "predictions", inputs, folder=False)
    outputs.claim_output(skipped_path, "skipped list", inputs, folder=False)
    outputs.claim_output(metrics_path, "metrics", inputs, folder=False)
    if report is not None:
        outputs.claim_output(report, "report", dict(inputs, **{"--out file": out}),
                             folder=False, option="--report")
    # the flow checks --threads (and sets them) before any work
    done = predict_flow.predict(model_dir, source, out, kaggle=kaggle, patients=patients,
                                include_labelled=include_labelled, on_error=on_error,
                                cache_dir=cache_dir, threads=threads, report=report)
    pred = done.pred
    if pred.metrics is not None:
        m = pred.metrics
        auc = "n/a (one class)" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
        bacc = "n/a" if m["balanced_accuracy"] is None else f"{m['balanced_accuracy']:.3f}"
        console.print(f"{m['n_labelled']} predicted patients carry a label: balanced accuracy "
                      f"{bacc}, accuracy {m['accuracy']:.3f}, ROC AUC {auc} → "
                      f"{common.show(metrics_path)}", highlight=False)
    if pred.not_predicted:
        shown = ", ".join(pred.not_predicted[:10]) + (" …" if len(pred.not_predicted) > 10
                                                      else "")
        err_console.print(f"not predicted: {len(pred.not_predicted)} labelled training "
                          f"patient(s) ({shown}); --patients all predicts them too",
                          soft_wrap=True, highlight=False)
    common.print_skips(pred.skipped, done.skipped_path)
    console.print(f"predicted {len(pred.ids)} patients ({int(pred.labels.sum())} malignant) "
                  f"→ {common.show(out)}", highlight=False)
    if pred.decisions is not None:
        referred = sum(d.decision == "refer" for d in pred.decisions)
        console.print(f"referral rule: {referred} of {len(pred.ids)} referred for review "
                      "(DECISION and REASON columns" + (" of the CSV without --kaggle)" if kaggle
                                                        else ")"))
    if report is not None:
        console.print(f"wrote the per-patient report → {common.show(report)}", highlight=False)
