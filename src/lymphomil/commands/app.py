"""The Typer app and the small pieces every command shares (error handling, progress, output).

Commands live in :mod:`lymphomil.commands` modules that decorate functions with ``@app.command``;
:mod:`lymphomil.cli` imports them all. Each command parses its options, then calls one library
function: no logic lives here.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from typing import Any, Callable, Literal

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperOption

from lymphomil.commands.progress import (
    ERR_CONSOLE,
    MIN_WIDTH,
    SafeConsole,
    StageReporter,
    TerminalProgress,
    progress_task,
)
from lymphomil.runtime.errors import LymphomilError, escaped, from_os_error
from lymphomil.runtime.progress_protocol import using

__all__ = ["CACHE_DEFAULT", "EngineName", "OnError", "PatientRule", "RAY_EXTRA", "StageReporter",
           "app", "cache_app", "console", "err_console", "handle_errors", "is_debug",
           "progress_task", "setup_logging", "show"]


def _flag_display_type(self: TyperOption, ctx: Any) -> str | None:
    """A flag takes no value: show no ``<bool>`` after it in --help (Typer shows one)."""
    if self.is_flag:
        return None
    return _TYPER_DISPLAY_TYPE(self, ctx)


_TYPER_DISPLAY_TYPE = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_display_type  # type: ignore[method-assign]


def _plain_value_message(original: Callable[[Any], str]) -> Callable[[Any], str]:
    """Typer words a bad option value in pydantic's terms (``Value error, 'x' is not one of``,
    ``Input should be a valid integer, unable to parse string as an integer``): plain words."""

    def message(exc: Any) -> str:
        text = original(exc)
        try:
            error = exc.errors()[0]
        except (AttributeError, IndexError, TypeError):
            return text
        if text.startswith("Value error, "):
            return text[len("Value error, "):]
        kind = str(error.get("type", ""))
        if kind.startswith("int_"):
            return f"{error.get('input')!r} is not a whole number"
        if kind.startswith("float_"):
            return f"{error.get('input')!r} is not a number"
        if text.startswith("Input should"):
            return text[len("Input "):]
        return text

    return message


def _patch_typer_messages() -> None:
    import importlib

    for name in ("typer._coercion", "typer._param_types"):  # private: absent in other versions
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        original = getattr(module, "get_error_msg", None)
        if original is not None and not getattr(original, "_lymphomil", False):
            patched = _plain_value_message(original)
            patched._lymphomil = True  # type: ignore[attr-defined]
            module.get_error_msg = patched  # type: ignore[attr-defined]


def _patch_typer_errors() -> None:
    """Typer prints a usage error's message (which quotes the user's words) as it is: escaped
    here, like every other message (no control character reaches the terminal)."""
    from typer import rich_utils

    original = rich_utils.rich_format_error
    if getattr(original, "_lymphomil", False):
        return

    def format_escaped(error: Any) -> None:
        message = error.format_message()
        error.format_message = lambda: escaped(message)
        original(error)

    format_escaped._lymphomil = True  # type: ignore[attr-defined]
    rich_utils.rich_format_error = format_escaped


_patch_typer_messages()
_patch_typer_errors()

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

#: choices shown in --help (Literal: Typer lists them and refuses anything else)
OnError = Literal["raise", "skip"]
EngineName = Literal["local", "ray"]
PatientRule = Literal["new", "all"]  # lymphomil.flows.predict.PATIENT_RULES
#: "[ray]" escaped: --help is Rich markup, where a bare [ray] would vanish as a tag
RAY_EXTRA = 'needs the ray extra: pip install "lymphomil\\[ray]"'
CACHE_DEFAULT = "$LYMPHOMIL_CACHE_DIR, else the user cache folder"

#: stdout for results (tables, JSON); stderr for progress and messages (no source locations)
console = SafeConsole()
err_console = ERR_CONSOLE


def show(value: object) -> str:
    """A user-supplied value (a path, an ID) inside a console message: escaped for the terminal
    (:func:`lymphomil.runtime.errors.escaped`: no control character, no newline) and for Rich's
    markup (a ``[bold]`` in a file name is text)."""
    return escape(escaped(value))

_STATE = {"debug": False, "hard_exit": False, "in_command": 0}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so the same clean-up runs (exit 143)."""


def _on_signal(signum: int, _frame: Any) -> None:
    exc = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    if _STATE["in_command"]:
        raise exc  # unwinds the command: staging removed, locks and claims released
    exit_interrupted(exc)  # while parsing or after the command: nothing to clean up


def install_signal_handlers() -> None:
    """For the ``lymphomil`` process only (not a test's CliRunner): SIGTERM unwinds like Ctrl-C,
    and an interrupted command ends with :func:`os._exit` once its clean-up ran and its output
    is flushed (torch's and the extraction's threads cannot then abort the exit with
    ``terminate called without an active exception``)."""
    _STATE["hard_exit"] = True
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def exit_interrupted(exc: BaseException) -> None:
    """One line, then exit 130 (SIGINT) or 143 (SIGTERM). Staging folders and locks were
    released while the exception unwound; what is complete (feature files, CV fits) is kept."""
    terminated = isinstance(exc, Terminated)
    code = 143 if terminated else 130
    word = "terminated (SIGTERM)" if terminated else "interrupted"
    err_console.print(f"[yellow]{word}[/]: outputs already written are complete; re-run the "
                      "command to resume", soft_wrap=True)
    if not _STATE["hard_exit"]:
        raise typer.Exit(code) from None
    for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the clean-up
        signal.signal(sig, signal.SIG_IGN)
    _release_claims()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


