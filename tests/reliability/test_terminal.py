"""Issue 32, classes 3 and 5: what reaches a terminal or a log, and a hostile environment.

Class 3: every user-supplied string (file and folder names, IDs, CSV text, paths given as
options) is printed escaped, in every message, skip list, progress and log line: no escape
sequence, carriage return or bidirectional override reaches the terminal, and no file name can
forge a line. Class 5: every command works or stops with one line whatever the encoding of its
output (Latin-1, cp1252, ``LC_ALL=C`` without UTF-8 mode), its terminal width and its current
folder (deleted). Rows in docs/bad-inputs.md (issue 32).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lymphomil.cli import app
from tests.reliability.test_bad_inputs import no_traceback, runner, write_cohort

ESC, FAKE = "\x1b[2J", "\nINFO all patients predicted\r"
#: what must never be printed raw: escape, carriage return, bidi override, line separator
RAW = ("\x1b", "\r", "\u202e", "\u2028", "\x07")


def assert_escaped(output: str) -> None:
    for char in RAW:
        assert char not in output, (repr(char), output)
    for line in output.splitlines():
        assert not line.startswith("INFO all patients"), output  # no forged line


def test_escaped_escapes_what_a_terminal_would_obey() -> None:
    from lymphomil.runtime.errors import LymphomilError, escaped

    assert escaped("a\x1b[2Jb\nc\rd\u202ee\udce9.jpg\u2028") == \
        "a\\x1b[2Jb\\nc\\rd\\u202ee\\xe9.jpg\\u2028"
    assert escaped("two\nlines\x1b", keep="\n") == "two\nlines\\x1b"
    assert escaped("Pé1 µ → ok") == "Pé1 µ → ok"  # printable text is left as it is
    error = LymphomilError("bad value 'x\x1b[31m'", file=f"/tmp/a{FAKE}b", fix="fix\nit")
    assert error.render() == ("/tmp/a\\nINFO all patients predicted\\rb: bad value "
                              "'x\\x1b[31m'\n  fix: fix\\nit")


def _hostile_cohort(synthetic_root: Path, tmp_path: Path) -> Path:
    """The synthetic cohort in a folder, and with image files, whose names hold escape
    sequences, newlines, a carriage return, a bidirectional override and Rich markup."""
    root = Path(shutil.copytree(synthetic_root, tmp_path / f"data{ESC}{FAKE}\u202e"))
    for name in ("checksums.json", ".lymphomil-output.json", ".lymphomil-synth.json"):
        (root / name).unlink(missing_ok=True)
    folder = sorted((root / "trainset").iterdir())[0]
    (folder / f"cell{ESC}{FAKE}.txt").write_bytes(b"not an image")
    (folder / f"[bold]x\u2028{ESC}.jpg").write_bytes(b"")  # also Rich markup in a name
    return root


COMMANDS = {
    "predict": lambda model, root, out: ["predict", str(model), str(root), "--all", "--out",
                                         str(out / f"p{ESC}[red]{FAKE}.csv")],
    "cv": lambda model, root, out: ["cv", str(root), "-m", "logreg-compact", "--folds", "2",
                                    "--repeats", "1", "--no-referral", "--out",
                                    str(out / f"cv{ESC}")],
    "train": lambda model, root, out: ["train", str(root), "-m", "logreg-compact", "--out",
                                       str(out / f"m{ESC}{FAKE}")],
    "explore": lambda model, root, out: ["explore", str(root), "--out", str(out / f"e{ESC}")],
    "features": lambda model, root, out: ["features", str(root), "--backbone", "small-cnn",
                                          "--weights", "none", "--crop", "32",
                                          "--cache-dir", str(out / f"cache{ESC}")],
}


@pytest.mark.parametrize("policy", ["raise", "skip"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_printed_user_string_is_escaped(logreg_model_dir: Path, synthetic_root: Path,
                                              tmp_path: Path, command: str, policy: str) -> None:
    """Every command, both policies, over names made to clear the screen and forge a line."""
    root = _hostile_cohort(synthetic_root, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    result = runner.invoke(app, [*COMMANDS[command](logreg_model_dir, root, out),
                                 "--on-error", policy])
    no_traceback(result)
    assert "internal error" not in result.output
    assert_escaped(result.output)
    assert "\\x1b[2J" in result.output  # the names are shown, escaped
    assert result.exit_code == (2 if policy == "raise" else 0), result.output


def test_a_bad_csv_value_and_a_usage_error_are_escaped(logreg_model_dir: Path,
                                                       tmp_path: Path) -> None:
    root = write_cohort(tmp_path / "cohort", ["0,P1,1,M,11/3/1933,11.2",
                                              f"1,P2,0,F{ESC}\u202e,28-04-1943,4.5",
                                              "2,P3,-1,F,1/17/1946,5.76"])
    result = runner.invoke(app, ["predict", str(logreg_model_dir), str(root), "--out",
                                 str(tmp_path / "p.csv")])
    assert result.exit_code == 2 and "gender" in result.output
    assert_escaped(result.output)
    result = runner.invoke(app, ["predict", str(logreg_model_dir), str(root), "--out",
                                 str(tmp_path / "p.csv"), "--patients", f"n{ESC}{FAKE}"])
    assert result.exit_code == 2
    assert_escaped(result.output)


def test_a_log_line_is_escaped() -> None:
    from rich.console import Console

    from lymphomil.commands.app import setup_logging

    buffer = io.StringIO()
    setup_logging(logging.WARNING, Console(file=buffer, width=200))
    try:
        logging.getLogger("lymphomil").warning("reading %s", f"/data/x{ESC}{FAKE}")
    finally:
        setup_logging(logging.WARNING)
    assert_escaped(buffer.getvalue())
    assert "x\\x1b[2J\\nINFO all patients predicted\\r" in buffer.getvalue()


# --------------------------------------------------------------------------- class 5


def _lymphomil(args: list[str], env: dict[str, str], cwd: Path | None = None
               ) -> subprocess.CompletedProcess:
    """The real `lymphomil` process (stdout and stderr as bytes, in their own encoding)."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("PYTHONIOENCODING", "LC_ALL", "LANG", "PYTHONUTF8", "COLUMNS")}
    return subprocess.run([sys.executable, "-m", "lymphomil.cli", *args], capture_output=True,
                          env={**base, **env}, cwd=cwd, timeout=300)


