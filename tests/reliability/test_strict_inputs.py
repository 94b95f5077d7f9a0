"""Issue 14 (reliability, second round): strict CSV rows and images validated by decoding.

Each case runs the real CLI (``lymphomil predict MODEL DATA --all``, or ``features``) on a small
challenge-layout folder with one thing broken, under ``--on-error raise`` (exit 2, the file, the
row and a fix) and ``--on-error skip`` (exit 0, the row or image listed, every patient accounted
for). docs/bad-inputs.md is the table of these cases.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import stat
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from lymphomil.cli import app
from tests.reliability.test_bad_inputs import (
    GOOD_ROWS,
    HEADER,
    _folder,
    assert_accounted,
    features,
    jpeg_bytes,
    model_dir,
    no_traceback,
    predict,
    runner,
    write_cohort,
)

__all__ = ["model_dir"]  # the fixture (the session's logreg model), shared with test_bad_inputs


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (not hang) when the body runs longer than ``seconds`` (a FIFO read blocks forever)."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s (blocked on a pipe?)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------- strict rows

STRICT_ROWS = {
    # case: (row replacing P1's, words in the message); the fix is chosen by the field
    "long row: decimal comma 4,74": ("0,P1,1,M,11/3/1933,4,74",
                                     "the row has 7 fields, the header 6 (a decimal comma"),
    "long row: trailing comma": ("0,P1,1,M,11/3/1933,11.2,", "the row has 7 fields, the header 6"),
    "short row: one field missing": ("0,P1,1,M,11.2", "the row has 5 fields, the header 6"),
    "number with underscore 4_74": ("0,P1,1,M,11/3/1933,4_74", "'4_74' is not a number"),
    "number with quoted decimal comma": ('0,P1,1,M,11/3/1933,"4,74"',
                                         "'4,74' is not a number (a decimal comma"),
    "number with thousands separator": ('0,P1,1,M,11/3/1933,"1,200.5"', "is not a number"),
    "number with a space inside": ("0,P1,1,M,11/3/1933,4 74", "'4 74' is not a number"),
    "number in Arabic-Indic digits": ("0,P1,1,M,11/3/1933,\u0664.\u0667",
                                      "is not a number"),
    "number hexadecimal": ("0,P1,1,M,11/3/1933,0x1f", "'0x1f' is not a number"),
    "number below the plausible count": ("0,P1,1,M,11/3/1933,0.01", "below 0.1 x10^9/L"),
    "number above the plausible count": ("0,P1,1,M,11/3/1933,1200", "above 1000 x10^9/L"),
    "labelled with underscore 1_0": ("0,P1,1_0,M,11/3/1933,11.2", "label '1_0' is not -1, 0 or 1"),
    "labelled in Arabic-Indic digit": ("0,P1,\u0661,M,11/3/1933,11.2", "is not -1, 0 or 1"),
    "DOB: age above 120 at the reference date": ("0,P1,1,M,1/1/1890,11.2",
                                                 "(age 134 at the reference date 2024-01-01; "
                                                 "the limit is 120 years)"),
}

FIELD_FIX = {"long": "as many comma-separated fields", "short": "as many comma-separated fields",
             "number": "lymphocyte count in 10^9", "labelled": "use 1 (malignant)",
             "DOB": "write the date"}


def _strict_fix(case: str) -> str:
    return next(v for k, v in FIELD_FIX.items() if case.startswith(k))


@pytest.mark.parametrize("case", sorted(STRICT_ROWS))
def test_strict_row_raise(model_dir: Path, tmp_path: Path, case: str) -> None:
    row, words = STRICT_ROWS[case]
    root = write_cohort(tmp_path / "cohort", [row, GOOD_ROWS[1], GOOD_ROWS[2]])
    out = tmp_path / "pred.csv"
    result = predict(model_dir, root, out)
    assert result.exit_code == 2, result.output
    assert "clinical_annotation.csv, row 2: " in result.output
    assert words in result.output and "fix: " in result.output, result.output
    assert _strict_fix(case) in result.output, result.output
    no_traceback(result)
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(STRICT_ROWS))
def test_strict_row_skip_is_listed(model_dir: Path, tmp_path: Path, case: str) -> None:
    row, words = STRICT_ROWS[case]
    root = write_cohort(tmp_path / "cohort", [row, GOOD_ROWS[1], GOOD_ROWS[2]])
    out = tmp_path / "pred.csv"
    result = predict(model_dir, root, out, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    predicted, skipped = assert_accounted(root, out)
    assert predicted == ["P2", "P3"]
    assert any(words in s["problem"] and s["row"] == 2 for s in skipped), skipped


def test_strict_numbers_parse_as_written(tmp_path: Path) -> None:
    """What stays accepted: plain decimals, a leading '+', an exponent, surrounding spaces."""
    from lymphomil.data.validate import parse_count, parse_label

    for text, value in (("4.74", 4.74), (" 12 ", 12.0), ("+5.5", 5.5), ("1.2e1", 12.0),
                        (".5", 0.5), ("7.", 7.0)):
        assert parse_count(text) == value
    for text, value in (("1", 1), ("0", 0), ("-1", -1), ("1.0", 1), ("-1.0", -1), (" 0 ", 0)):
        assert parse_label(text) == value


# --------------------------------------------------------------------------- splits


def _split_layout(root: Path, train_rows: list[str], test_rows: list[str]) -> Path:
    """trainset/trainset_true.csv + testset/testset_data.csv, P1/P2 labelled, P3 to predict."""
    write_cohort(root)
    (root / "clinical_annotation.csv").unlink()
    (root / "trainset" / "trainset_true.csv").write_text("\n".join([HEADER, *train_rows]) + "\n")
    (root / "testset" / "testset_data.csv").write_text("\n".join([HEADER, *test_rows]) + "\n")
    return root


def _labelled_in_test_csv(root: Path) -> None:
    _split_layout(root, GOOD_ROWS[:1], [GOOD_ROWS[2], "1,P2,0,F,28-04-1943,4.5"])


def _unlabelled_in_train_csv(root: Path) -> None:
    _split_layout(root, [GOOD_ROWS[0], GOOD_ROWS[1], "2,P3,-1,F,1/17/1946,5.76"], [])


def _both_folders(root: Path) -> None:
    twin = root / "testset" / "P1"
    twin.mkdir()
    (twin / "000000.jpg").write_bytes(jpeg_bytes())


SPLITS: dict[str, tuple[Callable[[Path], None], str, str, str]] = {
    # case: (mutate, words, CSV named, patient left out under skip)
    "labelled row in the test CSV": (_labelled_in_test_csv,
                                     "labelled row (LABEL 0) in the test CSV", "testset_data.csv",
                                     "P2"),
    "unlabelled row in the training CSV": (_unlabelled_in_train_csv,
                                           "row without a label (LABEL -1) in the training CSV",
                                           "trainset_true.csv", "P3"),
    "patient folder under trainset/ and testset/": (_both_folders,
                                                    "has an image folder under both trainset/ "
                                                    "and testset/", "clinical_annotation.csv",
                                                    "P1"),
}


@pytest.mark.parametrize("case", sorted(SPLITS))
def test_contradictory_split_is_never_a_silent_drop(model_dir: Path, tmp_path: Path,
                                                    case: str) -> None:
    mutate, words, csv_name, left_out = SPLITS[case]
    root = write_cohort(tmp_path / "cohort")
    mutate(root)
    out = tmp_path / "pred.csv"
    result = predict(model_dir, root, out)
    assert result.exit_code == 2, result.output
    assert words in result.output and csv_name in result.output and "fix:" in result.output
    no_traceback(result)
    assert not out.exists()
    result = predict(model_dir, root, out, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    import csv as csv_module
    import json

    predicted = [r["ID"] for r in csv_module.DictReader(open(out))]
    skipped = json.loads(out.with_name("pred.skipped.json").read_text())
    assert left_out not in predicted
    assert any(s["patient_id"] == left_out and words in s["problem"] and s["row"]
               for s in skipped), skipped
    assert len(predicted) + len({s["patient_id"] for s in skipped}) == 3


# --------------------------------------------------------------------------- images


def noisy_jpeg(size=(224, 224), seed: int = 0) -> bytes:
    """A JPEG with a long entropy-coded scan (noise), as a photograph has."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def cut_with_end_marker(data: bytes) -> bytes:
    return data[:len(data) // 3] + b"\xff\xd9"


def zeroed_mid_stream(data: bytes) -> bytes:
    damaged = bytearray(data)
    middle = len(damaged) // 2
    damaged[middle:middle + 64] = bytes(64)
    return bytes(damaged)


def _put(name: str, data: Callable[[], bytes]) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        (_folder(root) / name).write_bytes(data())
    return change


def _target(root: Path) -> Path:
    """P1's second image, removed: the damaged thing takes its name."""
    path = _folder(root) / "000001.jpg"
    path.unlink()
    return path


def _fifo(root: Path) -> None:
    os.mkfifo(_target(root))


def _link_loop(root: Path) -> None:
    _target(root).symlink_to("000001.jpg")


def _link_to_fifo(root: Path) -> None:
    os.mkfifo(root / "pipe")
    _target(root).symlink_to(root / "pipe")


def _broken_link(root: Path) -> None:
    _target(root).symlink_to(_folder(root) / "gone.jpg")


def _device(root: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    os.mknod(_target(root), stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero


DAMAGED = {
    # case: (mutate P1's folder, words); the file is left out of P1's bag under skip
    "JPEG cut to a third, end marker put back": (
        _put("000001.jpg", lambda: cut_with_end_marker(noisy_jpeg())),
        "damaged JPEG (Corrupt JPEG data: premature end of data segment)"),
    "JPEG corrupted mid-stream": (_put("000001.jpg", lambda: zeroed_mid_stream(noisy_jpeg())),
                                  "damaged JPEG (Corrupt JPEG data"),
    "JPEG with only its headers": (_put("000001.jpg", lambda: noisy_jpeg()[:400]),
                                   "damaged JPEG"),
    "tiny image (8x8)": (_put("000001.jpg", lambda: jpeg_bytes(size=(8, 8))),
                         "is 8x8 pixels, smaller than 32 px on a side"),
    "elongated image (400x40)": (_put("000001.jpg", lambda: jpeg_bytes(size=(400, 40))),
                                 "is 400x40 pixels, more elongated than 4:1"),
    "named pipe called .jpg": (_fifo, "is a named pipe (FIFO), not a regular file"),
    "symlink to a named pipe": (_link_to_fifo, "is a named pipe (FIFO), not a regular file"),
    "symlink loop": (_link_loop, "is a symbolic link loop"),
    "broken symlink": (_broken_link, "is a broken symbolic link"),
    "character device called .jpg": (_device, "is a character device, not a regular file"),
}


def _damaged_cohort(tmp_path: Path, case: str) -> tuple[Path, str]:
    mutate, words = DAMAGED[case]
    root = write_cohort(tmp_path / "cohort")
    mutate(root)
    return root, words


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_image_raise(model_dir: Path, tmp_path: Path, case: str) -> None:
    root, words = _damaged_cohort(tmp_path, case)
    out = tmp_path / "pred.csv"
    with deadline(60):
        result = predict(model_dir, root, out)
    assert result.exit_code == 2, result.output
    assert words in result.output and "fix:" in result.output, result.output
    assert str(_folder(root) / "000001.jpg") in result.output
    no_traceback(result)
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_image_skip_leaves_the_file_out(model_dir: Path, tmp_path: Path,
                                                case: str) -> None:
    root, words = _damaged_cohort(tmp_path, case)
    out = tmp_path / "pred.csv"
    with deadline(60):
        result = predict(model_dir, root, out, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    predicted, skipped = assert_accounted(root, out)
    assert predicted == ["P1", "P2", "P3"]
    assert any(words in s["problem"] and s["patient_id"] == "P1"
               and s["file"].endswith("000001.jpg") for s in skipped), skipped


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_features_refuses_the_same_images(tmp_path: Path, case: str) -> None:
    """`features` reads the cohort without decoding (speed) and decodes at extraction: the same
    message under raise, the same file left out under skip; a pipe never blocks it."""
    root, words = _damaged_cohort(tmp_path, case)
    with deadline(120):
        result = features(root, tmp_path / "cache")
    assert result.exit_code == 2, result.output
    assert words in result.output and "000001.jpg" in result.output and "fix:" in result.output
    no_traceback(result)
    with deadline(120):
        result = features(root, tmp_path / "cache", "--on-error", "skip")
    assert result.exit_code == 0, result.output
    assert words in result.output and "000001.jpg" in result.output
    assert "3 patients" in result.output  # P1 keeps its good image


def test_data_after_the_end_marker_is_accepted(model_dir: Path, tmp_path: Path) -> None:
    """Padding or a trailer after EOI is not damage: libjpeg stops at the marker."""
    root = write_cohort(tmp_path / "cohort")
    good = noisy_jpeg()
    (_folder(root) / "000001.jpg").write_bytes(good + b"\0" * 512)
    (_folder(root) / "000002.jpg").write_bytes(good + b"trailer written by a scanner")
    out = tmp_path / "pred.csv"
    result = predict(model_dir, root, out)
    assert result.exit_code == 0, result.output
    from lymphomil.features.preprocess import decode_bytes

    assert decode_bytes(good + b"\0" * 512).equal(decode_bytes(good))


def test_the_decoder_matches_pillow_on_a_photograph_like_jpeg() -> None:
    """The strict decoder gives Pillow's pixels (the feature numbers do not move)."""
    from lymphomil.features.preprocess import decode_bytes

    data = noisy_jpeg(seed=3)
    ours = decode_bytes(data).permute(1, 2, 0).numpy()
    assert np.array_equal(ours, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_a_pipe_swapped_in_after_listing_is_not_read(tmp_path: Path) -> None:
    """The extractor's own open is non-blocking and checks the descriptor's type."""
    from lymphomil.features.preprocess import decode_image
    from lymphomil.runtime.errors import LymphomilError

    pipe = tmp_path / "x.jpg"
    os.mkfifo(pipe)
    with deadline(10), pytest.raises(LymphomilError, match="named pipe"):
        decode_image(pipe)


def test_on_error_skip_is_the_same_in_cv_train_and_run(tmp_path: Path) -> None:
    """A damaged image under --on-error skip: cv, train and run leave the same file out and list
    it (skipped.json in the cv and run folders, the model's metadata for train). A tree: the
    model does not matter here, and it fits in milliseconds (run refits it 20 times)."""
    import json

    from lymphomil.data.synth import write_synthetic_cohort

    root = write_synthetic_cohort(tmp_path / "cohort", n_patients=24, seed=1,
                                  images_per_patient=(3, 4))
    victim = sorted((root / "trainset").glob("*/*.jpg"))[0]
    victim.write_bytes(cut_with_end_marker(victim.read_bytes()))
    common = ["--on-error", "skip", "--cache-dir", str(tmp_path / "cache")]
    listed = {}
    result = runner.invoke(app, ["cv", str(root), "-m", "tree", "--folds", "2", "--repeats", "1",
                                 "--out", str(tmp_path / "cv"), *common])
    assert result.exit_code == 0, result.output
    listed["cv"] = json.loads((tmp_path / "cv" / "skipped.json").read_text())
    result = runner.invoke(app, ["train", str(root), "-m", "tree",
                                 "--out", str(tmp_path / "model"), *common])
    assert result.exit_code == 0, result.output
    listed["train"] = json.loads((tmp_path / "model" / "metadata.json").read_text())["skipped"]
    result = runner.invoke(app, ["run", str(root), "--candidates", "tree", "--folds", "2",
                                 "--repeats", "1", "--out", str(tmp_path / "run"), *common])
    assert result.exit_code == 0, result.output
    listed["run"] = json.loads((tmp_path / "run" / "skipped.json").read_text())
    for command, issues in listed.items():
        assert [i["file"] for i in issues] == [str(victim.resolve())], (command, issues)
        assert "premature end of data segment" in issues[0]["problem"], (command, issues)


def test_clean_verdicts_are_kept_across_processes(tmp_path: Path, monkeypatch) -> None:
    """A later command decodes only new or changed images (the verdicts live in the cache);
    a damaged image is never remembered as clean."""
    from lymphomil.data import images
    from lymphomil.data.cohort import load_cohort

    monkeypatch.setenv("LYMPHOMIL_CACHE_DIR", str(tmp_path / "cache"))
    root = write_cohort(tmp_path / "cohort")
    decoded: list[str] = []
    real = images.bytes_problem

    def counting(data, decode=True, kind="JPEG"):
        decoded.append("x")
        return real(data, decode, kind)

    monkeypatch.setattr(images, "bytes_problem", counting)

    def fresh_process() -> None:  # what a new process starts with
        monkeypatch.setattr(images, "_CHECKED", {})
        monkeypatch.setattr(images, "_MEMO", None)

    load_cohort(root)
    assert len(decoded) == 6 and (tmp_path / "cache" / "validated").is_dir()
    fresh_process()
    decoded.clear()
    load_cohort(root)
    assert decoded == []  # all six trusted: unchanged size, time and inode
    damaged = _folder(root) / "000001.jpg"
    damaged.write_bytes(cut_with_end_marker(noisy_jpeg()))
    fresh_process()
    decoded.clear()
    with pytest.raises(Exception, match="premature end"):
        load_cohort(root)
    assert decoded == ["x"]  # only the changed file
    fresh_process()
    with pytest.raises(Exception, match="premature end"):
        load_cohort(root)  # still refused: damaged verdicts are not kept


def test_the_verdicts_live_in_the_cache_dir_asked_for(tmp_path: Path, monkeypatch) -> None:
    """``--cache-dir`` holds the memo too: nothing is written into the default cache root."""
    from lymphomil.data import images
    from lymphomil.data.cohort import load_cohort

    monkeypatch.setenv("LYMPHOMIL_CACHE_DIR", str(tmp_path / "default"))
    monkeypatch.setattr(images, "_CHECKED", {})
    monkeypatch.setattr(images, "_MEMO", None)
    root = write_cohort(tmp_path / "cohort")
    load_cohort(root, cache_dir=tmp_path / "mine")
    assert (tmp_path / "mine" / "validated").is_dir()
    assert not (tmp_path / "default").exists()
    assert images._ROOT is None  # the default memo again for the next reader


@pytest.mark.parametrize("kind", ["named pipe", "symlink loop"])
def test_an_annotation_csv_that_is_not_a_file_is_refused_at_once(model_dir: Path, tmp_path: Path,
                                                                 kind: str) -> None:
    root = write_cohort(tmp_path / "cohort")
    csv_path = root / "clinical_annotation.csv"
    csv_path.unlink()
    if kind == "named pipe":
        os.mkfifo(csv_path)
    else:
        csv_path.symlink_to(csv_path.name)
    with deadline(60):
        result = predict(model_dir, root, tmp_path / "pred.csv", "--on-error", "skip")
    assert result.exit_code == 2, result.output
    assert "clinical_annotation.csv: the annotation file is a" in result.output
    assert "fix:" in result.output
    no_traceback(result)
