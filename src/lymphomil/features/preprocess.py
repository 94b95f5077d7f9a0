"""Cell images to network inputs: decode, centre crop, flips, normalisation (docs/design.md §3).

Each image holds one lymphocyte in its centre, so a centre crop (112 px by default, 224 = the whole
image) removes the surrounding red cells; docs/design.md §3 measured it as worth more than the
choice of network. Flips and rotations are label-preserving for a cell seen from above (a cell has
no orientation), so flips serve as training augmentation and the eight symmetries of the square
(:data:`TTA_VIEWS`: flips, and flips of the transpose) as test-time augmentation.

Decoding uses libjpeg-turbo through simplejpeg with its *strict* flag (pixel-identical to
torchvision's ``decode_jpeg`` and to Pillow on the challenge's JPEGs, and ~15 % faster than the
former): libjpeg's corrupt-data warnings (a file cut short with its end marker put back, bytes
overwritten mid-stream) are errors, not grey blocks in a cell. The file checks (kind, geometry)
are :mod:`lymphomil.data.images`, shared with the cohort loader. Pillow decodes CMYK JPEGs and
images that are not JPEGs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from lymphomil.data.images import (
    KIND_OF_SUFFIX,
    ImageProblem,
    decode_displayed,
    kind_of_bytes,
    kind_problem_of,
    read_image_file,
)
from lymphomil.features.env import DECODER  # noqa: F401  (the cache key names the decoder)
from lymphomil.runtime.errors import LymphomilError

IMAGE_SIZE = 224  # every challenge image is 224 x 224; others are resized to it
FLIP_VIEWS = ("none", "h", "v", "hv")  # the flips: identity, horizontal, vertical, both
#: test-time augmentation: the 8 symmetries of the square (the dihedral group D4), i.e. the four
#: flips of the image and the four flips of its transpose ("t" = swap rows and columns first);
#: "th"/"tv" are the two 90-degree rotations, "t"/"thv" the two diagonal reflections
TTA_VIEWS = FLIP_VIEWS + ("t", "th", "tv", "thv")
_FLIP_DIMS = {"none": (), "h": (-1,), "v": (-2,), "hv": (-2, -1)}


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (not DHT/JPG/DAC)


def jpeg_size(data: bytes | bytearray) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, or None where the markers do not parse.

    A few slices per file: Pillow's header parser costs ~60 µs an image, 10 % of decoding one.
    """
    n, i = len(data), 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers carry no length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2:
            return None
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                return None
            height = (data[i + 5] << 8) | data[i + 6]
            width = (data[i + 7] << 8) | data[i + 8]
            return (width, height) if width and height else None
        i += 2 + length
    return None


_IMAGE_FIX = "replace or remove this image (or run with --on-error skip to leave it out)"


def decode_bytes(data: bytes | bytearray, path: str | Path = "<bytes>") -> torch.Tensor:
    """Encoded image bytes -> (3, 224, 224) uint8 RGB as a viewer shows them (see
    :func:`decode_image`; :func:`lymphomil.data.images.decode_displayed`).

    A JPEG is decoded once, strictly: a damaged one raises a :class:`LymphomilError` naming
    ``path`` (the message the cohort loader gives for the same file)."""
    if not data:
        raise LymphomilError("image is an empty (zero-byte) file", file=path, fix=_IMAGE_FIX)
    try:
        array = decode_displayed(data, kind_of_bytes(data))  # (H, W, 3) uint8
    except ImageProblem as exc:
        raise LymphomilError(f"image {exc}", file=path, fix=_IMAGE_FIX) from None
    image = torch.from_numpy(array).permute(2, 0, 1)  # (3, H, W) view of HWC memory
    if image.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        image = resize_uint8(image, IMAGE_SIZE)  # (3, 224, 224)
    return image


