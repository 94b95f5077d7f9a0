"""Issue 32, classes 1 and 2: images and spreadsheets as a lab's software exports them.

Class 1, images as a viewer shows them: an EXIF orientation is applied, a colour profile is
converted to sRGB, and what viewers would show differently (transparency, 16 bits, several
frames, a gamma chunk, a profile that cannot be applied) is refused naming the file.
Class 2, spreadsheet exports: a number that an unquoted decimal comma or a thousands separator
split over two fields, where a trailing column hides the extra field, is refused naming the
line and both columns; never read as another number. Rows in docs/bad-inputs.md (issue 32).
"""

from __future__ import annotations

import io
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from lymphomil.cli import app
from lymphomil.data.images import bytes_problem
from lymphomil.features.preprocess import decode_bytes
from tests.data.test_plain import COLUMNS, predictions, write_plain
from tests.reliability.test_bad_inputs import (
    GOOD_ROWS,
    HEADER,
    assert_accounted,
    no_traceback,
    predict,
    runner,
    write_cohort,
)

# --------------------------------------------------------------------------- class 1: images

#: what the stored samples must go through for a viewer to show the upright picture (the
#: inverse of each EXIF orientation)
STORED_AS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
             4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
             6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_270}


def cell_picture(seed: int = 0, size=(224, 160)) -> Image.Image:
    """A picture with no symmetry (every turn of it is another picture)."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 60, (size[1], size[0], 3)).astype(np.uint8)
    array[: size[1] // 3, : size[0] // 4] = (220, 90, 160)  # a block in one corner
    return Image.fromarray(array)


def encoded(image: Image.Image, kind: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **({"quality": 95} if kind == "JPEG" else {}), **options)
    return buffer.getvalue()


def oriented_bytes(image: Image.Image, orientation: int, kind: str = "JPEG") -> bytes:
    """``image`` stored turned, with the EXIF orientation that shows it upright again."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(image.transpose(STORED_AS[orientation]), kind, exif=exif.tobytes())


def pixels(data: bytes) -> np.ndarray:
    return decode_bytes(data).permute(1, 2, 0).numpy().astype(int)


@pytest.mark.parametrize("orientation", sorted(STORED_AS))
def test_an_exif_orientation_is_read_as_a_viewer_shows_it(orientation: int) -> None:
    """Decoded as Pillow's viewer transform shows it (pixel for pixel), hence like the upright
    twin (within JPEG's rounding); the old decoder read the stored samples (turned)."""
    upright = cell_picture()
    data = oriented_bytes(upright, orientation)
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    ours = pixels(data)
    np.testing.assert_array_equal(ours, pixels(encoded(shown, "PNG")))
    assert np.abs(ours - pixels(encoded(upright))).mean() < 3


def test_an_oriented_image_is_predicted_as_its_upright_twin(
        image_model_dir: Path, small_image_root: Path, tmp_path: Path) -> None:
    """Every cell of a lab's export stored turned (PNG, lossless, eXIf orientation 2-8): the
    same predictions, bit for bit, as the upright cells."""
    upright_csv = write_plain(small_image_root, tmp_path / "upright", kinds=("PNG",))
    turned = Path(shutil.copytree(upright_csv.parent, tmp_path / "turned"))
    for i, path in enumerate(sorted(turned.glob("cells/*/*.png"))):
        path.write_bytes(oriented_bytes(Image.open(path).convert("RGB"), 2 + i % 7, "PNG"))
    outs = []
    for root in (upright_csv.parent, turned):
        out = tmp_path / f"{root.name}.csv"
        result = runner.invoke(app, ["predict", str(image_model_dir),
                                     str(root / "patients.csv"), "--columns", COLUMNS,
                                     "--images", str(root / "cells"), "--all", "--out",
                                     str(out), "--cache-dir", str(tmp_path / "cache")])
        assert result.exit_code == 0, result.output
        outs.append(predictions(out))
    assert outs[0] == outs[1]


