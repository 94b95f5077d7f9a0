"""Fixtures of the reliability tests: one trained model folder for the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from lymphomil.cli import app


@pytest.fixture(scope="session")
def logreg_model_dir(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An attributes-only logreg model (no features needed: predict is fast; the compact grid:
    trained in 3 s instead of 13), trained once for the bad-input, strict-input and sweep tests;
    read-only (copy it to change it)."""
    out = tmp_path_factory.mktemp("model") / "logreg"
    result = CliRunner().invoke(app, ["train", str(synthetic_root), "-m", "logreg-compact",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out
