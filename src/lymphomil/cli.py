"""Entry point of the ``lymphomil`` command: one Typer app, one module per group of commands."""

from __future__ import annotations

from lymphomil.cli_app import app

# each module registers its commands on ``app`` when imported
from lymphomil.commands import data as _data  # noqa: F401,E402  synth, explore
from lymphomil.commands import models as _models  # noqa: F401,E402  cv, train, predict, run
from lymphomil.commands import features as _features  # noqa: F401,E402  features, cache


def main() -> None:
    from lymphomil.cli_app import exit_interrupted, install_signal_handlers

    install_signal_handlers()
    try:
        app()
    except KeyboardInterrupt as exc:  # outside a command (while parsing the options)
        exit_interrupted(exc)


if __name__ == "__main__":  # pragma: no cover
    main()
