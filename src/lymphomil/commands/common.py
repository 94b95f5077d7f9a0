"""What the model commands share: their options, the skipped-input lines, the CV table.

Deferred imports live at the CLI layer, per command: each command imports in its body, in one
place, what it runs, so `--help` imports no numpy, pydantic or torch, and a command that reads
cached features imports no model family it does not run. Library modules import at the top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import typer
from rich.table import Table

from lymphomil.commands.app import CACHE_DEFAULT, RAY_EXTRA, err_console, show
from lymphomil.flows.defaults import RUN_DEFAULTS, shown

DATA_ARG = typer.Argument(..., help="challenge-layout folder (clinical_annotation.csv or "
                                    "trainset/ + testset/), or a lab's CSV of patients (one "
                                    "folder of cell images per patient beside it)",
                          show_default=False)
IMAGES_HELP = ("with a CSV as DATA (a lab's own export): the folder holding one folder of cell "
               "images (.jpg, .png, .tif) per patient")
COLUMNS_HELP = ("with a CSV as DATA: its column names, e.g. id=Patient,gender=Sex,"
                "count=Lymphocytes,dob=Birth (or age=NAME; label=NAME and folder=NAME optional),"
                " or a TOML file with a [columns] table")
COLUMNS_DEFAULT = "ID, LABEL, GENDER, DOB or AGE, LYMPH_COUNT, FOLDER"
IMAGES_OPT = typer.Option(None, "--images", help=IMAGES_HELP, show_default="the CSV's folder")
COLUMNS_OPT = typer.Option(None, "--columns", help=COLUMNS_HELP, show_default=COLUMNS_DEFAULT)
REFERENCE_OPT = typer.Option(shown("reference_date"), "--reference-date",
                             help="date at which ages are computed (stored with the model)")
ON_ERROR_OPT = typer.Option(RUN_DEFAULTS["on_error"], "--on-error",
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
MAX_REFERRAL_OPT = typer.Option(None, "--max-referral", help=MAX_REFERRAL_HELP,
                                show_default="0.2")
TARGET_ACCURACY_OPT = typer.Option(None, "--target-accuracy", help=TARGET_ACCURACY_HELP,
                                   show_default="none")
ENGINE_HELP = ("where features and CV fits run: local, or ray (joins RAY_ADDRESS or starts a "
               f"local Ray; {RAY_EXTRA})")


def run_default(name: str) -> str:
    """What `run` uses when an option is not given (the config's default) for --help."""
    return shown(name)


THREADS_OPT = typer.Option(RUN_DEFAULTS["threads"], "--threads",
                           help="threads for model fitting (torch, BLAS); fixed for "
                                "reproducibility")


def print_skips(issues: list[dict], out: Path | None = None) -> None:
    if not issues:
        return
    err_console.print(f"[yellow]{len(issues)} input problem(s) skipped[/] (--on-error skip):",
                      soft_wrap=True)
    for issue in issues[:20]:
        where = show(issue["file"]) + (f", row {issue['row']}" if issue.get("row") else "")
        err_console.print(f"  - {where}: {show(issue['problem'])}", highlight=False,
                          soft_wrap=True)
    if len(issues) > 20:
        err_console.print(f"  … and {len(issues) - 20} more")
    if out is not None:
        err_console.print(f"  the full list is in {show(out)}", soft_wrap=True, highlight=False)


def results_table(results: Sequence) -> Table:
    """The CV table of CV results (their figures as
    :func:`lymphomil.evaluation.crossval.summary_rows` writes them)."""
    # deferred for start-up time: numpy, only when a table is printed
    from lymphomil.evaluation.crossval import summary_rows

    table = Table("model", "balanced acc. (mean ± std [95% CI])", "hard subset", "ROC AUC",
                  "minutes", title="repeated patient-level CV")
    for row in summary_rows(results):
        table.add_row(*row)
    return table
