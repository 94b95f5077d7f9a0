"""Leftovers of killed runs beside an output folder: cleared or put back, never someone else's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lymphomil.runs import _host, _owner, staged_dir, sweep_stale_staging, verify_dir


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_dead_staging_is_cleared_live_and_foreign_ones_are_kept(tmp_path: Path) -> None:
    final = tmp_path / "run"
    dead, live = _dead_pid(), os.getpid()
    names = {
        "dead": f".run.{_host()}-{dead}.abc123_x.tmp",
        "live": f".run.{_host()}-{live}.def456yz.tmp",
        "other_host": f".run.elsewhere-{dead}.ghi789ab.tmp",
        "other_name": f".runs.{_host()}-{dead}.jkl012cd.tmp",
        "old_format": ".run.mno345ef.tmp",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_text("x")
    removed = sweep_stale_staging(final)
    assert removed == [tmp_path / names["dead"]]
    left = {p.name for p in tmp_path.iterdir()}
    assert left == set(names.values()) - {names["dead"]}


def test_a_replaced_folder_is_put_back_when_the_new_one_never_arrived(tmp_path: Path) -> None:
    final = tmp_path / "model"
    with staged_dir(final) as staging:
        (staging / "a.json").write_text("{}")
    old = tmp_path / f".model.old.{_host()}-{_dead_pid()}"
    os.replace(final, old)  # a kill between the two renames of a replacement
    sweep_stale_staging(final)
    assert not old.exists()
    verify_dir(final, "model")  # the previous output, whole


def test_a_stale_replaced_folder_beside_a_good_one_is_removed(tmp_path: Path) -> None:
    final = tmp_path / "model"
    final.mkdir()
    old = tmp_path / f".model.old.{_host()}-{_dead_pid()}"
    old.mkdir()
    assert sweep_stale_staging(final) == [old]
    assert final.is_dir()


def test_staged_dir_names_its_owner_and_clears_a_dead_ones_leftover(tmp_path: Path) -> None:
    final = tmp_path / "out"
    leftover = tmp_path / f".out.{_host()}-{_dead_pid()}.zzzzzzzz.tmp"
    leftover.mkdir()
    with staged_dir(final) as staging:
        assert staging.name.startswith(f".out.{_owner()}.") and staging.name.endswith(".tmp")
        assert not leftover.exists()
        (staging / "x.txt").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
