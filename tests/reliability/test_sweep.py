"""Issue 14: options checked before any work, outputs owned by lymphomil, no `internal error`.

Everything through the CLI (Typer's CliRunner). The sweep at the end runs every command over
every failure class and asserts exit 2, a message naming the file or the option with a fix, the
inputs unchanged (hashed before and after), and under ``--on-error skip`` in = predicted + skipped.
docs/bad-inputs.md is the table of these cases.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lymphomil.cli import app
from lymphomil.data.synth import write_synthetic_cohort

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def no_traceback(result) -> None:
    assert "Traceback" not in result.output and "internal error" not in result.output, \
        result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def tree_digest(*folders: Path) -> dict[str, str]:
    """sha256 of every file under ``folders`` (links and pipes by their kind, never read)."""
    out = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_symlink():
                out[str(path)] = "link:" + os.readlink(path)
            elif path.is_fifo():
                out[str(path)] = "fifo"
            elif path.is_file():
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 synthetic patients, 2-3 images each (fast to read and to decode)."""
    folder = tmp_path_factory.mktemp("sweep") / "cohort"
    return write_synthetic_cohort(folder, n_patients=24, seed=3, images_per_patient=(2, 3))


@pytest.fixture
def cohort(small_cohort: Path, tmp_path: Path) -> Path:
    """A private copy the test may damage."""
    return Path(shutil.copytree(small_cohort, tmp_path / "cohort", symlinks=True))


@pytest.fixture
def logreg_model(logreg_model_dir: Path) -> Path:
    """The session's logreg model folder (tests/reliability/conftest.py); read-only."""
    return logreg_model_dir


# --------------------------------------------------------------------------- options first

# tree wherever a command must fit a model: these tests are about the commands, not the model, and
# a tree fits in milliseconds (logreg's Table-2 grid takes seconds a fit, and `run` refits the
# chosen model 20 times for the uncertainty)
FEATURES = ["features", "{data}", "--backbone", "small-cnn", "--weights", "none", "--workers", "1",
            "--cache-dir", "{cache}"]
CV = ["cv", "{data}", "-m", "tree", "--folds", "2", "--repeats", "1", "--cache-dir", "{cache}"]
RUN = ["run", "{data}", "--candidates", "tree", "--folds", "2", "--repeats", "1",
       "--cache-dir", "{cache}", "--out", "{tmp}/run"]

