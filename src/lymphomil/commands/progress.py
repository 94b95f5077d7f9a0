"""Progress a person can read, in a terminal or in a log.

In a terminal: a Rich bar (count, rate, elapsed, time left). Anywhere else (CI logs, ``make``,
a file): one line per 10 % of the work or every :data:`LINE_INTERVAL_S` seconds, whichever comes
first, with the count, the rate and the time left, so a long stage never sits silent::

    features resnet50-thin@112: 4,096/14,000 images (29 %), 96.1 images/s, 1 min 43 s left

``LYMPHOMIL_PROGRESS`` overrides the choice: ``bar``/``1`` (a bar even outside a terminal),
``lines``, or ``off``/``0`` (nothing). ``LYMPHOMIL_PROGRESS_INTERVAL`` sets the seconds between
lines. A model's epochs (a *transient* task) show as a bar that vanishes, on a terminal only.

The command line's side: only the CLI imports this module. Library code reports through
:mod:`lymphomil.runtime.progress_protocol`; the CLI installs :class:`TerminalProgress` there for the
length of each command.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from rich.console import Console

from lymphomil.runtime.errors import escaped

MIN_WIDTH = 20  # columns: a narrower console is not readable (COLUMNS=0 printed nothing)


class SafeConsole(Console):
    """A Rich console that never passes a control character of a printed string to the
    terminal (an escape sequence, a carriage return, a bidirectional override): every string
    is escaped (:func:`lymphomil.runtime.errors.escaped`) but for the newlines lymphomil lays out
    itself, before Rich adds its own styles. User strings are escaped, newlines too, where the
    message is made; this is the net under every print. A width from ``COLUMNS`` too small to
    read (``COLUMNS=0`` printed nothing at all, ``1`` a character a line) is not used."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.width < MIN_WIDTH:
            self.width = 80

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(escaped(o, keep="\n") if isinstance(o, str) else o for o in objects),
                      **kwargs)


#: messages and progress go to stderr; results to stdout. ``log_path=False``: no ``file.py:123``
#: at the end of a user-facing line
ERR_CONSOLE = SafeConsole(stderr=True, log_path=False)
LINE_INTERVAL_S = 30.0
LINE_FRACTION = 0.10


def mode(console: Console | None = None) -> str:
    """``bar``, ``lines`` or ``off``: from ``LYMPHOMIL_PROGRESS``, else bar on a terminal."""
    wanted = os.environ.get("LYMPHOMIL_PROGRESS", "").strip().lower()
    if wanted in ("0", "off", "no", "false"):
        return "off"
    if wanted in ("1", "bar"):
        return "bar"
    if wanted == "lines":
        return "lines"
    return "bar" if (console or ERR_CONSOLE).is_terminal else "lines"


