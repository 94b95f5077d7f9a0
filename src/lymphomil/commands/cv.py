"""`lymphomil cv`: repeated, stratified, patient-level cross-validation (lymphomil.flows)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from lymphomil.commands import common
from lymphomil.commands.app import EngineName, OnError, app, console, err_console, handle_errors
from lymphomil.flows import options  # light: checks import what they need when they run
from lymphomil.flows.defaults import DEFAULT_MODEL, RUN_DEFAULTS


@app.command()
@handle_errors
def cv(
    data: Path = common.DATA_ARG,
    model: List[str] = typer.Option([DEFAULT_MODEL], "--model", "-m",
                                    help="model name (repeat for several; see `lymphomil models`)"),
    folds: int = typer.Option(RUN_DEFAULTS["folds"], "--folds",
                              help="folds per repeat (patient-level, stratified)"),
    repeats: int = typer.Option(RUN_DEFAULTS["repeats"], "--repeats",
                                help="repeats, each with a new fold split"),
    seed: int = typer.Option(RUN_DEFAULTS["seed"], "--seed",
                             help="seed of the fold splits and the fits"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for metrics.json, "
                                                           "oof_<model>.csv, results.md",
                                       show_default="none: print only"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable results"),
    reference_date: str = common.REFERENCE_OPT,
    on_error: OnError = common.ON_ERROR_OPT,
    features: Optional[str] = common.FEATURES_OPT,
    cache_dir: Optional[Path] = common.CACHE_OPT,
    threads: int = common.THREADS_OPT,
    engine: EngineName = typer.Option("local", "--engine", help=common.ENGINE_HELP),
    select: Optional[str] = typer.Option(
        None, "--select", help="comma-separated candidates: adds the row 'select:A,B,C', the "
                               "choice among them made by inner CV inside each outer training "
                               "part (the honest figure for 'the best of these')",
        show_default="none"),
    referral: bool = typer.Option(True, "--referral/--no-referral",
                                  help="also measure the referral rule nested (an inner CV in "
                                       "each outer training part: about 6x the fits)"),
    max_referral: Optional[float] = common.MAX_REFERRAL_OPT,
    target_accuracy: Optional[float] = common.TARGET_ACCURACY_OPT,
) -> None:
    """Repeated, stratified, patient-level cross-validation of one or more models.

    Example: lymphomil cv ../shared/data/dlmi-lymphocytosis -m logreg -m svm --out runs/cv

    Honest selection: lymphomil cv DATA -m fusion-mean -m cell-topk --select fusion-mean,cell-topk
    """
    # deferred for start-up time (see lymphomil.commands.common)
    from lymphomil import outputs
    from lymphomil.flows import cv as cv_flow

    ref = options.parse_date(reference_date)
    outputs.check_cache_location(cache_dir, data)
    if out is not None:
        outputs.claim_output(out, "cv", {"data folder": data,
                                         "cache folder": outputs.cache_root(cache_dir)})
    # the flow checks every other option before any work, the folds against the data once read
    run = cv_flow.cross_validate(model, data, select=select, folds=folds, repeats=repeats,
                                 seed=seed, reference_date=ref, on_error=on_error,
                                 features=features, cache_dir=cache_dir, engine=engine,
                                 threads=threads, trust=True, referral=referral,
                                 max_referral=max_referral, target_accuracy=target_accuracy,
                                 out=out)
    labelled = run.labelled
    for note in run.notes:
        err_console.print(common.show(note), highlight=False, soft_wrap=True)
    results, trust, cohort = run.results, run.trust, labelled.cohort
    payload = {r.model_name: {**r.to_dict(), **trust[r.model_name]} for r in results}
    if as_json:
        typer.echo(outputs.dumps_json(payload), nl=False)  # strict JSON: null, never NaN
    else:
        console.print(common.results_table(results))
        console.print(f"{len(labelled.y)} labelled patients, {folds} folds × {repeats} repeats, "
                      f"seed {seed}")
        console.print(run.trust_markdown(), markup=False, highlight=False, soft_wrap=True)
    common.print_skips(cohort.skipped_table(),
                       out / "skipped.json" if out and cohort.issues else None)
    if out is not None:
        err_console.print(f"wrote {common.show(out)}/metrics.json, results.md and oof_*.csv",
                          highlight=False)
