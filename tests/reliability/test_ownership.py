"""Issue 22 item 1: no output ever replaces, truncates or writes through what lymphomil did not
write. Every command that writes (cv, train, predict, run, explore, synth) over every kind of
thing a user may own at its output path; the user's bytes are hashed before and after."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lymphomil.outputs import OUTPUT_MARKER, file_record_path, folder_kind, staged_dir, verify_dir
from tests.reliability.test_sweep import _argv, invoke, no_traceback, tree_digest

# each folder-writing command, with {out} where its folder goes; all are refused before any work
FOLDER_COMMANDS = {
    "cv": ["cv", "{data}", "-m", "tree", "--folds", "2", "--repeats", "1", "--cache-dir",
           "{cache}", "--out", "{out}"],
    "train": ["train", "{data}", "-m", "logreg", "--out", "{out}", "--cache-dir", "{cache}"],
    "run": ["run", "{data}", "--candidates", "tree", "--folds", "2", "--repeats", "1",
            "--cache-dir", "{cache}", "--out", "{out}"],
    "explore": ["explore", "{data}", "--out", "{out}"],
    "synth": ["synth", "{out}", "--patients", "8", "--min-images", "1", "--max-images", "2"],
}
KIND_OF = {"cv": "cv", "train": "model", "run": "run", "explore": "explore", "synth": "cohort"}


def _forged(folder: Path, kind: str) -> Path:
    """A finished lymphomil folder of ``kind`` (what the command of that kind leaves)."""
    with staged_dir(folder, kind) as staging:
        (staging / "metrics.json").write_text("{}")
    return folder


def _run(command: str, out: Path, data: Path, tmp: Path):
    return invoke(*_argv(FOLDER_COMMANDS[command], data=data, cache=tmp / "cache", out=out))


def _refused(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    for word in words:
        assert word in text, text
    assert "fix:" in result.output
    no_traceback(result)


# --------------------------------------------------------------------------- folders


@pytest.mark.parametrize("kind", sorted(KIND_OF.values()))
@pytest.mark.parametrize("command", sorted(FOLDER_COMMANDS))
def test_a_command_replaces_only_its_own_kind_of_folder(cohort: Path, tmp_path: Path,
                                                        command: str, kind: str) -> None:
    if KIND_OF[command] == kind:
        pytest.skip("its own kind: replaced (see the re-run tests)")
    out = _forged(tmp_path / "theirs", kind)
    before = tree_digest(out)
    _refused(_run(command, out, cohort, tmp_path), f"is a lymphomil {kind} folder",
             f"replaces only {KIND_OF[command]} folders")
    assert tree_digest(out) == before


def test_cv_out_at_a_trained_model_keeps_the_model(cohort: Path, logreg_model: Path,
                                                   tmp_path: Path) -> None:
    model = Path(shutil.copytree(logreg_model, tmp_path / "model", symlinks=True))
    before = tree_digest(model)
    _refused(_run("cv", model, cohort, tmp_path), "is a lymphomil model folder")
    assert tree_digest(model) == before
    verify_dir(model)


@pytest.mark.parametrize("command", sorted(FOLDER_COMMANDS))
def test_an_edited_file_in_its_own_folder_is_never_lost(cohort: Path, tmp_path: Path,
                                                        command: str) -> None:
    out = _forged(tmp_path / "ours", KIND_OF[command])
    (out / "metrics.json").write_text('{"my": "edit"}')
    _refused(_run(command, out, cohort, tmp_path), "changed since lymphomil wrote them",
             "metrics.json")
    assert (out / "metrics.json").read_text() == '{"my": "edit"}'


@pytest.mark.parametrize("command", sorted(FOLDER_COMMANDS))
def test_a_file_added_to_its_own_folder_is_kept_and_named(cohort: Path, tmp_path: Path,
                                                          command: str) -> None:
    out = _forged(tmp_path / "ours", KIND_OF[command])
    (out / "sub").mkdir()
    (out / "sub" / "notes.txt").write_text("mine")
    _refused(_run(command, out, cohort, tmp_path), "did not write: sub/notes.txt",
             "nothing was changed")
    assert (out / "sub" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("target", ["own folder", "user folder"])
@pytest.mark.parametrize("command", sorted(FOLDER_COMMANDS))
def test_a_link_at_the_output_path_is_refused(cohort: Path, tmp_path: Path, command: str,
                                              target: str) -> None:
    real = tmp_path / "real"
    if target == "own folder":
        _forged(real, KIND_OF[command])
    else:
        real.mkdir()
        (real / "thesis.docx").write_text("precious")
    before = tree_digest(real)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    _refused(_run(command, link, cohort, tmp_path), "is a symbolic link",
             "never writes through a link")
    assert link.is_symlink() and tree_digest(real) == before


@pytest.mark.parametrize("command", sorted(FOLDER_COMMANDS))
def test_a_fifo_at_the_output_path_is_refused(cohort: Path, tmp_path: Path, command: str) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    _refused(_run(command, fifo, cohort, tmp_path), "named pipe (FIFO)")
    assert fifo.is_fifo()


@pytest.mark.parametrize("command", sorted(FOLDER_COMMANDS))
def test_no_output_inside_another_lymphomil_folder(cohort: Path, tmp_path: Path,
                                                   command: str) -> None:
    run = _forged(tmp_path / "run", "run")
    before = tree_digest(run)
    _refused(_run(command, run / "inner", cohort, tmp_path), "lies inside a lymphomil run folder")
    assert tree_digest(run) == before


def test_a_folder_written_before_kinds_were_recorded_is_still_a_model(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "model.json").write_text("{}")
    (folder / OUTPUT_MARKER).write_text(json.dumps({"written_by": "lymphomil", "kind": "output",
                                                    "files": ["model.json"]}))
    assert folder_kind(folder) == "model"


def test_train_is_staged_with_its_card_and_marks_a_model(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    result = _run("train", out, cohort, tmp_path)
    assert result.exit_code == 0, result.output
    verify_dir(out)  # the card is covered by the checksums written before the rename
    marker = json.loads((out / OUTPUT_MARKER).read_text())
    assert marker["kind"] == "model" and "model_card.json" in marker["files"]
    assert "model_card.json" in marker["sha256"]
    again = _run("train", out, cohort, tmp_path)  # its own kind, unchanged: replaced
    assert again.exit_code == 0, again.output


def test_explore_is_staged_and_a_clean_rerun_drops_the_old_skipped_list(cohort: Path,
                                                                        tmp_path: Path) -> None:
    out = tmp_path / "explore"
    image = next((cohort / "trainset").rglob("*.jpg"))
    original = image.read_bytes()
    image.write_bytes(b"not a jpeg")
    first = invoke("explore", cohort, "--out", out, "--on-error", "skip")
    assert first.exit_code == 0, first.output
    assert (out / "skipped.json").is_file() and (out / "checksums.json").is_file()
    image.write_bytes(original)
    second = invoke("explore", cohort, "--out", out)
    assert second.exit_code == 0, second.output
    assert not (out / "skipped.json").exists()
    assert folder_kind(out) == "explore"


# --------------------------------------------------------------------------- single files


PREDICT = ["predict", "{model}", "{data}", "--all", "--out", "{out}"]


def _predict(model: Path, data: Path, out: Path, *extra: object):
    return invoke(*_argv(PREDICT, model=model, data=data, out=out), *extra)


@pytest.mark.parametrize("option", ["--out", "--report"])
def test_predict_never_overwrites_a_users_file(cohort: Path, logreg_model: Path, tmp_path: Path,
                                               option: str) -> None:
    mine = tmp_path / ("results.csv" if option == "--out" else "notes.html")
    mine.write_text("my own notes")
    out = mine if option == "--out" else tmp_path / "p.csv"
    extra = [] if option == "--out" else ["--report", mine]
    _refused(_predict(logreg_model, cohort, out, *extra), "was not written by lymphomil",
             mine.name)
    assert mine.read_text() == "my own notes"
    if option == "--report":
        assert not out.exists()  # refused before anything was written


def test_predict_replaces_its_own_file_but_not_an_edited_one(cohort: Path, logreg_model: Path,
                                                             tmp_path: Path) -> None:
    out, report = tmp_path / "p.csv", tmp_path / "r.html"
    assert _predict(logreg_model, cohort, out, "--report", report).exit_code == 0
    assert file_record_path(out).is_file() and file_record_path(report).is_file()
    again = _predict(logreg_model, cohort, out, "--report", report)
    assert again.exit_code == 0, again.output
    out.write_text(out.read_text() + "my note\n")
    edited = out.read_text()
    _refused(_predict(logreg_model, cohort, out), "was changed since lymphomil wrote it")
    assert out.read_text() == edited


def test_an_empty_file_at_out_is_free(cohort: Path, logreg_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    out.touch()  # e.g. `mktemp`: nothing to lose
    result = _predict(logreg_model, cohort, out)
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("ID,LABEL,PROBA")


@pytest.mark.parametrize("option", ["--out", "--report"])
@pytest.mark.parametrize("thing", ["link to a user file", "link to nowhere", "fifo", "folder"])
def test_predict_refuses_links_pipes_and_folders(cohort: Path, logreg_model: Path,
                                                 tmp_path: Path, option: str, thing: str) -> None:
    path = tmp_path / "target"
    user = tmp_path / "user.txt"
    user.write_text("mine")
    if thing == "link to a user file":
        path.symlink_to(user)
    elif thing == "link to nowhere":
        path.symlink_to(tmp_path / "nowhere.csv")
    elif thing == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    extra = [] if option == "--out" else ["--report", path]
    out = path if option == "--out" else tmp_path / "p.csv"
    words = {"fifo": "named pipe (FIFO)", "folder": "is a folder, not a file"}.get(
        thing, "is a symbolic link")
    _refused(_predict(logreg_model, cohort, out, *extra), words)
    assert user.read_text() == "mine"
    assert not (tmp_path / "nowhere.csv").exists()


def test_a_clean_predict_removes_the_skipped_list_of_an_earlier_run(cohort: Path,
                                                                    logreg_model: Path,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    skipped = tmp_path / "p.skipped.json"
    image = next((cohort / "testset").rglob("*.jpg"))
    original = image.read_bytes()
    image.write_bytes(b"not a jpeg")
    first = _predict(logreg_model, cohort, out, "--on-error", "skip")
    assert first.exit_code == 0, first.output
    assert skipped.is_file()
    image.write_bytes(original)
    second = _predict(logreg_model, cohort, out)
    assert second.exit_code == 0, second.output
    assert not skipped.exists() and not file_record_path(skipped).exists()


def test_a_users_file_named_like_the_skipped_list_is_refused(cohort: Path, logreg_model: Path,
                                                            tmp_path: Path) -> None:
    (tmp_path / "p.skipped.json").write_text("mine")
    _refused(_predict(logreg_model, cohort, tmp_path / "p.csv"), "p.skipped.json")
    assert (tmp_path / "p.skipped.json").read_text() == "mine"
    assert not (tmp_path / "p.csv").exists()


def test_predict_report_inside_the_data_folder_is_refused(cohort: Path, logreg_model: Path,
                                                          tmp_path: Path) -> None:
    before = tree_digest(cohort)
    _refused(_predict(logreg_model, cohort, tmp_path / "p.csv", "--report", cohort / "r.html"),
             "lies inside the data folder")
    assert tree_digest(cohort) == before


@pytest.fixture
def cohort(tmp_path: Path, small_cohort: Path) -> Path:
    return Path(shutil.copytree(small_cohort, tmp_path / "cohort", symlinks=True))


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lymphomil.data.synth import write_synthetic_cohort

    folder = tmp_path_factory.mktemp("own") / "cohort"
    return write_synthetic_cohort(folder, n_patients=24, seed=3, images_per_patient=(2, 3))


@pytest.fixture
def logreg_model(logreg_model_dir: Path) -> Path:
    return logreg_model_dir
