"""How long work says how far it got: the :class:`Progress` protocol, a silent default, and the
progress this process reports to.

A bottom-layer module (it imports nothing of lymphomil). Library code opens a counted task and
advances it; what a person sees is decided by whoever installed the :class:`Progress`::

    with progress_protocol.task(f"features {spec.label()}", total, "images") as advance:
        advance(16, "96 img/s")          # a step, and a short note shown beside a bar

By default nothing is shown: a script that does ``import lymphomil`` gets no progress output.
The command line installs its bars and lines
(:class:`lymphomil.commands.progress.TerminalProgress`) for the length of a command with
:func:`using`; a script may install that one, or its own.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from typing import Callable, Iterator, Protocol


class Advance(Protocol):
    def __call__(self, step: float = 1, note: str = "") -> None:
        """``step`` more units done; ``note`` a short text a bar may show (a rate, a loss)."""


class Progress(Protocol):
    """Something that shows counted tasks: features extracted, a model's epochs."""

    def task(self, description: str, total: int | None, unit: str = "items", *,
             transient: bool = False) -> AbstractContextManager[Advance]:
        """A task of ``total`` ``unit``; ``transient``: a short inner count (a model's epochs)
        that may be shown while it runs and leave nothing behind."""
        ...


def _ignore(step: float = 1, note: str = "") -> None:
    pass


class Silent:
    """Shows nothing (the library's default)."""

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "items", *,
             transient: bool = False) -> Iterator[Advance]:
        yield _ignore


SILENT = Silent()
_CURRENT: list[Progress] = [SILENT]


def current() -> Progress:
    """The progress this process reports to (:data:`SILENT` unless one was installed)."""
    return _CURRENT[0]


@contextmanager
def using(progress: Progress) -> Iterator[Progress]:
    """Report to ``progress`` inside the ``with`` block (the previous one is put back after)."""
    previous = _CURRENT[0]
    _CURRENT[0] = progress
    try:
        yield progress
    finally:
        _CURRENT[0] = previous


def task(description: str, total: int | None, unit: str = "items", *,
         transient: bool = False) -> AbstractContextManager[Advance]:
    """A counted task of the current progress (see :class:`Progress`)."""
    return _CURRENT[0].task(description, total, unit, transient=transient)


@contextmanager
def counting(description: str, total: int, unit: str,
             count: Callable[..., None] | None = None) -> Iterator[Callable[..., None]]:
    """``count`` when the caller counts the work itself, else a task of the current progress;
    either way a function taking ``(step, rate="")``, as the CV harness reports its fits."""
    if count is not None:
        yield count
        return
    with task(description, total, unit) as advance:
        yield lambda step=1, rate="": advance(step, rate)
