"""`lymphomil models | cv | train | predict`: evaluate, fit and apply patient-level models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from lymphomil.cli_app import (
    CACHE_DEFAULT,
    RAY_EXTRA,
    EngineName,
    OnError,
    PatientRule,
    StageReporter,
    app,
    console,
    err_console,
    handle_errors,
    parse_date_option,
    progress_task,
)
from lymphomil.defaults import DEFAULT_CANDIDATES, DEFAULT_MODEL, RUN_DEFAULTS

# Deferred imports live here, at the CLI layer, per command: each command imports in its body
# what it runs, so `--help` imports no numpy, pydantic or torch, and a command that reads cached
# features imports no model family it does not run. Library modules keep their imports at the top.

DATA_ARG = typer.Argument(..., help="challenge-layout folder (clinical_annotation.csv or "
                                    "trainset/ + testset/)", show_default=False)
REFERENCE_OPT = typer.Option("2024-01-01", "--reference-date",
                             help="date at which ages are computed (stored with the model)")
ON_ERROR_OPT = typer.Option("raise", "--on-error",
                            help="raise: stop at the first bad input; "
                                 "skip: leave it out and list it")
CACHE_OPT = typer.Option(None, "--cache-dir", help="feature cache folder",
                         show_default=CACHE_DEFAULT)
FEATURES_OPT = typer.Option(None, "--features",
                            help="override image models' features, e.g. efficientnet-lite0@112",
                            show_default="each model's own")
MAX_REFERRAL_HELP = ("the referral rule refers at most this fraction of the patients "
                     "(thresholds fitted by inner CV on the training patients; default 0.2 when "
                     "no target is given)")
TARGET_ACCURACY_HELP = ("instead: the rule refers the fewest patients whose inner-CV auto-calls "
                        "reach this balanced accuracy (at most 50 % referred)")
ENGINE_HELP = ("where features and CV fits run: local, or ray (joins RAY_ADDRESS or starts a "
               f"local Ray; {RAY_EXTRA})")


def _run_default(name: str) -> str:
    """What `run` uses when an option is not given (the config's default) for --help."""
    return RUN_DEFAULTS[name]
THREADS_OPT = typer.Option(1, "--threads", help="threads for model fitting (torch, BLAS); "
                                                 "fixed for reproducibility")


def print_skips(issues: list[dict], out: Path | None = None) -> None:
    if not issues:
        return
    err_console.print(f"[yellow]{len(issues)} input problem(s) skipped[/] (--on-error skip):",
                      soft_wrap=True)
    for issue in issues[:20]:
        where = issue["file"] + (f", row {issue['row']}" if issue.get("row") else "")
        err_console.print(f"  - {escape(where)}: {escape(issue['problem'])}", highlight=False,
                          soft_wrap=True)
    if len(issues) > 20:
        err_console.print(f"  … and {len(issues) - 20} more")
    if out is not None:
        err_console.print(f"  the full list is in {out}", soft_wrap=True)


@app.command("models")
@handle_errors
def list_models_command() -> None:
    """List the registered model names (use them with --model).

    Example: lymphomil models
    """
    from lymphomil.models.base import describe_models

    table = Table("model", "description")
    for name, text in describe_models().items():
        table.add_row(name + (" (default)" if name == DEFAULT_MODEL else ""), text)
    console.print(table)


def results_table(results: list) -> Table:
    from lymphomil.crossval import format_metric

    table = Table("model", "balanced acc. (mean ± std [95% CI])", "hard subset", "ROC AUC",
                  "minutes", title="repeated patient-level CV")
    for r in results:
        s = r.summary()
        table.add_row(r.model_name, format_metric(s["balanced_accuracy"]),
                      format_metric(s["hard_balanced_accuracy"]), format_metric(s["roc_auc"]),
                      f"{s['fit_seconds']['total'] / 60:.2f}")
    return table


@app.command()
@handle_errors
def cv(
    data: Path = DATA_ARG,
    model: List[str] = typer.Option([DEFAULT_MODEL], "--model", "-m",
                                    help="model name (repeat for several; see `lymphomil models`)"),
    folds: int = typer.Option(5, "--folds", help="folds per repeat (patient-level, stratified)"),
    repeats: int = typer.Option(5, "--repeats", help="repeats, each with a new fold split"),
    seed: int = typer.Option(0, "--seed", help="seed of the fold splits and the fits"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for metrics.json, "
                                                           "oof_<model>.csv, results.md",
                                       show_default="none: print only"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable results"),
    reference_date: str = REFERENCE_OPT,
    on_error: OnError = ON_ERROR_OPT,
    features: Optional[str] = FEATURES_OPT,
    cache_dir: Optional[Path] = CACHE_OPT,
    threads: int = THREADS_OPT,
    engine: EngineName = typer.Option("local", "--engine", help=ENGINE_HELP),
    select: Optional[str] = typer.Option(
        None, "--select", help="comma-separated candidates: adds the row 'select:A,B,C', the "
                               "choice among them made by inner CV inside each outer training "
                               "part (the honest figure for 'the best of these')",
        show_default="none"),
    referral: bool = typer.Option(True, "--referral/--no-referral",
                                  help="also measure the referral rule nested (an inner CV in "
                                       "each outer training part: about 6x the fits)"),
    max_referral: Optional[float] = typer.Option(None, "--max-referral", help=MAX_REFERRAL_HELP,
                                                 show_default="0.2"),
    target_accuracy: Optional[float] = typer.Option(None, "--target-accuracy",
                                                    help=TARGET_ACCURACY_HELP,
                                                    show_default="none"),
) -> None:
    """Repeated, stratified, patient-level cross-validation of one or more models.

    Example: lymphomil cv ../shared/data/dlmi-lymphocytosis -m logreg -m svm --out runs/cv

    Honest selection: lymphomil cv DATA -m fusion-mean -m cell-topk --select fusion-mean,cell-topk
    """
    from lymphomil.data.cohort import load_cohort
    from lymphomil.options import (
        absolute_weights,
        check_features_option,
        check_folds,
        check_folds_against,
        check_model_names,
        check_repeats,
        check_threads,
    )
    from lymphomil.outputs import (
        atomic_write_json,
        cache_root,
        check_cache_location,
        claim_output,
        staged_dir,
    )
    from lymphomil.runtime import set_threads
    from lymphomil.steps import get_engine, labelled_patients, run_cv, write_cv_outputs

    # every option before any work; the folds against the data once it is read
    if select is not None:
        from lymphomil.models.base import selection_name

        model = [*model, selection_name(check_model_names(select.split(","), "--select"))]
    check_model_names(model)
    from lymphomil.referral import check_target

    max_referral, target_accuracy = check_target(max_referral, target_accuracy)
    check_folds(folds)
    check_repeats(repeats)
    check_threads(threads)
    features = absolute_weights(check_features_option(features))
    ref = parse_date_option(reference_date)
    check_cache_location(cache_dir, data)
    if out is not None:
        claim_output(out, "cv", {"data folder": data, "cache folder": cache_root(cache_dir)})
    set_threads(threads)
    cohort = load_cohort(data, reference_date=ref, on_error=on_error, cache_dir=cache_dir)
    labelled = labelled_patients(cohort)
    check_folds_against(folds, labelled.y)
    runner = get_engine(engine, fit_threads=threads)
    try:
        with progress_task("cross-validation fits", len(model) * folds * repeats,
                           "fits") as advance:
            results = run_cv(model, labelled.patients, labelled.y, folds=folds, repeats=repeats,
                             seed=seed, features=features, cache_dir=cache_dir, on_fit=advance,
                             engine=runner)
        nested = _nested_referral(model, labelled, folds, repeats, seed, features, cache_dir,
                                  runner) if referral else {}
    finally:
        runner.close()
    from lymphomil.coverage import cv_trust

    trust = cv_trust(results, nested, max_referral=max_referral,
                     target_accuracy=target_accuracy)
    payload = {r.model_name: {**r.to_dict(), **trust[r.model_name]} for r in results}
    if out is not None:  # staged: a folder with checksums.json is a finished one
        with staged_dir(out, "cv") as staging:
            write_cv_outputs(results, staging, trust)
            if cohort.issues:
                atomic_write_json(staging / "skipped.json", cohort.skipped_table())
    if as_json:
        typer.echo(json.dumps(payload, indent=2, default=float))
    else:
        console.print(results_table(results))
        console.print(f"{len(labelled.y)} labelled patients, {folds} folds × {repeats} repeats, "
                      f"seed {seed}")
        from lymphomil.coverage import trust_markdown

        console.print(trust_markdown(trust), markup=False, highlight=False, soft_wrap=True)
    print_skips(cohort.skipped_table(), out / "skipped.json" if out and cohort.issues else None)
    if out is not None:
        err_console.print(f"wrote {out}/metrics.json, results.md and oof_*.csv")


def _nested_referral(names: list[str], labelled, folds: int, repeats: int, seed: int,
                     features: str | None, cache_dir: Path | None, engine) -> dict:
    """Each model's nested referral pass (lymphomil.referral.nested_referral); the nested
    selection rows are left out (an inner CV inside their inner CV: too slow)."""
    from lymphomil.errors import LymphomilError
    from lymphomil.models.base import selection_candidates
    from lymphomil.referral import INNER_FOLDS, nested_referral
    from lymphomil.steps import attach_features, configure_model

    names = [n for n in names if not selection_candidates(n)]
    if not names:
        return {}
    models = [configure_model(name, features) for name in names]
    patients = attach_features(labelled.patients, models, cache_dir)
    try:
        with progress_task(f"referral rule, nested (1 + {INNER_FOLDS} fits per outer fold)",
                           len(names) * folds * repeats, "outer folds") as advance:
            done = nested_referral(list(zip(names, models)), patients, labelled.y, folds=folds,
                                   repeats=repeats, seed=seed, engine=engine, on_fit=advance)
    except LymphomilError as exc:  # e.g. an inner grid search on too few patients of a class
        err_console.print(f"the referral rule's nested figure is left out: {escape(exc.problem)} "
                          "(the CV figures above stand; --no-referral skips this pass)",
                          highlight=False, soft_wrap=True)
        return {}
    return {item.model_name: item for item in done}


@app.command()
@handle_errors
def train(
    data: Path = DATA_ARG,
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="model name"),
    out: Path = typer.Option(..., "--out", help="model folder to write"),
    seed: int = typer.Option(0, "--seed", help="seed of the fit"),
    reference_date: str = REFERENCE_OPT,
    on_error: OnError = ON_ERROR_OPT,
    features: Optional[str] = FEATURES_OPT,
    cache_dir: Optional[Path] = CACHE_OPT,
    threads: int = THREADS_OPT,
    max_referral: Optional[float] = typer.Option(None, "--max-referral", help=MAX_REFERRAL_HELP,
                                                 show_default="0.2"),
    target_accuracy: Optional[float] = typer.Option(None, "--target-accuracy",
                                                    help=TARGET_ACCURACY_HELP,
                                                    show_default="none"),
) -> None:
    """Fit a model on every labelled patient and save it (JSON + safetensors, no pickle),
    with its referral rule (referral.json: which calls to auto-accept, which to refer).

    Example: lymphomil train ../shared/data/dlmi-lymphocytosis --model logreg --out runs/model
    """
    from lymphomil.data.cohort import load_cohort
    from lymphomil.options import (
        absolute_weights,
        check_features_option,
        check_model_names,
        check_threads,
    )
    from lymphomil.outputs import cache_root, check_cache_location, claim_output
    from lymphomil.referral import check_target
    from lymphomil.runtime import set_threads
    from lymphomil.steps import configure_model, labelled_patients, train_model

    check_model_names([model])
    max_referral, target_accuracy = check_target(max_referral, target_accuracy)
    check_threads(threads)
    features = absolute_weights(check_features_option(features))
    ref = parse_date_option(reference_date)
    check_cache_location(cache_dir, data)
    claim_output(out, "model", {"data folder": data, "cache folder": cache_root(cache_dir)})
    set_threads(threads)
    cohort = load_cohort(data, reference_date=ref, on_error=on_error, cache_dir=cache_dir)
    labelled = labelled_patients(cohort)
    estimator = configure_model(model, features)
    from lymphomil.referral import TOO_FEW, referral_card
    from lymphomil.steps import fit_rule

    rule = fit_rule(estimator, labelled, name=model, seed=seed, max_referral=max_referral,
                    target_accuracy=target_accuracy, cache_dir=cache_dir)
    from lymphomil.model_card import build_model_card, write_model_card
    from lymphomil.models.base import describe_model
    from lymphomil.outputs import read_json

    def card(folder: Path) -> None:
        # no CV here: the card says what the model is and what it was trained on (`run` adds
        # the CV); written into the staging folder, so the model appears whole or not at all
        write_model_card(folder, build_model_card(estimator, model,
                                                  read_json(folder / "metadata.json"),
                                                  description=describe_model(model),
                                                  referral=rule and referral_card(rule)))

    train_model(estimator, labelled, out, name=model, reference_date=ref, cache_dir=cache_dir,
                seed=seed, extra={"skipped": cohort.skipped_table()}, referral=rule, finish=card)
    print_skips(cohort.skipped_table())
    console.print(f"trained [bold]{model}[/] on {len(labelled.y)} patients → {out}")
    console.print(f"referral rule: {escape(rule.describe() if rule else TOO_FEW)}",
                  soft_wrap=True)


@app.command()
@handle_errors
def predict(
    model_dir: Path = typer.Argument(...,
                                     help="folder written by `lymphomil train` or model.save()"),
    data: Path = DATA_ARG,
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
    on_error: OnError = ON_ERROR_OPT,
    cache_dir: Optional[Path] = CACHE_OPT,
    threads: int = THREADS_OPT,
) -> None:
    """Predict the patients of DATA with a trained model: by default every unlabelled (LABEL -1)
    patient and every patient under testset/; the labelled patients left out are listed.

    DATA may hold only new patients (testset/ without trainset/). Where predicted patients carry
    a label, the metrics are printed and written to OUT's name + .metrics.json.

    Example: lymphomil predict runs/model ../shared/data/dlmi-lymphocytosis --out sub.csv --kaggle
    """
    from lymphomil.options import check_threads
    from lymphomil.outputs import cache_root, check_cache_location, claim_output
    from lymphomil.runtime import set_threads
    from lymphomil.steps import predict_folder, write_predictions

    check_threads(threads)
    check_cache_location(cache_dir, data)
    inputs = {"model folder": model_dir, "data folder": data, "cache folder": cache_root(cache_dir)}
    claim_output(out, "predictions", inputs, folder=False)
    claim_output(out.with_name(out.stem + ".skipped.json"), "skipped list", inputs, folder=False)
    metrics_path = out.with_name(out.stem + ".metrics.json")
    claim_output(metrics_path, "metrics", inputs, folder=False)
    if report is not None:
        claim_output(report, "report", dict(inputs, **{"--out file": out}), folder=False,
                     option="--report")
    set_threads(threads)
    pred = predict_folder(model_dir, data, on_error=on_error, include_labelled=include_labelled,
                          cache_dir=cache_dir, patients=patients)
    from lymphomil.outputs import dumps_json, remove_owned_file, write_owned_file

    write_predictions(pred, out, kaggle=kaggle, write=write_owned_file)
    if pred.metrics is not None:
        write_owned_file(metrics_path, dumps_json(pred.metrics).encode(), "metrics")
        m = pred.metrics
        auc = "n/a (one class)" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
        bacc = "n/a" if m["balanced_accuracy"] is None else f"{m['balanced_accuracy']:.3f}"
        console.print(f"{m['n_labelled']} predicted patients carry a label: balanced accuracy "
                      f"{bacc}, accuracy {m['accuracy']:.3f}, ROC AUC {auc} → {metrics_path}")
    else:  # an earlier run's metrics must not outlive a re-run without labels
        remove_owned_file(metrics_path)
    if pred.not_predicted:
        shown = ", ".join(pred.not_predicted[:10]) + (" …" if len(pred.not_predicted) > 10
                                                      else "")
        err_console.print(f"not predicted: {len(pred.not_predicted)} labelled training "
                          f"patient(s) ({shown}); --patients all predicts them too",
                          soft_wrap=True, highlight=False)
    skipped_path = out.with_name(out.stem + ".skipped.json")
    if pred.skipped:
        write_owned_file(skipped_path, dumps_json(pred.skipped).encode(), "skipped list")
    else:  # an earlier run's list must not outlive a clean re-run
        remove_owned_file(skipped_path)
        skipped_path = None
    print_skips(pred.skipped, skipped_path)
    console.print(f"predicted {len(pred.ids)} patients ({int(pred.labels.sum())} malignant) "
                  f"→ {out}")
    if pred.decisions is not None:
        referred = sum(d.decision == "refer" for d in pred.decisions)
        console.print(f"referral rule: {referred} of {len(pred.ids)} referred for review "
                      "(DECISION and REASON columns" + (" of the CSV without --kaggle)" if kaggle
                                                        else ")"))
    if report is not None:
        from lymphomil.pipeline import write_prediction_report

        write_prediction_report(report, pred, data, model_dir, csv_path=out,
                                write=write_owned_file)
        console.print(f"wrote the per-patient report → {report}")


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
                                        show_default=_run_default("folds")),
    repeats: Optional[int] = typer.Option(None, "--repeats",
                                          help="repeats, each with a new fold split",
                                          show_default=_run_default("repeats")),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed of the splits and the fits",
                                       show_default=_run_default("seed")),
    patients: Optional[int] = typer.Option(None, "--patients",
                                           help="size of the synthetic cohort (no DATA)",
                                           show_default=_run_default("synthetic_patients")),
    reference_date: Optional[str] = typer.Option(
        None, "--reference-date", help="date at which ages are computed (YYYY-MM-DD)",
        show_default=_run_default("reference_date")),
    on_error: Optional[OnError] = typer.Option(
        None, "--on-error", help="raise: stop at the first bad input; skip: leave it out and "
                                 "list it", show_default=_run_default("on_error")),
    features: Optional[str] = FEATURES_OPT,
    cache_dir: Optional[Path] = CACHE_OPT,
    threads: Optional[int] = typer.Option(None, "--threads",
                                          help="threads for model fitting (torch, BLAS); fixed "
                                               "for reproducibility",
                                          show_default=_run_default("threads")),
    engine: Optional[EngineName] = typer.Option(None, "--engine", help=ENGINE_HELP,
                                                show_default=_run_default("engine")),
    nested_selection: Optional[bool] = typer.Option(
        None, "--nested-selection", help="also cross-validate the choice among the candidates "
        "made inside each outer training part: the honest figure of the chosen model (slow: "
        "about 3x the candidates' CV)", show_default=_run_default("nested_selection")),
    max_referral: Optional[float] = typer.Option(None, "--max-referral", help=MAX_REFERRAL_HELP,
                                                 show_default="0.2"),
    target_accuracy: Optional[float] = typer.Option(None, "--target-accuracy",
                                                    help=TARGET_ACCURACY_HELP,
                                                    show_default="none"),
) -> None:
    """The main job: validate → explore → CV the candidates → train the best → predict → report.

    Writes report.html, submission.csv (Kaggle Id,Predicted), predictions.csv, metrics.json,
    config.toml and model/ into --out.

    Example: lymphomil run ../shared/data/dlmi-lymphocytosis --out runs/shared
    """
    from lymphomil.config import load_config
    from lymphomil.outputs import cache_root, check_cache_location, claim_output
    from lymphomil.pipeline import run_pipeline
    from lymphomil.referral import check_target

    check_target(max_referral, target_accuracy)  # the CLI's names in the message

    cfg = load_config(config, {
        "data": data, "model": model, "folds": folds, "repeats": repeats, "seed": seed,
        "synthetic_patients": patients, "on_error": on_error, "features": features,
        "cache_dir": cache_dir, "threads": threads, "engine": engine,
        "nested_selection": nested_selection,
        "max_referral": max_referral, "target_accuracy": target_accuracy,
        "reference_date": parse_date_option(reference_date) if reference_date else None,
        "candidates": ([c.strip() for c in candidates.split(",") if c.strip()] if candidates
                       else None),
    })
    check_cache_location(cfg.cache_dir, cfg.data)
    claim_output(out, "run", {"data folder": cfg.data, "config file": config,
                              "cache folder": cache_root(cfg.cache_dir)})
    reporter = StageReporter()
    try:
        result = run_pipeline(cfg, out, stage=reporter.stage, on_fit=reporter.advance,
                              cv_total=lambda total: reporter.count("cross-validation fits",
                                                                    total, "fits"))
    finally:
        reporter.close()
    console.print(results_table(result.results))
    console.print(f"chosen model: [bold]{result.chosen}[/]; predicted {result.n_predicted} "
                  f"patients; skipped {result.n_skipped}")
    console.print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))
    skipped_file = out / "skipped.json"  # listed as predict and cv list them
    if skipped_file.is_file():
        from lymphomil.outputs import read_json

        print_skips(read_json(skipped_file), skipped_file)
    console.print(f"wrote {out}/report.html, submission.csv, predictions.csv, metrics.json, "
                  "config.toml, model/")