def icc_profile(description: str, red, green, blue, gamma: float = 2.2) -> bytes:
    """A minimal ICC v2 RGB display profile: primaries (D50 XYZ) and one gamma curve."""

    def s15(x: float) -> bytes:
        return struct.pack(">i", round(x * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ " + b"\0" * 4 + s15(x) + s15(y) + s15(z)

    text = description.encode("ascii") + b"\0"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text + b"\0" * 78
    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256))
    tags = [(b"desc", desc), (b"wtpt", xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", xyz(*red)),
            (b"gXYZ", xyz(*green)), (b"bXYZ", xyz(*blue)), (b"rTRC", curve),
            (b"gTRC", curve), (b"bTRC", curve), (b"cprt", b"text" + b"\0" * 4 + b"none\0")]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data + b"\0" * (-len(data) % 4)
    header = (struct.pack(">I", offset + len(body)) + b"\0" * 4 + struct.pack(">I", 0x02100000)
              + b"mntrRGB XYZ " + b"\0" * 12 + b"acsp" + b"\0" * 28 + s15(0.9642) + s15(1.0)
              + s15(0.8249) + b"\0" * 48)
    return header + struct.pack(">I", len(tags)) + table + body


RED, GREEN, BLUE = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)


@pytest.mark.parametrize("kind", ["JPEG", "PNG"])
def test_a_colour_profile_is_applied(kind: str) -> None:
    """A profile whose red and blue primaries are swapped: a colour-managed viewer shows red
    where the samples say blue (the old decoder ignored the profile); an sRGB profile changes
    nothing."""
    picture = Image.new("RGB", (64, 64), (200, 120, 40))
    swapped = icc_profile("swapped primaries", BLUE, GREEN, RED)
    red, green, blue = pixels(encoded(picture, kind, icc_profile=swapped))[32, 32]
    assert blue > 190 and red < 50 and abs(green - 120) < 6
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    np.testing.assert_array_equal(pixels(encoded(picture, kind, icc_profile=srgb)),
                                  pixels(encoded(picture, kind)))


def _png(mode: str, colour, **options) -> bytes:
    return encoded(Image.new(mode, (64, 64), colour), "PNG", **options)


def _gamma_png() -> bytes:
    """A PNG with a gAMA chunk of 1.0 (linear samples) and no sRGB chunk."""
    data = _png("RGB", (90, 90, 90))
    chunk = b"gAMA" + struct.pack(">I", 100000)
    import zlib

    gama = struct.pack(">I", 4) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return data[:33] + gama + data[33:]  # after the 8-byte signature and the IHDR chunk


def _two_pages() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, "TIFF", save_all=True,
                                    append_images=[Image.new("RGB", (64, 64), (9, 9, 9))])
    return buffer.getvalue()


