"""An image's pixels as a viewer shows them, not as its bytes store them.

A lab's export stores what its camera or its software wrote: a JPEG whose EXIF orientation
says "turn 90°", a colour profile other than sRGB, a PNG or TIFF with transparency, 16 bits a
channel, several pages, or a gamma chunk. Every viewer shows such an image turned, colour
managed, composed; a decoder that reads the raw samples sees another picture (a turned cell
moved a patient's call from reactive to malignant). Here each image is read as it is displayed:

* the EXIF orientation (JPEG APP1, PNG eXIf, TIFF tag 274) is applied, as every viewer does;
* an embedded ICC profile other than sRGB is converted to sRGB (littleCMS through Pillow,
  perceptual intent), as a colour-managed viewer does;
* what viewers show in ways that differ from one another, or over a background, is refused
  with the reason: transparent pixels, more than 8 bits a sample, several frames or pages, a
  PNG gamma other than sRGB's without an sRGB or ICC chunk.

The challenge's JPEGs carry none of these (a JFIF header only): their pixels are unchanged and
the fast path (libjpeg-turbo through simplejpeg) decodes them as before.
"""

from __future__ import annotations

import io

import numpy as np


class ImageProblem(ValueError):
    """Why bytes or a file are not a usable cell image (the text follows 'image ...')."""


#: EXIF orientation -> how to turn the stored (H, W, C) samples into what a viewer shows
#: (the TIFF/EXIF definitions; Pillow's ``ImageOps.exif_transpose`` does the same)
_ORIENT = {
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # turned 180°
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
    6: lambda a: np.rot90(a, -1),  # turned 90° clockwise
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],  # mirrored along the other diagonal
    8: lambda a: np.rot90(a, 1),  # turned 90° counter-clockwise
}
_EXIF, _ICC = b"Exif\x00\x00", b"ICC_PROFILE\x00"
#: Pillow modes with more than 8 bits a sample (viewers map them to 8 bits in ways that differ)
_DEEP_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N", "I;16S", "RGB;16", "RGBA;16")
SRGB_GAMMA = 1 / 2.2  # a PNG gAMA within 1 % of it is what a viewer assumes anyway


def jpeg_display_markers(data: bytes | bytearray) -> bool:
    """True when a JPEG's header holds EXIF (an orientation) or an ICC profile: the few files
    whose displayed pixels may differ from the decoded samples (a scan of the markers before
    the scan data, a few slices per file)."""
    n, i = len(data), 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: the header is over
            return False
        length = (data[i + 2] << 8) | data[i + 3]
        if (marker == 0xE1 and data[i + 4:i + 10] == _EXIF) or (
                marker == 0xE2 and data[i + 4:i + 16] == _ICC):
            return True
        i += 2 + max(length, 2)
    return False


def orientation_of(image) -> int:
    """The EXIF orientation (1-8) of an open Pillow image; 1 where absent or not valid (as
    viewers read an invalid one)."""
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block: viewers ignore it too
        return 1
    return value if isinstance(value, int) and value in range(1, 9) else 1


def oriented(array: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W, C) samples turned as a viewer shows them (contiguous: torch shares the memory)."""
    turn = _ORIENT.get(orientation)
    return array if turn is None else np.ascontiguousarray(turn(array))


def _srgb(profile) -> bool:
    from PIL import ImageCms

    try:
        return "srgb" in ImageCms.getProfileDescription(profile).lower()
    except Exception:  # PyCMSError, or a profile without a description
        return False


def _opaque(image) -> bool:
    """True where no pixel is (even partly) transparent."""
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        alpha = image.convert("RGBA").getchannel("A")
        return alpha.getextrema()[0] == 255
    return True


def displayed_pillow(data: bytes | bytearray) -> np.ndarray:
    """Image bytes -> (H, W, 3) uint8 RGB as a viewer shows them (Pillow decodes; see the
    module doc); :class:`ImageProblem` for an image viewers would show differently from
    one another, or one Pillow cannot read."""
    from PIL import Image, ImageCms

    try:
        with Image.open(io.BytesIO(data)) as image:
            frames = getattr(image, "n_frames", 1)
            if frames > 1 and image.format != "MPO":  # MPO: a JPEG's stereo twin, shown first
                raise ImageProblem(f"holds {frames} frames or pages (a cell image is one "
                                   "picture; viewers show one or animate them)")
            image.load()
            if image.mode in _DEEP_MODES:
                raise ImageProblem(f"has more than 8 bits a sample (mode {image.mode}; viewers "
                                   "map it to 8 bits in ways that differ)")
            info = image.info
            gamma = info.get("gamma")
            if (gamma and abs(gamma - SRGB_GAMMA) > 0.01 * SRGB_GAMMA
                    and "icc_profile" not in info and "srgb" not in info):
                raise ImageProblem(f"has a gamma of {gamma:g} (PNG gAMA): viewers show it "
                                   "lighter or darker than its pixel values")
            if not _opaque(image):
                raise ImageProblem("has transparent pixels (viewers show them over a "
                                   "background of their own)")
            orientation = orientation_of(image)
            icc = info.get("icc_profile")
            if image.mode in ("LA", "La", "1"):  # opaque: the grey values alone
                image = image.convert("L")
            elif image.mode in ("RGBA", "RGBa", "PA", "P"):
                image = image.convert("RGB")
            if icc:
                try:
                    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                    if not _srgb(profile):
                        image = ImageCms.profileToProfile(
                            image, profile, ImageCms.createProfile("sRGB"), outputMode="RGB")
                except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
                    raise ImageProblem(f"has a colour profile (ICC) that cannot be applied "
                                       f"({exc}); viewers would show other colours") from None
            array = np.asarray(image.convert("RGB"))
            return np.array(oriented(array, orientation))  # writable: torch shares it
    except ImageProblem:
        raise
    except Image.DecompressionBombError:
        raise ImageProblem("is too large to decode safely (decompression bomb)") from None
    except Exception as exc:  # Pillow raises many types for broken files
        raise ImageProblem(f"is not a readable image ({type(exc).__name__}: {exc})") from None


def displayed_jpeg(samples: np.ndarray, data: bytes | bytearray) -> np.ndarray:
    """The strictly decoded samples of a JPEG whose header holds EXIF or an ICC profile
    (:func:`jpeg_display_markers`), as a viewer shows them: turned by its orientation; one with
    a colour profile other than sRGB is read again through the profile by Pillow."""
    from PIL import Image, ImageCms

    try:
        with Image.open(io.BytesIO(data)) as image:  # the header only
            orientation = orientation_of(image)
            icc = image.info.get("icc_profile")
    except Exception as exc:
        raise ImageProblem(f"is not a readable JPEG ({type(exc).__name__}: {exc})") from None
    if icc:
        try:
            plain = _srgb(ImageCms.ImageCmsProfile(io.BytesIO(icc)))
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            plain = False  # displayed_pillow names the problem
        if not plain:
            return displayed_pillow(data)
    return oriented(samples, orientation)
