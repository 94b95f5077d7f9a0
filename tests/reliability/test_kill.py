"""Crash safety: a real SIGKILL at several points never leaves output a later run trusts.

After each kill: the final output either does not exist or verifies (``verify_dir``); no
half-written file sits under a final name (temp files are dot-prefixed ``.name.*.tmp``); and
the same command then completes cleanly, reusing the (possibly half-filled) feature cache.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lymphomil.outputs import CHECKSUMS, verify_dir

LYMPHOMIL = Path(sys.executable).with_name("lymphomil")


# The CLI, held at a hooked phase so that a kill there is certain, not a race with a run that takes
# milliseconds: "fit" (inside the model's fit, before any output exists) or "staging" (inside its
# staging folder once the folder is complete, checksums written, before the rename). The held
# process writes the marker file, then sleeps.
_HELD_AT = """
import sys, time
from pathlib import Path
from lymphomil import outputs
from lymphomil.cli import main
from lymphomil.models.attributes import AttributeModel
phase, marker = sys.argv.pop(1), Path(sys.argv.pop(1))
def hold():
    marker.write_text(phase)
    time.sleep(300)
if phase == "staging":
    write = outputs.write_checksums
    def held(folder):
        written = write(folder)
        hold()
        return written
    outputs.locks.write_checksums = held
elif phase == "fit":
    def held_fit(self, patients, y):
        hold()
    AttributeModel.fit = held_fit
sys.argv[0] = "lymphomil"
main()
"""
HELD = ".held"  # the marker, in the working folder


def start(args: list, work: Path, hold_at: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, LYMPHOMIL_CACHE_DIR=str(work / "cache-default"))
    command = ([sys.executable, "-c", _HELD_AT, hold_at, str(work / HELD)] if hold_at
               else [str(LYMPHOMIL)])
    return subprocess.Popen([*command, *map(str, args)], cwd=work, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def kill_after(proc: subprocess.Popen, when: float | str, out: Path) -> bool:
    """SIGKILL the process group after ``when`` seconds, ``"staging"``: as soon as a staged
    temp folder for ``out`` appears, or ``"held"``: as soon as a process started with ``hold_at``
    is held (its marker file exists). False when the process had already finished."""
    deadline = time.monotonic() + (when if isinstance(when, float) else 120.0)
    while time.monotonic() < deadline and proc.poll() is None:
        if when == "staging" and list(out.parent.glob(f".{out.name}.*.tmp")):
            break
        if when == "held" and (out.parent / HELD).exists():
            break
        time.sleep(0.005 if when == "staging" else 0.05)
    finished = proc.poll() is not None
    if not finished:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return not finished


def finish(args: list, work: Path) -> None:
    proc = start(args, work)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-3000:]


def assert_folder_safe(out: Path, what: str) -> None:
    """Either absent, or complete and verified; temp leftovers only under dot names."""
    if out.exists():
        verify_dir(out, what)  # raises if incomplete or damaged
    for entry in out.parent.iterdir():
        if entry.name.endswith(".tmp"):
            assert entry.name.startswith(f".{out.name}.") or entry.name.startswith("."), entry


def assert_same_bytes(folder: Path, reference: Path) -> None:
    """Every file of ``folder`` (names and bytes) as in ``reference``."""
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file()}

    got, expected = files(folder), files(reference)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name] == expected[name], f"{name} differs from a clean run's"


def assert_no_visible_temp(folder: Path) -> None:
    if not folder.exists():
        return
    for path in folder.rglob("*"):
        if path.name.endswith(".tmp"):
            assert path.name.startswith("."), path


def train_args(root: Path, work: Path, model: str) -> list:
    return ["train", root, "-m", model, "--out", work / "model", "--cache-dir", work / "cache"]


def run_args(root: Path, work: Path, candidates: str) -> list:
    return ["run", root, "--out", work / "run", "--candidates", candidates, "--folds", "2",
            "--repeats", "1", "--cache-dir", work / "cache"]


def cv_args(root: Path, work: Path, models: tuple[str, ...]) -> list:
    return ["cv", root, *[a for m in models for a in ("-m", m)], "--folds", "3", "--repeats",
            "1", "--out", work / "cv", "--cache-dir", work / "cache"]


# --------------------------------------------------------------------------- fast (default)


@pytest.fixture(scope="module")
def clean_train(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean, never-killed `train -m tree` in its own process (the reference of both phases)."""
    clean = tmp_path_factory.mktemp("clean")
    finish(train_args(synthetic_root, clean, "tree"), clean)
    return clean / "model"


