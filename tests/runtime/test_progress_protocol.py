"""Progress goes through the callback the caller installs: the library shows nothing by itself,
a feature extraction and a neural fit report their counts to whatever progress is installed, and
the command line installs its bars and lines for the length of a command only."""

from __future__ import annotations

import io
import re
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from lymphomil.cli import app
from lymphomil.data.cohort import load_cohort
from lymphomil.data.synth import write_synthetic_cohort
from lymphomil.features import FeatureCache, FeatureSpec
from lymphomil.runtime import progress_protocol

SPEC = FeatureSpec(backbone="small-cnn", weights="none", crop=48, precision="fp32")


class Recording:
    """A Progress that keeps every task and its steps."""

    def __init__(self) -> None:
        self.tasks: list[dict] = []

    @contextmanager
    def task(self, description, total, unit="items", *, transient=False):
        record = {"description": description, "total": total, "unit": unit,
                  "transient": transient, "steps": [], "notes": [], "closed": False}
        self.tasks.append(record)

        def advance(step=1, note=""):
            record["steps"].append(step)
            record["notes"].append(note)

        try:
            yield advance
        finally:
            record["closed"] = True


def _patients(tmp_path: Path) -> list:
    root = write_synthetic_cohort(tmp_path / "cohort", n_patients=4, seed=3,
                                  images_per_patient=(2, 4))
    return load_cohort(root).patients


def test_the_default_is_silent() -> None:
    assert progress_protocol.current() is progress_protocol.SILENT
    with progress_protocol.task("anything", 3, "things") as advance:
        advance(1, "note")  # nothing to see, nothing raised


def test_an_extraction_reports_its_images_to_the_installed_progress(tmp_path: Path,
                                                                      capfd) -> None:
    patients = _patients(tmp_path)
    images = sum(p.n_images for p in patients)
    recording = Recording()
    with progress_protocol.using(recording):
        FeatureCache(tmp_path / "cache", workers=1, batch_size=2).ensure(patients, SPEC)
    assert progress_protocol.current() is progress_protocol.SILENT  # put back after the block
    [task] = recording.tasks
    assert task["description"] == f"features {SPEC.label()}" and task["unit"] == "images"
    assert task["total"] == images and sum(task["steps"]) == images and task["closed"]
    assert all(re.fullmatch(r"[\d,]+ img/s", note) for note in task["notes"])
    assert not task["transient"]
    # and with nothing installed, the same work prints nothing
    FeatureCache(tmp_path / "other", workers=1, batch_size=2).ensure(patients, SPEC)
    assert capfd.readouterr().err == ""


def test_a_neural_fit_reports_its_epochs_as_a_transient_task() -> None:
    from torch import nn

    from lymphomil.models.training import fit_loop

    recording = Recording()
    with progress_protocol.using(recording):
        history, _ = fit_loop(nn.Linear(2, 1), train_epoch=lambda epoch: 1.0 / epoch,
                              validate=None, max_epochs=3, patience=2, description="toy")
    [task] = recording.tasks
    assert (task["description"], task["total"], task["transient"]) == ("toy", 3, True)
    assert task["steps"] == [1, 1, 1] and len(history) == 3
    assert task["notes"][0].startswith("loss 1.000")


def test_the_command_line_installs_its_progress_for_one_command(tmp_path: Path,
                                                                monkeypatch) -> None:
    from lymphomil.commands.progress import TerminalProgress

    seen = []
    original = TerminalProgress.task

    def spy(self, description, total, unit="items", *, transient=False):
        seen.append((type(progress_protocol.current()).__name__, description, total))
        return original(self, description, total, unit, transient=transient)

    monkeypatch.setattr(TerminalProgress, "task", spy)
    root = write_synthetic_cohort(tmp_path / "c", n_patients=3, seed=4, images_per_patient=(2, 2))
    result = CliRunner().invoke(app, ["features", str(root), "--backbone", "small-cnn",
                                      "--weights", "none", "--crop", "48",
                                      "--cache-dir", str(tmp_path / "cache")],
                                env={"LYMPHOMIL_PROGRESS": "lines"})
    assert result.exit_code == 0, result.output
    assert seen == [("TerminalProgress", f"features {SPEC.label()}", 6)]
    assert re.search(rf"features {re.escape(SPEC.label())}: 6/6 images \(100 %\), .*done in",
                     result.output), result.output
    assert progress_protocol.current() is progress_protocol.SILENT  # not left behind


def test_the_terminal_progress_keeps_the_epoch_bar_off_a_log(capfd, monkeypatch) -> None:
    """Outside a terminal a transient task (a model's epochs) shows nothing, as the training bar
    did; a counted task prints its closing line."""
    from lymphomil.commands.progress import TerminalProgress

    monkeypatch.delenv("LYMPHOMIL_PROGRESS", raising=False)
    out = io.StringIO()
    progress = TerminalProgress(Console(file=out, width=200))
    with progress.task("epochs", 2, "epochs", transient=True) as advance:
        advance(1, "loss 0.5")
        advance(1, "loss 0.4")
    assert capfd.readouterr().err == "" and out.getvalue() == ""
    with progress.task("things", 2, "things") as advance:
        advance(2, "9 things/s")
    assert re.fullmatch(r"things: 2/2 things \(100 %\), [\d.,]+ things/(s|min), done in .+\n",
                        out.getvalue()), out.getvalue()