#: what a terminal that is not UTF-8 (Latin-1, cp1252, ASCII under ``LC_ALL=C``) gets instead of
#: the typography lymphomil prints; anything else it cannot show is written ``\uXXXX``
_PLAIN = {"→": "->", "←": "<-", "×": "x", "…": "...", "–": "-", "—": "-", "−": "-", "≤": "<=",
          "≥": ">=", "±": "+/-", "µ": "u", "⁹": "^9", "’": "'", "‘": "'", "“": '"', "”": '"',
          "•": "*", "│": "|", "┃": "|", "║": "|"}


def _plain_text(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    chars = error.object[error.start:error.end]
    return "".join(_PLAIN.get(c, "-" if "\u2500" <= c <= "\u259f" else
                              c.encode("ascii", "backslashreplace").decode("ascii"))
                   for c in chars), error.end


def readable_streams() -> None:
    """stdout and stderr never fail on a character their encoding lacks (a message's arrow
    under ``LC_ALL=C`` or a Latin-1 terminal was an internal error after the outputs were
    written): written in plain ASCII instead (:data:`_PLAIN`, else ``\\uXXXX``). A
    ``COLUMNS`` too narrow to read (0 printed nothing) is dropped for Typer's own messages."""
    import codecs

    columns = os.environ.get("COLUMNS")
    if columns is not None and not (columns.strip().isdigit() and int(columns) >= MIN_WIDTH):
        del os.environ["COLUMNS"]

    try:
        codecs.lookup_error("lymphomil-plain")
    except LookupError:
        codecs.register_error("lymphomil-plain", _plain_text)
    for stream in (sys.stdout, sys.stderr):
        encoding = str(getattr(stream, "encoding", "") or "").lower().replace("-", "")
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and encoding not in ("utf8", "utf_8"):
            try:
                reconfigure(errors="lymphomil-plain")
            except (ValueError, OSError, AttributeError):
                pass  # a stream that cannot be changed: Rich's own fallbacks only


def check_working_folder() -> None:
    """Stop with one line when the current folder is gone (deleted while the shell stood in
    it): a relative path cannot mean anything there, and native libraries abort on load."""
    try:
        os.getcwd()
    except OSError:
        err_console.print("[bold red]error:[/] the current folder no longer exists (it was "
                          "deleted or moved while the shell stood in it)\n  fix: cd into an "
                          "existing folder and run the command again", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(2) from None


@app.callback()
def _main(ctx: typer.Context,
          debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks on errors "
                                                            "and debug log lines.")) -> None:
    readable_streams()
    if not {"--help", "-h"} & set(sys.argv[1:]):
        check_working_folder()
    _STATE["debug"] = debug or os.environ.get("LYMPHOMIL_DEBUG") == "1"
    setup_logging(logging.DEBUG if _STATE["debug"] else logging.WARNING)
    # the library reports progress to whatever is installed (silent by default): for the length
    # of this command, to the command line's bars and lines
    ctx.with_resource(using(TerminalProgress()))


def setup_logging(level: int = logging.WARNING, console: Console | None = None) -> None:
    """lymphomil's log records on stderr (or ``console``) through Rich, without ``file.py:123``
    locations."""
    from rich.logging import RichHandler

    logger = logging.getLogger("lymphomil")
    for handler in list(logger.handlers):
        if getattr(handler, "_lymphomil", False):
            logger.removeHandler(handler)
    handler = RichHandler(console=console or err_console, show_path=False, show_time=False,
                          markup=False, rich_tracebacks=False)
    handler.addFilter(_escape_record)
    handler._lymphomil = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)


def _escape_record(record: logging.LogRecord) -> bool:
    """A log line holds no control character or newline of the values logged (a file name)."""
    record.msg, record.args = escaped(record.getMessage()), ()
    return True


def is_debug() -> bool:
    return _STATE["debug"]


#: the commands' parameters that name an output path: made absolute before the command runs
OUTPUT_OPTIONS = ("out", "report")


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into a clear message and exit status 2 (traceback only with --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for name in OUTPUT_OPTIONS:  # `--out .` is `--out $PWD` (Path(".") has no name)
            if isinstance(kwargs.get(name), os.PathLike):
                kwargs[name] = type(kwargs[name])(os.path.abspath(kwargs[name]))
        _STATE["in_command"] += 1
        try:
            return func(*args, **kwargs)
        except (LymphomilError, OSError) as exc:
            if is_debug():
                raise
            if isinstance(exc, OSError):  # a full or read-only disk, a permission: the user's fix
                exc = from_os_error(exc)
            # escaped: a file name or a fix may hold [brackets] that Rich would eat as markup
            err_console.print(f"[bold red]error:[/] {escape(exc.render())}", highlight=False,
                              soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            exit_interrupted(exc)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug: say so plainly, keep the traceback for --debug
            if is_debug():
                raise
            err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: "
                              f"{show(exc)}\n"
                              "  re-run with --debug for the traceback, and report it",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        finally:  # the outputs this command locked (lymphomil.outputs.claim_output)
            _STATE["in_command"] -= 1
            _release_claims()

    return wrapper


def _release_claims() -> None:
    """Release the outputs this command locked (:func:`lymphomil.outputs.claim_output`)."""
    from lymphomil.outputs import release_claims  # deferred for start-up time (numpy)

    release_claims()
