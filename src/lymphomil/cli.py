"""Entry point of the ``lymphomil`` command: one Typer app, one module per group of commands."""

from __future__ import annotations

import os
import signal
import sys


def _exit_at_start(signum: int, _frame: object) -> None:
    """Ctrl-C or SIGTERM while the command line loads (about a second): nothing to clean up
    yet, so one line and out (:func:`main` installs the handlers that unwind a command)."""
    word = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    os.write(2, f"{word}: nothing was written\n".encode())
    os._exit(128 + signum)


# only in the ``lymphomil`` process itself (the console script, or ``python -m lymphomil.cli``):
# a notebook or a test suite importing the app keeps its own handlers
if sys.argv and os.path.basename(sys.argv[0]) in ("lymphomil", "cli.py"):
    signal.signal(signal.SIGINT, _exit_at_start)
    signal.signal(signal.SIGTERM, _exit_at_start)

from lymphomil.commands.app import (  # noqa: E402
    app,
    exit_interrupted,
    install_signal_handlers,
    readable_streams,
)

# each module registers its commands on ``app`` when imported, in the order --help lists them
# isort: off
from lymphomil.commands import data as _data  # noqa: F401,E402  synth, explore
from lymphomil.commands import features as _features  # noqa: F401,E402  features, cache
from lymphomil.commands import models as _models  # noqa: F401,E402  models
from lymphomil.commands import cv as _cv  # noqa: F401,E402  cv
from lymphomil.commands import train as _train  # noqa: F401,E402  train
from lymphomil.commands import predict as _predict  # noqa: F401,E402  predict
from lymphomil.commands import run as _run  # noqa: F401,E402  run
# isort: on


def main() -> None:
    install_signal_handlers()
    readable_streams()  # --help and Typer's own errors too
    try:
        app()
    except KeyboardInterrupt as exc:  # outside a command (while parsing the options)
        exit_interrupted(exc)


if __name__ == "__main__":  # pragma: no cover
    main()
