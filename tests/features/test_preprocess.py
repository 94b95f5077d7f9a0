"""Decoding, centre crop, normalisation and flips."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from lymphomil.features.backbones import TF_LITE_MEAN, TF_LITE_STD
from lymphomil.features.preprocess import (
    FLIP_VIEWS,
    centre_crop,
    decode_image,
    flip_view,
    make_preprocess,
    random_flips,
    resize_uint8,
)
from lymphomil.runtime.errors import LymphomilError


def _pattern(size: int = 224) -> np.ndarray:
    rng = np.random.default_rng(0)
    smooth = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(smooth).resize((size, size), Image.BILINEAR))


def _save(path, image: Image.Image, **kwargs):
    image.save(path, **kwargs)
    return path


def test_decode_jpeg_matches_pillow(tmp_path) -> None:
    path = _save(tmp_path / "a.jpg", Image.fromarray(_pattern()), quality=90)
    ours = decode_image(path)
    assert ours.dtype == torch.uint8 and ours.shape == (3, 224, 224)
    theirs = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(ours.permute(1, 2, 0).numpy(), theirs)


@pytest.mark.parametrize("mode,fmt",
                         [("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "PNG")])
def test_other_colour_modes_become_rgb(tmp_path, mode: str, fmt: str) -> None:
    image = Image.fromarray(_pattern()).convert(mode)
    path = _save(tmp_path / f"a.{fmt.lower()}", image, format=fmt)
    out = decode_image(path)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8


def test_other_sizes_are_resized(tmp_path) -> None:
    path = _save(tmp_path / "big.jpg", Image.fromarray(_pattern(300)).crop((0, 0, 300, 260)))
    assert decode_image(path).shape == (3, 224, 224)


@pytest.mark.parametrize("shape", [(300, 260), (100, 100), (224, 223)])
def test_resize_is_antialiased_bilinear_in_plain_torch(shape) -> None:
    """torchvision 0.28's resize steps (a native uint8 kernel on AVX2/AVX512 and ARM, else
    float32 then rounding): within one grey level of the float32 route everywhere, on any
    memory layout (a decoded JPEG is a channel-first view of HWC memory)."""
    generator = torch.Generator().manual_seed(0)
    hwc = torch.randint(0, 256, (*shape, 3), generator=generator, dtype=torch.uint8)
    for image in (hwc.permute(2, 0, 1), hwc.permute(2, 0, 1).contiguous()):
        ours = resize_uint8(image, 224)
        assert ours.dtype == torch.uint8 and ours.shape == (3, 224, 224)
        floats = torch.nn.functional.interpolate(image[None].float(), size=[224, 224],
                                                 mode="bilinear", antialias=True)[0]
        assert (ours.float() - floats.round()).abs().max() <= 1


def test_broken_images_name_the_file(tmp_path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(LymphomilError, match="notes.jpg.*not a JPEG"):
        decode_image(text)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(LymphomilError, match="empty.jpg.*empty"):
        decode_image(empty)
    data = io.BytesIO()
    Image.fromarray(_pattern()).save(data, format="JPEG")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(data.getvalue()[:200])
    with pytest.raises(LymphomilError, match="cut.jpg"):
        decode_image(truncated)
    with pytest.raises(LymphomilError, match="missing.jpg.*cannot be read"):
        decode_image(tmp_path / "missing.jpg")


def test_centre_crop_and_normalisation() -> None:
    x = torch.arange(224, dtype=torch.float32).expand(1, 3, 224, 224)
    crop = centre_crop(x, 112)
    assert crop.shape == (1, 3, 112, 112) and crop[0, 0, 0, 0] == 56
    assert centre_crop(x, 224).shape[-1] == 224
    with pytest.raises(LymphomilError, match="crop 300"):
        centre_crop(x, 300)
    prep = make_preprocess(112, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    img = torch.full((2, 3, 224, 224), 255, dtype=torch.uint8)
    assert torch.allclose(prep(img), torch.full((2, 3, 112, 112), 2.0))
    # EfficientNet-Lite's TF scaling: (x * 255 - 127) / 128 on [0, 1] pixels
    lite = make_preprocess(8, TF_LITE_MEAN, TF_LITE_STD)
    values = lite(torch.tensor([0, 127, 255], dtype=torch.uint8).view(3, 1, 1)
                  .expand(1, 3, 224, 224))
    assert torch.allclose(values[0, :, 0, 0], torch.tensor([-127 / 128, 0.0, 1.0]), atol=1e-6)


def test_flip_views_are_distinct_involutions() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    views = [flip_view(x, v) for v in FLIP_VIEWS]
    assert torch.equal(views[0], x)
    assert all(not torch.equal(views[i], views[j]) for i in range(4) for j in range(i + 1, 4))
    for view in FLIP_VIEWS:
        assert torch.equal(flip_view(flip_view(x, view), view), x)
    assert torch.equal(flip_view(x, "hv"), torch.rot90(x, 2, dims=(-2, -1)))
    with pytest.raises(ValueError):
        flip_view(x, "diagonal")


def test_random_flips_are_seeded_and_label_preserving() -> None:
    x = torch.randn(64, 3, 8, 8)
    a = random_flips(x, torch.Generator().manual_seed(3))
    b = random_flips(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    seen = set()
    for i in range(64):
        matches = [v for v in FLIP_VIEWS if torch.equal(a[i], flip_view(x[i:i + 1], v)[0])]
        assert matches
        seen.add(matches[0])
    assert seen == set(FLIP_VIEWS)


@settings(max_examples=40, deadline=None)
@given(width=st.integers(1, 300), height=st.integers(1, 300), progressive=st.booleans(),
       mode=st.sampled_from(["RGB", "L", "CMYK"]))
def test_jpeg_size_reads_the_frame_header_as_pillow_does(width: int, height: int,
                                                         progressive: bool, mode: str) -> None:
    from lymphomil.features.preprocess import jpeg_size

    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, "JPEG", progressive=progressive)
    assert jpeg_size(buffer.getvalue()) == (width, height)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_jpeg_size_never_raises_on_garbage(tail: bytes) -> None:
    from lymphomil.features.preprocess import jpeg_size

    size = jpeg_size(b"\xff\xd8\xff" + tail)
    assert size is None or (size[0] > 0 and size[1] > 0)
