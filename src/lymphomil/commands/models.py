"""`lymphomil models`: the registered model names."""

from __future__ import annotations

from rich.table import Table

from lymphomil.commands.app import app, console, handle_errors
from lymphomil.flows.defaults import DEFAULT_MODEL


@app.command("models")
@handle_errors
def list_models_command() -> None:
    """List the registered model names (use them with --model).

    Example: lymphomil models
    """
    from lymphomil.models.base import describe_models  # deferred for start-up time

    table = Table("model", "description")
    for name, text in describe_models().items():
        table.add_row(name + (" (default)" if name == DEFAULT_MODEL else ""), text)
    console.print(table)