REFUSED = {
    # case: (file name, bytes, words of the message)
    "transparent pixels": ("a.png", lambda: _png("RGBA", (1, 2, 3, 100)), "transparent pixels"),
    "16 bits a sample": ("a.png", lambda: _png("I;16", 3000), "more than 8 bits a sample"),
    "two pages": ("a.tif", _two_pages, "holds 2 frames or pages"),
    "a gamma chunk": ("a.png", _gamma_png, "has a gamma of 1"),
    "a damaged colour profile": ("a.jpg", lambda: encoded(Image.new("RGB", (64, 64)), "JPEG",
                                                          icc_profile=b"\0" * 200),
                                 "colour profile (ICC) that cannot be applied"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_viewers_show_differently_is_refused(case: str) -> None:
    name, make, words = REFUSED[case]
    kind = {"png": "PNG", "tif": "TIFF", "jpg": "JPEG"}[name.rsplit(".", 1)[1]]
    assert words in (bytes_problem(make(), True, kind) or "")


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_a_refused_image_is_named_through_predict(model_dir: Path, tmp_path: Path,
                                                  policy: str) -> None:
    """Through the CLI: the file named with its reason and a fix; under skip left out, listed."""
    lab = tmp_path / "lab"
    (lab / "P1").mkdir(parents=True)
    (lab / "patients.csv").write_text("ID,GENDER,AGE,LYMPH_COUNT,LABEL\nP1,F,70,5,\n")
    (lab / "P1" / "good.png").write_bytes(_png("RGB", (200, 120, 160)))
    (lab / "P1" / "clear.png").write_bytes(REFUSED["transparent pixels"][1]())
    out = tmp_path / "pred.csv"
    result = predict(model_dir, lab / "patients.csv", out, "--on-error", policy)
    no_traceback(result)
    assert "clear.png: image has transparent pixels" in result.output.replace("\n", "")
    if policy == "raise":
        assert result.exit_code == 2 and "fix:" in result.output and not out.exists()
    else:
        assert result.exit_code == 0 and [r["ID"] for r in predictions(out)] == ["P1"]


@pytest.fixture
def model_dir(logreg_model_dir: Path) -> Path:
    return logreg_model_dir


# --------------------------------------------------------------------------- class 2: CSVs

SPLIT = {
    # case: (header, first row, words of the message)
    "decimal comma, comment column": (
        HEADER + ",COMMENT", "0,P1,1,M,11/3/1933,5,35",
        "lymphocyte count '5' is followed by '35' in column G (COMMENT, field 7)"),
    "thousands separator, comment column": (
        HEADER + ",COMMENT", "0,P1,1,M,11/3/1933,1,200",
        "would be read as 1, not 1.200 or 1200"),
    "three decimals, comment column": (
        HEADER + ",COMMENT", "0,P1,1,M,11/3/1933,5,350", "would be read as 5, not 5.350 or 5350"),
    "a decimal comma before the count": (
        "ID,LABEL,GENDER,DOB,WBC,LYMPH_COUNT,NOTE", "P1,1,M,11/3/1933,7,5,4.2",
        "column F (LYMPH_COUNT, field 6) would be read as '5', not '4.2'"),
    "a label shifted into by the count's decimal comma": (
        "ID,GENDER,DOB,LYMPH_COUNT,LABEL,NOTE", "P1,M,11/3/1933,5,1,1",
        "lymphocyte count '5' is followed by '1' in column E (LABEL, field 5)"),
}


def _split_cohort(root: Path, header: str, first: str) -> Path:
    """The good rows written in ``header``'s column order, ``first`` replacing the first."""
    names = header.split(",")
    rows = [first]
    for row in GOOD_ROWS[1:]:
        values = dict(zip(HEADER.split(","), row.split(",")))
        rows.append(",".join(values.get(name, "8" if name == "WBC" else "") for name in names))
    return write_cohort(root, rows, header=header)


@pytest.mark.parametrize("case", sorted(SPLIT))
@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_a_number_split_by_a_comma_is_never_read_as_another(model_dir: Path, tmp_path: Path,
                                                             case: str, policy: str) -> None:
    header, first, words = SPLIT[case]
    root = _split_cohort(tmp_path / "cohort", header, first)
    out = tmp_path / "pred.csv"
    result = predict(model_dir, root, out, "--on-error", policy)
    no_traceback(result)
    text = result.output.replace("\n", "")
    assert words in text and "clinical_annotation.csv, row 2" in text, result.output
    if policy == "raise":
        assert result.exit_code == 2 and "fix:" in result.output and not out.exists()
    else:
        assert result.exit_code == 0
        predicted, skipped = assert_accounted(root, out)
        assert "P1" not in predicted and 2 in [s["row"] for s in skipped]


def test_an_age_split_by_a_comma_is_refused_in_a_lab_export(tmp_path: Path) -> None:
    from lymphomil.data.cohort import load_cohort
    from lymphomil.runtime.errors import LymphomilError

    lab = tmp_path / "lab"
    (lab / "P1").mkdir(parents=True)
    (lab / "P1" / "a.png").write_bytes(_png("RGB", (200, 120, 160)))
    (lab / "patients.csv").write_text("ID,GENDER,AGE,LYMPH_COUNT,NOTE\nP1,F,72,5,3.5\n")
    with pytest.raises(LymphomilError, match=r"age '72' is followed by '5'"):
        load_cohort(lab / "patients.csv")


@pytest.mark.parametrize("first", [
    "0,P1,1,M,11/3/1933,5.35,12",  # a decimal point: one number, and a comment
    "0,P1,1,M,11/3/1933,5,ok",  # a comment that is no number
    "0,P1,1,M,11/3/1933,5.0,35",  # the fix the message gives
])
def test_rows_that_only_look_split_are_read(model_dir: Path, tmp_path: Path, first: str) -> None:
    root = _split_cohort(tmp_path / "cohort", HEADER + ",COMMENT", first)
    result = predict(model_dir, root, tmp_path / "pred.csv")
    assert result.exit_code == 0, result.output