BAD_OPTIONS = {
    # case: (argv, words in the message)
    "features --crop 5000": (FEATURES + ["--crop", "5000"],
                             "--crop 5000 is out of range (8 to 224)"),
    "features --crop 0": (FEATURES + ["--crop", "0"], "--crop 0 is out of range"),
    "features --crop -3": (FEATURES + ["--crop", "-3"], "--crop -3 is out of range"),
    "features --batch-size 0": (FEATURES + ["--batch-size", "0"], "--batch-size 0 is out of range"),
    "features --batch-size 10**7": (FEATURES + ["--batch-size", "10000000"],
                                    "--batch-size 10000000 is out of range (1 to 512)"),
    "features --workers 64 --batch-size 512": (FEATURES[:-4] + ["--workers", "64", "--batch-size",
                                                                "512", "--cache-dir", "{cache}"],
                                               "= 32768 images in flight, more than 512"),
    "features --workers 0": (FEATURES + ["--workers", "0"], "--workers 0 is out of range"),
    "features --workers 100000": (FEATURES + ["--workers", "100000"], "--workers 100000 is out"),
    "features --backbone nope": (FEATURES + ["--backbone", "nope"], "unknown backbone 'nope'"),
    "cv --folds 1": (CV + ["--folds", "1"], "--folds 1 is out of range (2 to 50)"),
    "cv --folds 0": (CV + ["--folds", "0"], "--folds 0 is out of range"),
    "cv --folds 10**6": (CV + ["--folds", "1000000"], "--folds 1000000 is out of range"),
    "cv --folds 40 vs 5 in the smallest class": (CV + ["--folds", "40"],
                                                 "is more than the 5 reactive (0) patients, "
                                                 "the smallest class"),
    "cv --folds 9 vs a smaller class": (CV + ["--folds", "9"], "the smallest class"),
    "cv --repeats 0": (CV + ["--repeats", "0"], "--repeats 0 is out of range (1 to 100)"),
    "cv --repeats 10**6": (CV + ["--repeats", "1000000"], "--repeats 1000000 is out of range"),
    "cv --threads 0": (CV + ["--threads", "0"], "--threads 0 is out of range"),
    "cv --threads 10**5": (CV + ["--threads", "100000"], "--threads 100000 is out of range"),
    "cv -m nope": (CV + ["-m", "nope"], "unknown model(s) 'nope'"),
    "cv --features nope@112": (CV + ["--features", "nope@112"], "unknown backbone 'nope'"),
    "cv --features small-cnn@5000": (CV + ["--features", "small-cnn@5000"],
                                     "--features crop 5000 is out of range"),
    "cv --features small-cnn@abc": (CV + ["--features", "small-cnn@abc"], "is not a number"),
    "cv --reference-date 1800-01-01": (CV + ["--reference-date", "1800-01-01"],
                                       "--reference-date 1800-01-01 is implausible"),
    "cv --reference-date 31/12/2023": (CV + ["--reference-date", "31/12/2023"],
                                       "is not a date in YYYY-MM-DD"),
    "train --threads 0": (["train", "{data}", "-m", "logreg", "--out", "{tmp}/m", "--threads", "0"],
                          "--threads 0 is out of range"),
    "train -m nope": (["train", "{data}", "-m", "nope", "--out", "{tmp}/m"], "unknown model(s)"),
    "predict --threads -1": (["predict", "{model}", "{data}", "--out", "{tmp}/p.csv",
                              "--threads", "-1"], "--threads -1 is out of range"),
    "run --folds 1": (RUN + ["--folds", "1"], "folds: should be greater than or equal to 2"),
    "run --folds above the smallest class": (RUN + ["--folds", "9"], "the smallest class"),
    "run --repeats 10**6": (RUN + ["--repeats", "1000000"], "repeats: should be less than"),
    "run --candidates ,": (RUN[:2] + ["--candidates", ","] + RUN[4:],
                           "the list of models is empty"),
    "run --candidates nope": (RUN[:2] + ["--candidates", "logreg,nope"] + RUN[4:],
                              "unknown model(s) 'nope'"),
    "run --patients 10**9 (synthetic)": (["run", "--patients", "1000000000", "--out", "{tmp}/r"],
                                         "synthetic_patients: should be less than"),
    "run --reference-date 0001-01-01": (RUN + ["--reference-date", "0001-01-01"],
                                        "is implausible"),
    "synth --patients 10**9": (["synth", "{tmp}/s", "--patients", "1000000000"],
                               "--patients 1000000000 is out of range"),
    "synth --test-fraction 1.5": (["synth", "{tmp}/s", "--test-fraction", "1.5"],
                                  "--test-fraction 1.5 is out of range"),
    "synth --min-images above --max-images": (["synth", "{tmp}/s", "--min-images", "9",
                                               "--max-images", "2"], "is above --max-images"),
    "synth --max-images 10**6": (["synth", "{tmp}/s", "--max-images", "1000000"],
                                 "--max-images 1000000 is out of range"),
}


def _argv(template: list[str], **values: object) -> list[str]:
    return [part.format(**{k: str(v) for k, v in values.items()}) for part in template]


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_every_option_is_checked_before_any_work(small_cohort: Path, logreg_model: Path,
                                                 tmp_path: Path, case: str) -> None:
    template, words = BAD_OPTIONS[case]
    cache = tmp_path / "cache"
    before = tree_digest(small_cohort, logreg_model)
    start = time.perf_counter()
    result = invoke(*_argv(template, data=small_cohort, cache=cache, tmp=tmp_path,
                           model=logreg_model))
    elapsed = time.perf_counter() - start
    assert result.exit_code == 2, result.output
    assert words in result.output and "fix:" in result.output, result.output
    no_traceback(result)
    assert tree_digest(small_cohort, logreg_model) == before
    assert not (cache / "features").exists() or not any((cache / "features").iterdir())
    assert elapsed < 60, elapsed  # refused before features or fits (the folds check reads the CSV)


