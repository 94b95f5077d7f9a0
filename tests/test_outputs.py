"""Leftovers of killed runs beside an output folder: cleared or put back, never someone else's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lymphomil.outputs import (
    atomic_write_bytes,
    host_name,
    owner_tag,
    staged_dir,
    sweep_stale_staging,
    sweep_stale_temp_files,
    verify_dir,
)


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _plant(folder: Path, names, folders: bool) -> None:
    """What killed (or live, or foreign) processes left: folders with a file in, or files."""
    for name in names:
        if folders:
            (folder / name).mkdir()
            (folder / name / "file").write_text("x")
        else:
            (folder / name).write_bytes(b"x")


def test_dead_staging_is_cleared_live_and_foreign_ones_are_kept(tmp_path: Path) -> None:
    final = tmp_path / "run"
    dead, live = _dead_pid(), os.getpid()
    names = {
        "dead": f".run.{host_name()}-{dead}.abc123_x.tmp",
        "live": f".run.{host_name()}-{live}.def456yz.tmp",
        "other_host": f".run.elsewhere-{dead}.ghi789ab.tmp",
        "other_name": f".runs.{host_name()}-{dead}.jkl012cd.tmp",
        "old_format": ".run.mno345ef.tmp",
    }
    _plant(tmp_path, names.values(), folders=True)
    removed = sweep_stale_staging(final)
    assert removed == [tmp_path / names["dead"]]
    left = {p.name for p in tmp_path.iterdir()}
    assert left == set(names.values()) - {names["dead"]}


def test_a_replaced_folder_is_put_back_when_the_new_one_never_arrived(tmp_path: Path) -> None:
    final = tmp_path / "model"
    with staged_dir(final) as staging:
        (staging / "a.json").write_text("{}")
    old = tmp_path / f".model.old.{host_name()}-{_dead_pid()}"
    os.replace(final, old)  # a kill between the two renames of a replacement
    sweep_stale_staging(final)
    assert not old.exists()
    verify_dir(final, "model")  # the previous output, whole


def test_a_stale_replaced_folder_beside_a_good_one_is_removed(tmp_path: Path) -> None:
    final = tmp_path / "model"
    final.mkdir()
    old = tmp_path / f".model.old.{host_name()}-{_dead_pid()}"
    old.mkdir()
    assert sweep_stale_staging(final) == [old]
    assert final.is_dir()


def test_staged_dir_names_its_owner_and_clears_a_dead_ones_leftover(tmp_path: Path) -> None:
    final = tmp_path / "out"
    leftover = tmp_path / f".out.{host_name()}-{_dead_pid()}.zzzzzzzz.tmp"
    leftover.mkdir()
    with staged_dir(final) as staging:
        assert staging.name.startswith(f".out.{owner_tag()}.") and staging.name.endswith(".tmp")
        assert not leftover.exists()
        (staging / "x.txt").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_dead_temp_files_are_removed_live_and_foreign_ones_are_kept(tmp_path: Path) -> None:
    dead, live = _dead_pid(), os.getpid()
    names = {
        "dead": f".a.json.{host_name()}-{dead}.abc123_x.tmp",
        "dead_dotted": f".p-1.pooled.safetensors.{host_name()}-{dead}.zz9yy8xx.tmp",
        "live": f".a.json.{host_name()}-{live}.def456yz.tmp",
        "other_host": f".a.json.elsewhere-{dead}.ghi789ab.tmp",
        "old_format": ".a.json.mno345ef.tmp",
        "not_temp": f"a.json.{host_name()}-{dead}.abc123_x",
    }
    _plant(tmp_path, names.values(), folders=False)
    # a staging folder: not this sweep's
    (tmp_path / f".d.{host_name()}-{dead}.qrs678tu.tmp").mkdir()
    removed = sweep_stale_temp_files(tmp_path)
    assert removed == sorted([tmp_path / names["dead"], tmp_path / names["dead_dotted"]])
    left = {p.name for p in tmp_path.iterdir()}
    assert left == (set(names.values()) - {names["dead"], names["dead_dotted"]}
                    | {f".d.{host_name()}-{dead}.qrs678tu.tmp"})
    assert sweep_stale_temp_files(tmp_path / "absent") == []


def test_atomic_writes_name_their_owner_so_a_kill_can_be_cleared(tmp_path: Path,
                                                                 monkeypatch) -> None:
    seen: list[str] = []
    replace = os.replace

    def spy(src, dst):
        seen.append(Path(src).name)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    atomic_write_bytes(tmp_path / "out.bin", b"data")
    assert (tmp_path / "out.bin").read_bytes() == b"data"
    assert (len(seen) == 1 and seen[0].startswith(f".out.bin.{owner_tag()}.")
            and seen[0].endswith(".tmp"))
