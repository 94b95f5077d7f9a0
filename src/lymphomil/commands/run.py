"""`lymphomil run`: the main job (lymphomil.flows.run), from a folder to a report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lymphomil.commands import common
from lymphomil.commands.app import (
    EngineName,
    OnError,
    StageReporter,
    app,
    console,
    err_console,
    handle_errors,
)
from lymphomil.flows import options  # light: checks import what they need when they run
from lymphomil.flows.defaults import DEFAULT_CANDIDATES


@app.command()
@handle_errors
def run(
    data: Optional[Path] = typer.Argument(None, help="challenge-layout folder; omit to run on "
                                                     "the built-in synthetic cohort"),
    out: Path = typer.Option(Path("runs/latest"), "--out", help="run folder to write"),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML config (a run saves its "
                                                                 "own config.toml); options "
                                                                 "given here override it",
                                          show_default="none: the defaults shown here"),
    model: Optional[str] = typer.Option(None, "--model", "-m",
                                        help="fit this model instead of the CV winner (see "
                                             "`lymphomil models`)",
                                        show_default="the candidate with the best CV"),
    candidates: Optional[str] = typer.Option(None, "--candidates",
                                             help="comma-separated models to compare by CV",
                                             show_default=",".join(DEFAULT_CANDIDATES)),
    folds: Optional[int] = typer.Option(None, "--folds",
                                        help="folds per repeat (patient-level, stratified)",
                                        show_default=common.run_default("folds")),
    repeats: Optional[int] = typer.Option(None, "--repeats",
                                          help="repeats, each with a new fold split",
                                          show_default=common.run_default("repeats")),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed of the splits and the fits",
                                       show_default=common.run_default("seed")),
    patients: Optional[int] = typer.Option(None, "--patients",
                                           help="size of the synthetic cohort (no DATA)",
                                           show_default=common.run_default("synthetic_patients")),
    reference_date: Optional[str] = typer.Option(
        None, "--reference-date", help="date at which ages are computed (YYYY-MM-DD)",
        show_default=common.run_default("reference_date")),
    on_error: Optional[OnError] = typer.Option(
        None, "--on-error", help="raise: stop at the first bad input; skip: leave it out and "
                                 "list it", show_default=common.run_default("on_error")),
    features: Optional[str] = common.FEATURES_OPT,
    cache_dir: Optional[Path] = common.CACHE_OPT,
    threads: Optional[int] = typer.Option(None, "--threads",
                                          help="threads for model fitting (torch, BLAS); fixed "
                                               "for reproducibility",
                                          show_default=common.run_default("threads")),
    engine: Optional[EngineName] = typer.Option(None, "--engine", help=common.ENGINE_HELP,
                                                show_default=common.run_default("engine")),
    nested_selection: Optional[bool] = typer.Option(
        None, "--nested-selection", help="also cross-validate the choice among the candidates "
        "made inside each outer training part: the honest figure of the chosen model (slow: "
        "about 3x the candidates' CV)", show_default=common.run_default("nested_selection")),
    max_referral: Optional[float] = common.MAX_REFERRAL_OPT,
    target_accuracy: Optional[float] = common.TARGET_ACCURACY_OPT,
    images: Optional[Path] = common.IMAGES_OPT,
    columns: Optional[str] = common.COLUMNS_OPT,
) -> None:
    """The main job: validate → explore → CV the candidates → train the best → predict → report.

    Writes report.html, submission.csv (Kaggle Id,Predicted), predictions.csv, metrics.json,
    config.toml and model/ into --out.

    Example: lymphomil run ../shared/data/dlmi-lymphocytosis --out runs/shared

    A lab's own export (a CSV, a folder of image folders; README): lymphomil run
    lab/patients.csv --images lab/cells --columns id=Patient,gender=Sex,dob=Birth,count=Lymph
    """
    # deferred for start-up time (see lymphomil.commands.common)
    from lymphomil import outputs, referral
    from lymphomil.data.plain import data_inputs, data_source, read_columns
    from lymphomil.flows import config as configs
    from lymphomil.flows import run as run_flow

    referral.check_target(max_referral, target_accuracy)  # the CLI's names in the message
    names, images_of_columns = read_columns(columns)

    cfg = configs.load_config(config, {
        "data": data, "model": model, "folds": folds, "repeats": repeats, "seed": seed,
        "synthetic_patients": patients, "on_error": on_error, "features": features,
        "cache_dir": cache_dir, "threads": threads, "engine": engine,
        "nested_selection": nested_selection,
        "max_referral": max_referral, "target_accuracy": target_accuracy,
        "reference_date": options.parse_date(reference_date) if reference_date else None,
        "candidates": ([c.strip() for c in candidates.split(",") if c.strip()] if candidates
                       else None),
        "images": images or images_of_columns, "columns": names or None,
    })
    data_paths = ({} if cfg.data is None else
                  data_inputs(data_source(cfg.data, cfg.images, cfg.columns)))
    for path in data_paths.values():
        outputs.check_cache_location(cfg.cache_dir, path)
    outputs.claim_output(out, "run", {**data_paths, "config file": config,
                                      "cache folder": outputs.cache_root(cfg.cache_dir)})
    reporter = StageReporter()
    try:
        result = run_flow.run_pipeline(
            cfg, out, stage=reporter.stage, on_fit=reporter.advance,
            cv_total=lambda total: reporter.count("cross-validation fits", total, "fits"))
    finally:
        reporter.close()
    console.print(common.results_table(result.results))
    console.print(f"chosen model: [bold]{result.chosen}[/]; predicted {result.n_predicted} "
                  f"patients; skipped {result.n_skipped}")
    console.print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))
    for note in result.notes:
        err_console.print(common.show(note), highlight=False, soft_wrap=True)
    skipped_file = out / "skipped.json"  # listed as predict and cv list them
    if skipped_file.is_file():
        common.print_skips(outputs.read_json(skipped_file), skipped_file)
    console.print(f"wrote {common.show(out)}/report.html, submission.csv, predictions.csv, "
                  "metrics.json, config.toml, model/", highlight=False)