@pytest.mark.parametrize("phase", ["fit", "staging"])
def test_train_killed_at_a_hooked_phase_then_rerun_equals_a_clean_run(
        synthetic_root: Path, tmp_path: Path, clean_train: Path, phase: str) -> None:
    work = tmp_path / "killed"
    work.mkdir()
    args = train_args(synthetic_root, work, "tree")
    assert kill_after(start(args, work, hold_at=phase), "held", work / "model"), \
        "the process finished before the kill"
    assert (work / HELD).read_text() == phase
    assert_folder_safe(work / "model", "model")
    if phase == "staging":
        assert list(work.glob(".model.*.tmp"))  # what the kill left
    else:
        assert not (work / "model").exists()
    finish(args, work)
    verify_dir(work / "model", "model")
    assert not list(work.glob(".model.*"))  # cleared by the rerun
    assert_same_bytes(work / "model", clean_train)


def test_truncated_model_folder_is_refused(synthetic_root: Path, tmp_path: Path) -> None:
    """A model folder without checksums.json (a copy cut short) is refused by predict."""
    from typer.testing import CliRunner

    from lymphomil.cli import app

    runner = CliRunner()
    model = tmp_path / "model"
    assert runner.invoke(app, ["train", str(synthetic_root), "-m", "tree", "--out",
                               str(model)]).exit_code == 0
    (model / CHECKSUMS).unlink()
    result = runner.invoke(app, ["predict", str(model), str(synthetic_root), "--out",
                                 str(tmp_path / "p.csv")])
    assert result.exit_code == 2 and "incomplete" in result.output and "fix:" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "p.csv").exists()
    # and a folder whose listed file vanished
    assert runner.invoke(app, ["train", str(synthetic_root), "-m", "tree", "--out",
                               str(model)]).exit_code == 0
    (model / "model.json").unlink()
    result = runner.invoke(app, ["predict", str(model), str(synthetic_root), "--out",
                                 str(tmp_path / "p.csv")])
    assert result.exit_code == 2 and "missing" in result.output
    assert not (tmp_path / "p.csv").exists()


# --------------------------------------------------------------------------- slow matrix

POINTS = [0.5, 2.0, 5.0, "staging"]


@pytest.mark.slow
@pytest.mark.parametrize("when", POINTS)
def test_train_killed_at(synthetic_root: Path, tmp_path: Path, when) -> None:
    args = train_args(synthetic_root, tmp_path, "image-logreg")
    kill_after(start(args, tmp_path), when, tmp_path / "model")
    assert_folder_safe(tmp_path / "model", "model")
    finish(args, tmp_path)
    verify_dir(tmp_path / "model", "model")


@pytest.mark.slow
@pytest.mark.parametrize("when", POINTS)
def test_run_killed_at(synthetic_root: Path, tmp_path: Path, when) -> None:
    args = run_args(synthetic_root, tmp_path, "tree,image-logreg")
    kill_after(start(args, tmp_path), when, tmp_path / "run")
    assert_folder_safe(tmp_path / "run", "run")
    finish(args, tmp_path)
    verify_dir(tmp_path / "run", "run")
    verify_dir(tmp_path / "run" / "model", "model")
    assert_no_visible_temp(tmp_path / "run")


@pytest.mark.slow
def test_killed_rerun_keeps_the_previous_run(synthetic_root: Path, tmp_path: Path) -> None:
    """A finished run folder survives a killed re-run (old folder or new, never half)."""
    args = run_args(synthetic_root, tmp_path, "tree,logreg")
    finish(args, tmp_path)
    for when in (1.0, 3.0, "staging"):
        kill_after(start(args, tmp_path), when, tmp_path / "run")
        verify_dir(tmp_path / "run", "run")  # the old run, untouched
    finish(args, tmp_path)
    verify_dir(tmp_path / "run", "run")


@pytest.mark.slow
@pytest.mark.parametrize("when", [0.5, 2.0, 5.0, 10.0])
def test_cv_killed_at(synthetic_root: Path, tmp_path: Path, when) -> None:
    """cv --out is staged: after a kill it is absent or complete (verified by its checksums)."""
    models = ("tree", "image-logreg")
    args = cv_args(synthetic_root, tmp_path, models)
    kill_after(start(args, tmp_path), when, tmp_path / "cv")
    out = tmp_path / "cv"
    assert_no_visible_temp(out)
    assert_folder_safe(out, "cv")
    finish(args, tmp_path)
    assert set(json.loads((out / "metrics.json").read_text())) == set(models)


def test_finished_cv_folder_verifies(synthetic_root: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lymphomil.cli import app

    result = CliRunner().invoke(app, ["cv", str(synthetic_root), "-m", "tree", "--folds", "2",
                                      "--repeats", "1", "--out", str(tmp_path / "cv")])
    assert result.exit_code == 0
    verify_dir(tmp_path / "cv", "cv")
