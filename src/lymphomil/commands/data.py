"""Data commands: ``synth`` (make a synthetic cohort) and ``explore`` (Table 1 and figures)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import typer
from rich.table import Table

from lymphomil.commands.app import (
    OnError,
    app,
    console,
    err_console,
    handle_errors,
    progress_task,
    show,
)
from lymphomil.flows import options  # light: checks import what they need when they run
from lymphomil.flows.defaults import RUN_DEFAULTS, shown

if TYPE_CHECKING:  # pragma: no cover
    from lymphomil.data.cohort import Cohort


def _rich_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str],
                format_value: Callable[[Any], str]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="left" if column in ("attribute", "group") else "right")
    for row in rows:
        table.add_row(*(format_value(row[c]) for c in columns))
    return table


@app.command()
@handle_errors
def synth(
    out: Path = typer.Argument(..., help="Folder to write the cohort into (new, empty, or an "
                                         "earlier synthetic cohort, which is replaced)."),
    patients: int = typer.Option(RUN_DEFAULTS["synthetic_patients"], "--patients",
                                 help="Number of patients."),
    seed: int = typer.Option(RUN_DEFAULTS["synthetic_seed"], "--seed",
                             help="Random seed: the same seed gives the same files."),
    test_fraction: float = typer.Option(
        0.25, "--test-fraction", help="Share of unlabelled patients (LABEL -1, in testset/)."),
    min_images: int = typer.Option(16, "--min-images", help="Fewest cell images per patient."),
    max_images: int = typer.Option(48, "--max-images", help="Most cell images per patient."),
) -> None:
    """Write a synthetic cohort in the challenge's layout, for tests and demos.

    Malignant patients carry atypical lymphocytes, drawn independently of their count.

    Example: lymphomil synth out/synth --patients 60 --seed 0
    """
    # deferred for start-up time (see lymphomil.commands.common)
    from lymphomil.data.synth import write_synthetic_cohort

    options.check_synthetic(patients)  # the writer checks OUT (its own marker) and locks it
    options.check_synthetic_seed(seed)
    options.check_fraction(test_fraction, "--test-fraction")
    options.check_images_per_patient(min_images, max_images)
    with progress_task("synth", patients, "patients") as advance:
        root = write_synthetic_cohort(out, n_patients=patients, seed=seed,
                                      test_fraction=test_fraction,
                                      images_per_patient=(min_images, max_images),
                                      on_progress=advance)
    console.print(f"wrote a synthetic cohort of {patients} patients (seed {seed}) to "
                  f"{show(root)}", highlight=False)


@app.command()
@handle_errors
def explore(
    data: Path = typer.Argument(..., help="The cohort folder (challenge layout)."),
    out: Path = typer.Option(..., "--out", help="Folder for the tables and figures."),
    reference_date: str = typer.Option(shown("reference_date"), "--reference-date",
                                       help="Date at which ages are computed (YYYY-MM-DD)."),
    on_error: OnError = typer.Option(RUN_DEFAULTS["on_error"], "--on-error",
                                 help="raise: stop at the first bad row or image; skip: leave it "
                                      "out and list it in skipped.json."),
) -> None:
    """Statistics by label (age, lymphocyte count, images, gender) and figures of a cohort.

    Writes the tables (CSV and markdown), histograms and a gallery of cells into --out.

    Example: lymphomil explore ../shared/data/dlmi-lymphocytosis --out out/explore
    """
    # deferred for start-up time (see lymphomil.commands.common)
    from lymphomil import outputs
    from lymphomil.data.cohort import load_cohort
    from lymphomil.report import explore as exploring

    reference = options.parse_date(reference_date)
    # a folder: not a file, not the data's, empty or written by an earlier `explore`
    outputs.claim_output(out, "explore", {"data folder": data})
    cohort = load_cohort(data, reference_date=reference, on_error=on_error)
    out = Path(out)
    # staged like every output: the folder appears whole, and nothing of an earlier explore
    # outlives this one
    with outputs.staged_dir(out, "explore") as staging:
        result = exploring.explore(cohort, staging)
        skipped_path = None
        if on_error == "skip":
            skipped_path = outputs.atomic_write_json(staging / "skipped.json", {
                "skipped_patients": cohort.skipped_ids, "ignored_folders": cohort.ignored_folders,
                "issues": cohort.skipped_table()})
    rows = result["attributes_by_label"]
    for attribute in dict.fromkeys(row["attribute"] for row in rows):
        console.print(_rich_table(attribute, [r for r in rows if r["attribute"] == attribute],
                                  ("group",) + exploring.STATISTICS, exploring.format_value))
    console.print(_rich_table("gender", result["gender_by_label"], exploring.GENDER_COLUMNS,
                              exploring.format_value))
    files = [out / Path(path).name for path in result["files"].values()]
    if skipped_path is not None:
        files.append(out / skipped_path.name)
        _print_skipped(cohort, out / skipped_path.name)
    console.print(f"wrote {len(files)} files to {show(out)}:", highlight=False)
    for path in files:
        console.print(f"  {show(path)}", highlight=False)


def _print_skipped(cohort: Cohort, skipped_path: Path, shown: int = 20) -> None:
    """A short summary on stderr; the full list is in skipped.json."""
    issues = cohort.issues
    if not issues:
        err_console.print("nothing skipped: every row and image was usable")
        return
    patients = cohort.skipped_ids
    err_console.print(f"[yellow]skipped[/] {len(patients)} patient(s)"
                      + (f" ({', '.join(patients)})" if patients else "")
                      + f"; {len(issues)} problem(s) in all, listed in {show(skipped_path)}",
                      highlight=False)
    for issue in issues[:shown]:
        where = show(issue.file or "") + (f", row {issue.row}" if issue.row is not None else "")
        err_console.print(f"  {where}: {show(issue.problem)}", highlight=False, soft_wrap=True)
    if len(issues) > shown:
        err_console.print(f"  … and {len(issues) - shown} more")