def resize_uint8(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, size, size) uint8, bilinear with antialiasing, in plain torch.

    The steps of torchvision 0.28's ``transforms.v2.functional.resize_image`` (the former op),
    so the pixels are the same: where torch has a native uint8 kernel (AVX2/AVX512, ARM) it is
    used on uint8; elsewhere the image goes through float32, then is rounded.
    """
    import platform

    channels, height, width = image.shape
    image = image.reshape(1, channels, height, width)
    if image.is_contiguous(memory_format=torch.channels_last) and image.numel() != image.stride(0):
        # as torchvision does: restride so the output is allocated channels-last too
        image = image.as_strided(image.shape, (image.numel(), *image.stride()[1:]))
    native = (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
              or platform.machine() in ("aarch64", "arm64"))
    x = image if native else image.to(torch.float32)
    out = torch.nn.functional.interpolate(x, size=[size, size], mode="bilinear",
                                          align_corners=False, antialias=True)
    if not native:
        out = out.round_().to(torch.uint8)
    return out.reshape(channels, size, size)


def decode_image(path: str | Path) -> torch.Tensor:
    """A cell image file -> (3, 224, 224) uint8 RGB; a :class:`LymphomilError` naming the file
    when it cannot be read or decoded.

    The tensor is a channel-first *view* of height-width-channel memory (libjpeg's own layout):
    copying a crop of it into a channels-last batch is a row copy, not a gather. The path is
    used as given (no ``Path`` parsing per image: ~10 µs each, 2 % of a decode).
    """
    try:  # non-blocking open, regular files only: a named pipe called x.jpg never hangs
        data = read_image_file(path)
    except ImageProblem as exc:
        raise LymphomilError(f"image {exc}", file=path, fix=_IMAGE_FIX) from None
    named = KIND_OF_SUFFIX.get(os.path.splitext(path)[1].lower())
    problem = kind_problem_of(data, named) if named and data else None
    if problem:
        raise LymphomilError(f"image {problem}", file=path, fix=_IMAGE_FIX)
    return decode_bytes(data, path)


def centre_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    """(..., H, W) -> (..., crop, crop), the centre (a view, no copy)."""
    height, width = x.shape[-2:]
    if crop > min(height, width) or crop < 8:
        raise LymphomilError(f"crop {crop} px does not fit a {height}x{width} image",
                             fix=f"use a crop between 8 and {min(height, width)} "
                                 "(224 = whole image)")
    top, left = (height - crop) // 2, (width - crop) // 2
    return x[..., top:top + crop, left:left + crop]


class Preprocess:
    """uint8 (B, 3, H, W) -> float32 (B, 3, crop, crop), normalised as the weights expect."""

    def __init__(self, crop: int, mean: tuple[float, ...], std: tuple[float, ...]):
        self.crop = int(crop)
        # (x / 255 - mean) / std == x * scale - shift, one fused pass per batch
        std_t = torch.tensor(std, dtype=torch.float32)
        self.scale = (1.0 / (255.0 * std_t)).view(1, 3, 1, 1)
        self.shift = (torch.tensor(mean, dtype=torch.float32) / std_t).view(1, 3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(0)
        x = centre_crop(x, self.crop)  # (B, 3, crop, crop) uint8 view
        scale, shift = self.scale.to(x.device), self.shift.to(x.device)
        return torch.addcmul(-shift, x.to(torch.float32), scale)  # (B, 3, crop, crop)


def make_preprocess(crop: int, mean: tuple[float, ...], std: tuple[float, ...]
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The crop + normalisation that matches a backbone's weights (``backbone.mean/std``)."""
    return Preprocess(crop, mean, std)


def flip_view(x: torch.Tensor, view: str) -> torch.Tensor:
    """One of the eight TTA views (:data:`TTA_VIEWS`) of a (B, C, H, W) batch: for a name
    starting with "t" the transpose (H <-> W) first, then the flips the rest of the name says."""
    transpose = view.startswith("t")
    dims = _FLIP_DIMS.get(view[1:] or "none" if transpose else view)
    if dims is None:
        raise ValueError(f"unknown view {view!r}; expected one of {TTA_VIEWS}")
    if transpose:
        x = x.transpose(-2, -1)
    return x.flip(dims) if dims else x


def random_flips(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training augmentation: each image flipped horizontally and/or vertically with p = 0.5."""
    batch = x.shape[0]
    draws = torch.rand((batch, 2), generator=generator) < 0.5  # (B, 2) on the CPU
    draws = draws.to(x.device)
    x = torch.where(draws[:, 0].view(batch, 1, 1, 1), x.flip(-1), x)  # (B, C, H, W)
    return torch.where(draws[:, 1].view(batch, 1, 1, 1), x.flip(-2), x)