def test_a_5000_pixel_crop_allocates_nothing(small_cohort: Path, tmp_path: Path) -> None:
    """`features --crop 5000` in a fresh process: refused with the peak memory of an import."""
    # VmHWM (peak RSS of this address space): unlike ru_maxrss it does not carry over the
    # forking pytest process's peak across exec
    code = ("import sys\n"
            "from typer.testing import CliRunner\n"
            "from lymphomil.cli import app\n"
            "r = CliRunner().invoke(app, sys.argv[1:])\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "print(r.exit_code, hwm.split()[1])\n")
    argv = _argv(FEATURES + ["--crop", "5000"], data=small_cohort, cache=tmp_path / "c")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=300)
    status, peak_kib = done.stdout.split()[-2:]
    assert status == "2", done.stdout + done.stderr
    assert int(peak_kib) < 2 * 1024 * 1024, peak_kib  # < 2 GiB (a 5000^2 probe took far more)


# --------------------------------------------------------------------------- ownership


@pytest.mark.parametrize("command", ["cv", "train", "run"])
@pytest.mark.parametrize("bait", ["metrics.json", "model.json"])
def test_a_common_file_name_never_makes_a_folder_replaceable(small_cohort: Path, tmp_path: Path,
                                                             command: str, bait: str) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / bait).write_text("{}")
    (out / "thesis.docx").write_text("precious")
    argv = {"cv": CV[:2] + ["--out", str(out)] + CV[2:],
            "train": ["train", str(small_cohort), "-m", "logreg", "--out", str(out)],
            "run": RUN[:-2] + ["--out", str(out)]}[command]
    result = invoke(*_argv(argv, data=small_cohort, cache=tmp_path / "cache", tmp=tmp_path))
    assert result.exit_code == 2, result.output
    assert "was not written by lymphomil" in result.output and "fix:" in result.output
    no_traceback(result)
    assert (out / "thesis.docx").read_text() == "precious" and (out / bait).read_text() == "{}"


def test_lymphomil_replaces_its_own_folder_but_not_a_file_added_to_it(small_cohort: Path,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "cv"
    argv = _argv(CV + ["--out", str(out)], data=small_cohort, cache=tmp_path / "cache")
    assert invoke(*argv).exit_code == 0
    marker = json.loads((out / ".lymphomil-output.json").read_text())
    assert "metrics.json" in marker["files"] and "checksums.json" in marker["files"]
    again = invoke(*argv)
    assert again.exit_code == 0, again.output  # its own folder: replaced
    (out / "my-notes.txt").write_text("mine")
    refused = invoke(*argv)
    assert refused.exit_code == 2 and "my-notes.txt" in refused.output, refused.output
    assert (out / "my-notes.txt").read_text() == "mine"


def _predict_argv(model: Path, data: Path, out: Path) -> list[str]:
    return ["predict", str(model), str(data), "--out", str(out), "--all"]


@pytest.mark.parametrize("target", ["the data CSV", "a file inside the data folder",
                                    "the model's model.json", "a file inside the model folder"])
def test_predict_never_writes_over_its_inputs(cohort: Path, logreg_model: Path, tmp_path: Path,
                                              target: str) -> None:
    model = Path(shutil.copytree(logreg_model, tmp_path / "model"))
    out = {"the data CSV": cohort / "clinical_annotation.csv",
           "a file inside the data folder": cohort / "trainset" / "new.csv",
           "the model's model.json": model / "model.json",
           "a file inside the model folder": model / "predictions.csv"}[target]
    before = tree_digest(cohort, model)
    result = invoke(*_predict_argv(model, cohort, out))
    assert result.exit_code == 2, result.output
    assert "--out" in result.output and "fix:" in result.output
    no_traceback(result)
    assert tree_digest(cohort, model) == before


@pytest.mark.parametrize("where", ["inside the data folder", "the data folder itself",
                                   "a folder holding the data"])
def test_folder_outputs_never_touch_the_data(cohort: Path, tmp_path: Path, where: str) -> None:
    out = {"inside the data folder": cohort / "runs",
           "the data folder itself": cohort,
           "a folder holding the data": cohort.parent}[where]
    before = tree_digest(cohort)
    for argv in (CV + ["--out", str(out)], RUN[:-2] + ["--out", str(out)],
                 ["explore", "{data}", "--out", str(out)]):
        result = invoke(*_argv(argv, data=cohort, cache=tmp_path / "cache", tmp=tmp_path))
        assert result.exit_code == 2, (argv, result.output)
        assert "fix:" in result.output
        no_traceback(result)
    assert tree_digest(cohort) == before


def test_explore_out_a_file_is_a_message(cohort: Path, tmp_path: Path) -> None:
    target = tmp_path / "report.txt"
    target.write_text("mine")
    result = invoke("explore", cohort, "--out", target)
    assert result.exit_code == 2 and "is a file, not a folder" in result.output
    no_traceback(result)
    assert target.read_text() == "mine"


def _cv_entry(root: Path, key: str) -> None:
    import numpy as np

    from lymphomil.evaluation import cvcache
    from lymphomil.evaluation.crossval import CVResult

    result = CVResult("logreg", ["P1", "P2"], np.array([0, 1]), np.zeros((1, 2), int),
                      np.full((1, 2), 0.5), np.zeros((1, 2), bool), np.zeros((1, 2)))
    cvcache.store(root, key, result)


def test_cache_clear_removes_only_what_the_cache_listed(tmp_path: Path) -> None:
    cv = tmp_path / "cache" / "cv"
    _cv_entry(cv, "a" * 32)
    (cv / "notes.txt").write_text("mine")
    (cv / ("b" * 32 + ".json")).write_text('{"someone": "else"}')  # our name, not in the manifest
    result = invoke("cache", "clear", "--cache-dir", tmp_path / "cache", "--yes")
    assert result.exit_code == 0, result.output
    assert not (cv / ("a" * 32 + ".json")).exists()
    assert not (cv / ("a" * 32 + ".safetensors")).exists()
    assert (cv / "notes.txt").read_text() == "mine"
    assert (cv / ("b" * 32 + ".json")).exists()
    assert "left alone" in result.output and "notes.txt" in result.output


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_second_writer_stops_with_a_message(small_cohort: Path, tmp_path: Path) -> None:
    import socket

    out = tmp_path / "cv"
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())
    other = _sleeper()
    try:
        (tmp_path / ".cv.lock").write_text(json.dumps({"host": host, "pid": other.pid}))
        argv = _argv(CV + ["--out", str(out)], data=small_cohort, cache=tmp_path / "cache")
        result = invoke(*argv)
        assert result.exit_code == 2, result.output
        assert f"another lymphomil process (PID {other.pid}" in result.output
        assert "fix:" in result.output and not out.exists()
    finally:
        other.kill()
        other.wait()
    # that process is gone now: its lock is stale and taken over
    result = invoke(*argv)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / ".cv.lock").exists()