@pytest.mark.parametrize("env", [{"LC_ALL": "C", "PYTHONUTF8": "0",
                                  "PYTHONCOERCECLOCALE": "0"},
                                 {"PYTHONIOENCODING": "latin-1"},
                                 {"PYTHONIOENCODING": "cp1252"}],
                         ids=["LC_ALL=C", "latin-1", "cp1252"])
def test_any_output_encoding_works(logreg_model_dir: Path, synthetic_root: Path,
                                   tmp_path: Path, env: dict[str, str]) -> None:
    """Was: `internal error: UnicodeEncodeError` for a message's arrow, after the outputs were
    written; `--help` a traceback."""
    out = tmp_path / "p.csv"
    done = _lymphomil(["predict", str(logreg_model_dir), str(synthetic_root), "--out",
                       str(out)], env)
    text = (done.stdout + done.stderr).decode("latin-1")
    assert done.returncode == 0, text
    assert "internal error" not in text and "Traceback" not in text
    assert "patients (" in text and "-> " in text  # the arrow in plain ASCII


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_help_in_any_encoding(encoding: str) -> None:
    """Was: a traceback (`--help`'s arrows under an ASCII or Latin-1 stdout)."""
    done = _lymphomil(["--help"], {"PYTHONIOENCODING": encoding})
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
    assert b"predict" in done.stdout


def test_a_deleted_current_folder_stops_with_one_line(logreg_model_dir: Path,
                                                      synthetic_root: Path,
                                                      tmp_path: Path) -> None:
    """Was: a traceback (a relative --out), or a native abort of the maths library loading in
    a folder that is gone; now one line, and --help still works."""
    gone = tmp_path / "gone"
    script = (f"import os, runpy, sys; os.makedirs({str(gone)!r}); os.chdir({str(gone)!r}); "
              f"os.rmdir({str(gone)!r}); sys.argv = ['lymphomil'] + sys.argv[1:]; "
              "runpy.run_module('lymphomil.cli', run_name='__main__')")
    for args, code in ((["predict", str(logreg_model_dir), "data", "--out", "p.csv"], 2),
                       (["features", str(synthetic_root), "--backbone", "small-cnn",
                         "--weights", "none"], 2), (["predict", "--help"], 0)):
        done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                              timeout=300)
        text = (done.stdout + done.stderr).decode()
        assert done.returncode == code, text
        assert "Traceback" not in text and "FATAL" not in text
        if code:
            assert "the current folder no longer exists" in text and "fix:" in text


def test_a_terminal_width_too_small_to_read_is_not_used(logreg_model_dir: Path,
                                                        tmp_path: Path) -> None:
    """Was: `COLUMNS=0` printed nothing at all (an error too), `COLUMNS=1` a character a
    line."""
    from lymphomil.commands.progress import SafeConsole

    assert SafeConsole(file=io.StringIO(), width=0).width >= 20
    done = _lymphomil(["predict", str(logreg_model_dir), str(tmp_path / "nowhere"), "--out",
                       str(tmp_path / "p.csv")], {"COLUMNS": "0"})
    assert done.returncode == 2 and b"error:" in done.stderr, done.stderr
    assert b"data folder not found" in done.stderr.replace(b"\n", b" ")
