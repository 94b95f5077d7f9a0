"""Each default is written once (lymphomil.flows.defaults, no pydantic): RunConfig's fields and
the commands' `--help` read it there; the reference date's default lives in one line of src."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from lymphomil.cli import app
from lymphomil.flows.config import RunConfig
from lymphomil.flows.defaults import DEFAULT_CANDIDATES, DEFAULT_MODEL, RUN_DEFAULTS, shown

SRC = Path(__file__).resolve().parents[2] / "src" / "lymphomil"


def test_the_run_config_reads_its_defaults_from_the_table() -> None:
    config = RunConfig()
    for name, value in RUN_DEFAULTS.items():
        assert getattr(config, name) == value, name
    assert config.candidates == DEFAULT_CANDIDATES and DEFAULT_MODEL in DEFAULT_CANDIDATES


def test_help_shows_the_defaults_of_the_table() -> None:
    text = re.sub(r"\s+", " ", CliRunner().invoke(app, ["cv", "--help"],
                                                  terminal_width=200).output)
    for name, option in (("folds", "--folds"), ("reference_date", "--reference-date"),
                         ("threads", "--threads")):
        assert re.search(re.escape(option) + r" .*?\[default: " + re.escape(shown(name)), text), \
            name


def test_the_reference_date_default_is_written_once() -> None:
    """The year of the challenge, as a date or as text, in one place of the package."""
    pattern = re.compile(r"2024(-01-01|, 1, 1)")
    found = [f"{path.relative_to(SRC)}:{i}" for path in sorted(SRC.rglob("*.py"))
             for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if pattern.search(line)]
    assert found == ["data/reference_date.py:13"]