def test_two_concurrent_runs_one_wins_one_is_told(small_cohort: Path, tmp_path: Path) -> None:
    """Two real processes on one --out: never both writing; the loser exits 2 with a message."""
    out = tmp_path / "cv"
    argv = [sys.executable, "-m", "lymphomil.cli", *_argv(CV + ["--out", str(out)],
                                                        data=small_cohort,
                                                        cache=tmp_path / "cache")]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / ".cv.lock").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    second = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    first_out, first_err = first.communicate(timeout=300)
    codes = sorted([first.returncode, second.returncode])
    if (tmp_path / ".cv.lock").exists() or codes == [0, 0]:
        # the first finished before the second started: both ran in turn, which is fine
        assert codes == [0, 0]
    else:
        assert codes == [0, 2], (first_err, second.stderr)
        loser = second.stderr if second.returncode == 2 else first_err
        assert "another lymphomil process" in loser
    assert (out / "metrics.json").is_file()


# --------------------------------------------------------------------------- disks and configs


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "free some space"),
                                        (errno.EROFS, "read-only"),
                                        (errno.EACCES, "permissions")])
def test_a_full_or_read_only_cache_disk_is_a_message(small_cohort: Path, tmp_path: Path,
                                                     monkeypatch, code: int, words: str) -> None:
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "cache" / "x.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    result = invoke(*_argv(FEATURES + ["--crop", "112"], data=small_cohort,
                           cache=tmp_path / "cache"))
    assert result.exit_code == 2, result.output
    assert words in result.output and "fix:" in result.output and "cache" in result.output
    no_traceback(result)


