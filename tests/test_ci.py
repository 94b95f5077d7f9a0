"""What CI requires that a local run does not: the shared cohort (the Ray extra: tests/runtime)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import shared_folder

ROOT = Path(__file__).resolve().parents[1]


def test_shared_data_is_skipped_locally_and_required_in_ci(tmp_path: Path, monkeypatch) -> None:
    """Without ../shared a test that reads it skips, except under LYMPHOMIL_REQUIRE_SHARED=1
    (.ci/run), where it fails: CI cannot pass without the shared cohort."""
    missing = tmp_path / "nowhere"
    monkeypatch.delenv("LYMPHOMIL_REQUIRE_SHARED", raising=False)
    with pytest.raises(pytest.skip.Exception):
        shared_folder(missing)
    monkeypatch.setenv("LYMPHOMIL_REQUIRE_SHARED", "1")
    with pytest.raises(pytest.fail.Exception, match="CI needs it"):
        shared_folder(missing)
    assert shared_folder(tmp_path) == tmp_path
    assert "LYMPHOMIL_REQUIRE_SHARED=1" in (ROOT / ".ci" / "run").read_text()