def line_interval() -> float:
    try:
        return max(0.0, float(os.environ.get("LYMPHOMIL_PROGRESS_INTERVAL", LINE_INTERVAL_S)))
    except ValueError:
        return LINE_INTERVAL_S


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        minutes, secs = divmod(int(round(seconds)), 60)
        return f"{minutes} min {secs:02d} s"
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours} h {rest // 60:02d} min"


def _rate_text(rate: float, unit: str) -> str:
    if rate >= 1 or rate == 0:
        return f"{rate:,.1f} {unit}/s"
    return f"{60 * rate:,.1f} {unit}/min"


class LineProgress:
    """Periodic one-line updates for output that is not a terminal."""

    def __init__(self, description: str, total: int | None, unit: str = "items",
                 console: Console | None = None, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.description, self.total, self.unit = description, total, unit
        self.console = console or ERR_CONSOLE
        self.interval = line_interval() if interval is None else interval
        self.clock = clock
        self.done = 0.0
        self.start = clock()
        self._last_time = self.start
        self._last_step = 0  # how many LINE_FRACTION steps were already reported
        self.lines: list[str] = []

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.done / elapsed
        count = f"{self.done:,.0f}"
        if self.total:
            text = (f"{self.description}: {count}/{self.total:,} {self.unit} "
                    f"({100 * self.done / self.total:.0f} %), {_rate_text(rate, self.unit)}")
            if self.done >= self.total:
                return text + f", done in {format_duration(elapsed)}"
            left = (self.total - self.done) / rate if rate > 0 else None
            return text + (f", {format_duration(left)} left" if left is not None else "")
        return f"{self.description}: {count} {self.unit}, {_rate_text(rate, self.unit)}"

    def _emit(self) -> None:
        text = self.line()
        self.lines.append(text)
        self.console.print(text, highlight=False, soft_wrap=True, markup=False)
        self._last_time = self.clock()

    def advance(self, step: float = 1, **_fields: Any) -> None:
        self.done += step
        now = self.clock()
        step_index = int(self.done / self.total / LINE_FRACTION + 1e-9) if self.total else 0
        finished = bool(self.total) and self.done >= self.total
        if finished:
            return  # the closing line says it
        if step_index > self._last_step or now - self._last_time >= self.interval:
            self._last_step = max(step_index, self._last_step)
            self._emit()

    def close(self) -> None:
        if self.done > 0 or not self.total:
            self._emit()


def _bar(console: Console, transient: bool = False) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"),
                    BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                    transient=transient)


@contextmanager
def _lines(description: str, total: int | None, unit: str,
           console: Console) -> Iterator[Callable[..., None]]:
    lines = LineProgress(description, total, unit, console)
    try:
        yield lines.advance
    finally:
        lines.close()


@contextmanager
def progress_task(description: str, total: int | None, unit: str = "items",
                  console: Console | None = None) -> Iterator[Callable[..., None]]:
    """``with progress_task("cv", 25, "fits") as advance: ... advance(1, rate="3.1 fits/s")``.

    A bar in a terminal, periodic lines elsewhere (see the module doc); the ``rate=`` text is
    shown beside a bar, while lines compute their own rate.
    """
    console = console or ERR_CONSOLE
    how = mode(console)
    if how == "off":
        yield lambda step=1, **fields: None
        return
    if how == "lines":
        with _lines(description, total, unit, console) as advance:
            yield advance
        return
    from rich.errors import LiveError

    bar = _bar(console)
    try:
        bar.start()
    except LiveError:  # another bar is live (a nested stage): count in lines instead
        with _lines(description, total, unit, console) as advance:
            yield advance
        return
    try:
        task = bar.add_task(description, total=total, rate="")

        def advance(step: float = 1, **fields: Any) -> None:
            bar.update(task, advance=step, **fields)

        yield advance
    finally:
        bar.stop()


@contextmanager
def _epoch_bar(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """A transient bar over a model's epochs on a terminal; nothing otherwise (nor when another
    live display cannot nest)."""
    console = Console(stderr=True)  # its own console, as the training loop's bar always had
    if not console.is_terminal:
        yield lambda step=1, note="": None
        return
    from rich.errors import LiveError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                        console=console, transient=True)
    try:
        progress.start()
    except LiveError:  # another live display that cannot nest: stay silent
        yield lambda step=1, note="": None
        return
    try:
        task = progress.add_task(description, total=total, info="")

        def advance(step: float = 1, note: str = "") -> None:
            progress.update(task, advance=step, info=note)

        yield advance
    finally:
        progress.stop()


class TerminalProgress:
    """The command line's :class:`lymphomil.runtime.progress_protocol.Progress`: a counted task as
    :func:`progress_task` shows it (a bar, or lines, per ``LYMPHOMIL_PROGRESS``); a transient
    one (a model's epochs) as :func:`_epoch_bar`. A note is shown beside a bar."""

    def __init__(self, console: Console | None = None):
        self.console = console

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "items", *,
             transient: bool = False) -> Iterator[Callable[..., None]]:
        if transient:
            with _epoch_bar(description, total) as advance:
                yield advance
            return
        with progress_task(description, total, unit, self.console) as advance:
            yield lambda step=1, note="": advance(step, rate=note)


class StageReporter:
    """What ``lymphomil run`` shows: one line per stage (saying how long the previous one took)
    and a counted progress for the stages that count (cross-validation fits)."""

    def __init__(self, console: Console | None = None):
        self.console = console or ERR_CONSOLE
        self._context: Any = None
        self._advance: Callable[..., None] | None = None
        self._stage: str | None = None
        self._since = time.perf_counter()

    def _took(self) -> str:
        if self._stage is None:
            return ""
        return f" ({self._stage} took {format_duration(time.perf_counter() - self._since)})"

    def stage(self, name: str) -> None:
        self._close_counter()
        self.console.log(f"stage: {name}{self._took()}", highlight=False, markup=False)
        self._stage, self._since = name, time.perf_counter()

    def count(self, description: str, total: int, unit: str = "items") -> None:
        """Start counting ``total`` units of the current stage (ends at the next stage)."""
        self._close_counter()
        self._context = progress_task(description, total, unit, self.console)
        self._advance = self._context.__enter__()

    def advance(self, step: float = 1, **fields: Any) -> None:
        if self._advance is not None:
            self._advance(step, **fields)

    def _close_counter(self) -> None:
        if self._context is not None:
            context, self._context, self._advance = self._context, None, None
            context.__exit__(None, None, None)

    def close(self) -> None:
        """End the last stage (its time) and any open counter."""
        self._close_counter()
        if self._stage is not None:
            self.console.log(f"done{self._took()}", highlight=False, markup=False)
            self._stage = None
