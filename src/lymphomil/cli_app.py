"""The Typer app and the small pieces every command shares (error handling, progress, output).

Commands live in :mod:`lymphomil.commands` modules that decorate functions with ``@app.command``;
:mod:`lymphomil.cli` imports them all. Each command parses its options, then calls one library
function: no logic lives here.
"""

from __future__ import annotations

import functools
import os
import sys
from contextlib import contextmanager
from datetime import date
from typing import Any, Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from lymphomil.errors import LymphomilError

app = typer.Typer(
    name="lymphomil",
    help="Reactive vs malignant lymphocytosis from patient attributes and blood-smear cell images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
cache_app = typer.Typer(help="Inspect or clear the feature cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

#: stdout for results (tables, JSON); stderr for progress and messages
console = Console()
err_console = Console(stderr=True)

_STATE = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks on errors.")) -> None:
    _STATE["debug"] = debug or os.environ.get("LYMPHOMIL_DEBUG") == "1"


def is_debug() -> bool:
    return _STATE["debug"]


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into a clear message and exit status 2 (traceback only with --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LymphomilError as exc:
            if is_debug():
                raise
            # escaped: a file name or a fix may hold [brackets] that Rich would eat as markup
            err_console.print(f"[bold red]error:[/] {escape(exc.render())}", highlight=False,
                              soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: outputs already written are complete; "
                              "re-run the command to resume")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug: say so plainly, keep the traceback for --debug
            if is_debug():
                raise
            err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}\n"
                              "  re-run with --debug for the traceback, and report it",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def parse_date_option(text: str, option: str = "--reference-date") -> date:
    """A YYYY-MM-DD option value, or a clear error naming the option."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise LymphomilError(f"{option} {text!r} is not a date in YYYY-MM-DD",
                             fix=f"write e.g. {option} 2024-01-01") from None


def make_progress(transient: bool = False) -> Progress:
    """A Rich progress bar on stderr (hidden when stderr is not a terminal and CI is set)."""
    return Progress(
        SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
        MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
        TimeRemainingColumn(), console=err_console, transient=transient,
        disable=not sys.stderr.isatty() and os.environ.get("LYMPHOMIL_PROGRESS") != "1",
    )


@contextmanager
def progress_task(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """``with progress_task("cv", 25) as advance: ... advance(1, rate="3.1 fits/s")``."""
    with make_progress() as progress:
        task = progress.add_task(description, total=total, rate="")

        def advance(step: float = 1, **fields: Any) -> None:
            progress.update(task, advance=step, **fields)

        yield advance