def test_a_cache_dir_below_a_file_is_a_message(small_cohort: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke(*_argv(FEATURES + ["--crop", "112"], data=small_cohort,
                           cache=blocker / "cache"))
    assert result.exit_code == 2, result.output
    assert "fix:" in result.output and str(blocker) in result.output
    no_traceback(result)


def test_a_symlink_loop_as_out_or_data_is_a_message(tmp_path: Path, logreg_model: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for argv in (["cv", loop, "-m", "logreg"], ["explore", loop, "--out", tmp_path / "e"],
                 ["predict", logreg_model, loop, "--out", tmp_path / "p.csv"],
                 ["cv", tmp_path, "--out", loop]):
        result = invoke(*argv)
        assert result.exit_code == 2, (argv, result.output)
        assert "fix:" in result.output
        no_traceback(result)


@pytest.mark.parametrize("text,words", [
    ("candidates = []\n", "the list of models is empty"),
    ('candidates = ["nope"]\n', "unknown model(s) 'nope'"),
    ("folds = 1\n", "folds: should be greater than or equal to 2"),
    ('folds = "five"\n', "folds: should be a valid integer"),
    ("threads = 0\n", "threads"),
    ('features = "small-cnn@9999"\n', "crop 9999 is out of range"),
    ("reference_date = 1850-01-01\n", "implausible"),
    ("candidatez = []\n", "candidatez: is not a known setting (did you mean 'candidates'?)"),
    ("folds = \n", "not valid TOML"),
    ('data = "missing-folder"\n', "data folder not found"),
])
def test_a_bad_run_config_is_a_message(tmp_path: Path, text: str, words: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    result = invoke("run", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert words in result.output and "fix:" in result.output, result.output
    no_traceback(result)


def test_a_saved_config_repeats_from_another_working_directory(small_cohort: Path, tmp_path: Path,
                                                              monkeypatch) -> None:
    """config.toml stores absolute paths; a relative path in a hand-written config is read
    relative to the file, not to wherever the command is run from."""
    data = Path(shutil.copytree(small_cohort, tmp_path / "project" / "data"))
    monkeypatch.chdir(tmp_path / "project")
    first = invoke("run", "data", "--candidates", "tree", "--folds", "2", "--repeats", "1",
                   "--cache-dir", "cache", "--out", "runs/a")
    assert first.exit_code == 0, first.output
    saved = (tmp_path / "project" / "runs" / "a" / "config.toml").read_text()
    assert (f'data = "{data}"' in saved
            and f'cache_dir = "{tmp_path / "project" / "cache"}"' in saved)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = invoke("run", "--config", tmp_path / "project" / "runs" / "a" / "config.toml",
                   "--out", "b")
    assert again.exit_code == 0, again.output
    a = tmp_path / "project" / "runs" / "a" / "submission.csv"
    assert (elsewhere / "b" / "submission.csv").read_bytes() == a.read_bytes()
    # a hand-written config with a relative path: relative to the config file's folder
    (tmp_path / "project" / "mine.toml").write_text(
        'data = "data"\ncandidates = ["tree"]\nfolds = 2\nrepeats = 1\ncache_dir = "cache"\n')
    third = invoke("run", "--config", tmp_path / "project" / "mine.toml", "--out", "c")
    assert third.exit_code == 0, third.output
    assert (elsewhere / "c" / "submission.csv").read_bytes() == a.read_bytes()


# --------------------------------------------------------------------------- model folders


def _edit_model(folder: Path, name: str, change) -> None:
    from lymphomil.outputs import write_checksums

    path = folder / name
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    write_checksums(folder)  # a checksum-valid hand edit


HAND_EDITS = {
    "model class unknown": ("model.json", lambda d: d.update({"class": "Evil"}),
                            "is not a lymphomil model class"),
    "format 2": ("model.json", lambda d: d.update({"format": 2}), "format"),
    "params a list": ("model.json", lambda d: d.update({"params": [1, 2]}), "params"),
    "param of the wrong type": ("model.json", lambda d: d["params"].update({"inner_folds": "five"}),
                                "params.inner_folds: 'five' is not a int"),
    "unknown param": ("model.json", lambda d: d["params"].update({"rogue": 1}),
                      "model.json"),
    "state emptied": ("model.json", lambda d: d.update({"state": {}}), "model.json"),
    "fitted state changed": ("model.json", lambda d: d["state"]["best_params"].update({"C": 1e-4}),
                             "does not reproduce its saved predictions"),
    "sub-model path escape": ("model.json", lambda d: d.update({"submodels": ["../../x"]}),
                              "not plain folder names"),
    "reference date impossible": ("metadata.json",
                                  lambda d: d.update({"reference_date": "2024-13-45"}),
                                  "is not a date in YYYY-MM-DD"),
    "reference date a number": ("metadata.json", lambda d: d.update({"reference_date": 20240101}),
                                "reference_date"),
    "model name unknown": ("metadata.json", lambda d: d.update({"model_name": "nope"}),
                           "is not a registered model"),
    "features spec crop 5000": ("metadata.json", lambda d: d.update({"features": [
        {"spec": {"backbone": "small-cnn", "weights": "none", "crop": 5000, "tta": False,
                  "precision": "fp32"}, "kind": "pooled"}]}), "less than or equal to 224"),
    "features not the model's": ("metadata.json", lambda d: d.update({"features": [
        {"spec": {"backbone": "small-cnn", "weights": "none", "crop": 112, "tta": False,
                  "precision": "fp32"}, "kind": "pooled"}]}), "other features than the model's"),
    "training count negative": ("metadata.json", lambda d: d["training"].update({"n_patients": -4}),
                                "n_patients"),
}


@pytest.mark.parametrize("case", sorted(HAND_EDITS))
def test_a_hand_edited_checksum_valid_model_is_a_message(cohort: Path, logreg_model: Path,
                                                         tmp_path: Path, case: str) -> None:
    name, change, words = HAND_EDITS[case]
    model = Path(shutil.copytree(logreg_model, tmp_path / "model"))
    _edit_model(model, name, change)
    out = tmp_path / "pred.csv"
    result = invoke(*_predict_argv(model, cohort, out))
    assert result.exit_code == 2, result.output
    assert words in result.output and "fix:" in result.output, result.output
    assert str(model) in result.output
    no_traceback(result)
    assert not out.exists()


# --------------------------------------------------------------------------- the sweep

def _decimal_comma(root: Path) -> None:
    path = root / "clinical_annotation.csv"
    lines = path.read_text().splitlines()
    fields = lines[1].split(",")
    fields[-1] = fields[-1].replace(".", ",") if "." in fields[-1] else fields[-1] + ",5"
    lines[1] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")


def _first_image(root: Path) -> Path:
    return sorted((root / "trainset").glob("*/*.jpg"))[0]


def _damaged_image(root: Path) -> None:
    path = _first_image(root)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3] + b"\xff\xd9")


def _fifo_image(root: Path) -> None:
    path = _first_image(root)
    path.unlink()
    os.mkfifo(path)


def _loop_image(root: Path) -> None:
    path = _first_image(root)
    path.unlink()
    path.symlink_to(path.name)


DATA_FAILURES = {
    "row with a decimal comma": (_decimal_comma, "fields, the header"),
    "JPEG cut, end marker restored": (_damaged_image, "premature end of data segment"),
    "named pipe called .jpg": (_fifo_image, "named pipe"),
    "symlink loop called .jpg": (_loop_image, "symbolic link loop"),
}

COMMANDS = {
    "features": FEATURES + ["--crop", "112"],
    "cv": CV,
    "train": ["train", "{data}", "-m", "tree", "--out", "{tmp}/model", "--cache-dir", "{cache}"],
    "predict": ["predict", "{model}", "{data}", "--out", "{tmp}/pred.csv", "--all"],
    "run": RUN,
    "explore": ["explore", "{data}", "--out", "{tmp}/explore"],
}


#: the one `run` case of the default suite (a run is ~6 s a case here: the others are slow; a
#: damaged JPEG under run --on-error skip is also in test_strict_inputs' cv/train/run test)
RUN_BY_DEFAULT = "row with a decimal comma"


@pytest.mark.parametrize("command,failure", [
    pytest.param(c, f, id=f"{c}-{f}",
                 marks=[pytest.mark.slow] if c == "run" and f != RUN_BY_DEFAULT else [])
    for f in sorted(DATA_FAILURES) for c in sorted(COMMANDS)])
def test_sweep_every_command_over_every_failure(cohort: Path, logreg_model: Path, tmp_path: Path,
                                                command: str, failure: str) -> None:
    mutate, words = DATA_FAILURES[failure]
    mutate(cohort)
    before = tree_digest(cohort, logreg_model)
    argv = _argv(COMMANDS[command], data=cohort, cache=tmp_path / "cache", tmp=tmp_path,
                 model=logreg_model)
    result = invoke(*argv)
    assert result.exit_code == 2, result.output
    assert words in result.output and "fix:" in result.output, result.output
    assert str(cohort) in result.output  # the file (CSV row or image) is named
    no_traceback(result)
    assert tree_digest(cohort, logreg_model) == before

    result = invoke(*argv, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    no_traceback(result)
    assert words in result.output  # listed
    assert tree_digest(cohort, logreg_model) == before
    if command in ("predict", "run"):
        _assert_in_is_predicted_plus_skipped(cohort, tmp_path, command)


def _assert_in_is_predicted_plus_skipped(cohort: Path, tmp_path: Path, command: str) -> None:
    import csv

    if command == "predict":
        predicted = [r["ID"] for r in csv.DictReader(open(tmp_path / "pred.csv"))]
        skipped_file = tmp_path / "pred.skipped.json"
        ids_in = [r["ID"] for r in csv.DictReader(open(cohort / "clinical_annotation.csv"))]
    else:
        predicted = [r["ID"] for r in csv.DictReader(open(tmp_path / "run" / "predictions.csv"))]
        skipped_file = tmp_path / "run" / "skipped.json"
        ids_in = [r["ID"] for r in csv.DictReader(open(cohort / "clinical_annotation.csv"))
                  if r["LABEL"].strip() == "-1"]
    skipped = json.loads(skipped_file.read_text()) if skipped_file.exists() else []
    left_out = {s["patient_id"] for s in skipped if s["patient_id"] not in predicted}
    assert set(ids_in) == set(predicted) | (left_out & set(ids_in)), (ids_in, predicted, skipped)
    assert len(predicted) == len(set(predicted))


def test_a_config_that_is_a_named_pipe_is_refused_at_once(tmp_path: Path) -> None:
    pipe = tmp_path / "config.toml"
    os.mkfifo(pipe)
    start = time.perf_counter()
    result = invoke("run", "--config", pipe, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "not a regular file" in result.output, result.output
    assert time.perf_counter() - start < 30
    no_traceback(result)


def test_cache_clear_leaves_a_file_put_in_a_feature_folder(small_cohort: Path,
                                                           tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    result = invoke(*_argv(FEATURES + ["--crop", "112"], data=small_cohort, cache=cache))
    assert result.exit_code == 0, result.output
    folder = next((cache / "features").iterdir())
    (folder / "my-analysis.ipynb").write_text("mine")
    result = invoke("cache", "clear", "--cache-dir", cache, "--yes")
    assert result.exit_code == 0, result.output
    assert (folder / "my-analysis.ipynb").read_text() == "mine"
    assert sorted(p.name for p in folder.iterdir()) == ["my-analysis.ipynb"]
    assert "left alone" in result.output and "my-analysis.ipynb" in result.output


def test_an_output_beside_the_cache_in_one_folder_is_fine(small_cohort: Path,
                                                          tmp_path: Path) -> None:
    """--cache-dir DIR --out DIR/results: the cache is not an input the output could damage; an
    output that would hold the cache, or lie in the cache's own cv/ (its stored fits), is
    refused."""
    result = invoke(*_argv(CV + ["--out", str(tmp_path / "results")], data=small_cohort,
                           cache=tmp_path))
    assert result.exit_code == 0, result.output
    result = invoke(*_argv(CV + ["--out", str(tmp_path / "cv")], data=small_cohort,
                           cache=tmp_path))
    assert result.exit_code == 2 and "the cache's own cv/ folder" in result.output, result.output
    result = invoke(*_argv(CV + ["--out", str(tmp_path / "x")], data=small_cohort,
                           cache=tmp_path / "x" / "cache"))
    assert result.exit_code == 2 and "holds the cache folder" in result.output, result.output


@pytest.mark.parametrize("command", ["features", "cv", "train", "predict", "run"])
def test_the_cache_is_never_written_into_the_data_folder(cohort: Path, logreg_model: Path,
                                                         tmp_path: Path, command: str) -> None:
    before = tree_digest(cohort)
    argv = _argv(COMMANDS[command], data=cohort, cache=cohort / "trainset" / "cache",
                 tmp=tmp_path, model=logreg_model)
    if command == "predict":
        argv += ["--cache-dir", str(cohort / "trainset" / "cache")]
    result = invoke(*argv)
    assert result.exit_code == 2, result.output
    assert "--cache-dir lies inside the data folder" in result.output and "fix:" in result.output
    no_traceback(result)
    assert tree_digest(cohort) == before and not (cohort / "trainset" / "cache").exists()
