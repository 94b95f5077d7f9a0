"""Issue 22 item 5: two `features` on one cache share the work (per-patient claims); a second
writer of any command's output stops with a message while the first holds it."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lymphomil.features.claims import claim_path, share_work
from tests.reliability.test_sweep import _argv, invoke, no_traceback

CLI = [sys.executable, "-m", "lymphomil.cli"]


def _computed(output: str) -> int:
    return int(" ".join(output.split()).split("computed ")[1].split(" images")[0].replace(",", ""))


def test_two_extractions_into_one_cache_split_the_work(synthetic_root: Path,
                                                       tmp_path: Path) -> None:
    argv = [*CLI, "features", str(synthetic_root), "--backbone", "resnet50-thin", "--workers",
            "1", "--cache-dir", str(tmp_path / "cache")]
    env = dict(os.environ, COLUMNS="200")
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "cache").rglob("*.claim.tmp")) and first.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    second = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, err + second.stderr
    images = len(list(synthetic_root.rglob("*.jpg")))
    # each image computed once across the two (before: both computed everything)
    assert _computed(out) + _computed(second.stdout) == images, (out, second.stdout)
    assert not list((tmp_path / "cache").rglob("*.claim.tmp"))


def test_share_work_skips_a_claimed_item_then_finds_it_done(tmp_path: Path) -> None:
    paths = [claim_path(tmp_path, f"P{i}", "h") for i in range(4)]
    finished = set()
    computed: list[list[int]] = []
    elsewhere: list[int] = []
    fd = os.open(paths[0], os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # "another process" is computing P0

    def compute(chunk: list[int]) -> int:
        computed.append(chunk)
        finished.update(chunk)
        return len(chunk)

    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(share_work(
        [1] * 4, paths, lambda i: i in finished, compute, elsewhere.append, chunk_images=2)))
    worker.start()
    time.sleep(0.5)
    assert worker.is_alive()  # all it could do is done; it waits for P0
    finished.add(0)  # the other process wrote P0's files and lets go
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    worker.join(10)
    assert result == [3] and sorted(i for c in computed for i in c) == [1, 2, 3]
    assert elsewhere == [0]


def test_a_dead_claimant_does_not_block(tmp_path: Path) -> None:
    """A claim is an flock: the kernel drops it with its process, the waiter computes the item."""
    path = claim_path(tmp_path, "P0", "h")
    holder = subprocess.Popen([sys.executable, "-c",
                               "import fcntl, os, sys, time\n"
                               f"fd = os.open({str(path)!r}, os.O_CREAT | os.O_RDWR)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                               "print('held', flush=True)\n"
                               "time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    threading.Timer(0.5, holder.kill).start()
    done: set[int] = set()
    assert share_work([5], [path], lambda i: i in done, lambda c: done.update(c) or 5) == 5
    holder.wait()


# --------------------------------------------------------------------------- a second writer

WRITERS = {
    # command: (argv, the output whose lock the first writer holds)
    "cv": (["cv", "{data}", "-m", "tree", "--folds", "2", "--repeats", "1", "--cache-dir",
            "{tmp}/cache", "--out", "{tmp}/out"], "out"),
    "train": (["train", "{data}", "-m", "logreg", "--out", "{tmp}/out"], "out"),
    "run": (["run", "{data}", "--candidates", "tree", "--folds", "2", "--repeats", "1",
             "--cache-dir", "{tmp}/cache", "--out", "{tmp}/out"], "out"),
    "explore": (["explore", "{data}", "--out", "{tmp}/out"], "out"),
    "synth": (["synth", "{tmp}/out", "--patients", "8"], "out"),
    "predict --out": (["predict", "{model}", "{data}", "--all", "--out", "{tmp}/p.csv"], "p.csv"),
    "predict --report": (["predict", "{model}", "{data}", "--all", "--out", "{tmp}/p.csv",
                          "--report", "{tmp}/r.html"], "r.html"),
}


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_a_second_writer_of_any_output_stops_with_a_message(synthetic_root: Path,
                                                            logreg_model_dir: Path,
                                                            tmp_path: Path, command: str) -> None:
    argv, locked = WRITERS[command]
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / f".{locked}.lock").write_text(json.dumps({"host": host, "pid": other.pid}))
        result = invoke(*_argv(argv, data=synthetic_root, model=logreg_model_dir, tmp=tmp_path))
        assert result.exit_code == 2, result.output
        assert f"another lymphomil process (PID {other.pid}" in result.output
        assert "fix:" in result.output
        no_traceback(result)
        assert not (tmp_path / locked).exists()
    finally:
        other.kill()
        other.wait()
