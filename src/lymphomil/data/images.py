"""Is a file a usable cell image? Checked by its kind, its header and by decoding it.

Torch-free (the loader and a fully cached run never import torch). The same checks serve the
cohort loader (:func:`image_problem`, before any command uses a cohort) and the feature
extractor (:func:`read_image_file` and :func:`decode_jpeg_strict`, through
``lymphomil.features.preprocess.decode_bytes``), so a damaged image gets the same message
whichever command meets it first.

* **Kind, before any open**: a named pipe called ``x.jpg`` would block a reader forever, a device
  would stream without end; a symbolic link loop cannot be followed. They are refused from
  ``stat`` alone (:func:`kind_problem`), and the open itself is non-blocking with the file's type
  checked again on the open descriptor (a file swapped for a pipe in between is still refused).
* **Geometry from the header**: a side over :data:`MAX_IMAGE_SIDE` (a decompression bomb), under
  :data:`MIN_IMAGE_SIDE`, or a side ratio over :data:`MAX_ASPECT` is not a cell image.
* **Decoding, strictly**: libjpeg-turbo (through simplejpeg) reports *recoverable* corruption —
  a file cut short with its end marker put back ("premature end of data segment"), bytes
  overwritten mid-stream — as warnings and would otherwise fill the rest with grey; here a
  warning is an error. Data after the end-of-image marker is fine (libjpeg stops there).
* **As a viewer shows it**: the EXIF orientation and a colour profile are applied, and what
  viewers would show differently (transparency, 16 bits, several frames) is refused
  (:mod:`lymphomil.data.display`). A lab's export may hold PNG and TIFF files too
  (:data:`KIND_OF_SUFFIX`); a file's bytes must be the kind its name says.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from lymphomil.data.display import (
    ImageProblem,
    displayed_jpeg,
    displayed_pillow,
    jpeg_display_markers,
)
from lymphomil.outputs import atomic_write_text, cache_root

MAX_IMAGE_SIDE = 4096  # larger images are refused (decompression bombs)
MIN_IMAGE_SIDE = 32  # smaller: no cell to see (the challenge's images are 224 x 224)
MAX_ASPECT = 4.0  # longer side / shorter side; the challenge's images are square
MAX_FILE_BYTES = 64 << 20  # a cell image is ~10 KiB; a file this large is not one
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG"
#: an image file's kind by its name (the challenge layout lists .jpg/.jpeg only)
KIND_OF_SUFFIX = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF",
                  ".tiff": "TIFF"}

_NOT_REGULAR = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISDIR, "a folder"))

#: libjpeg's messages for a colour space TurboJPEG cannot convert (Pillow decodes those)
_CMYK = ("CMYK", "YCCK")


def _kind_of(mode: int) -> str | None:
    for test, name in _NOT_REGULAR:
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def kind_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a regular file (following links), from ``stat`` alone: never opens it."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop"
        if exc.errno == errno.ENOENT and os.path.islink(path):
            return "is a broken symbolic link (its target does not exist)"
        return f"cannot be read ({exc.strerror or exc})"
    kind = _kind_of(st.st_mode)
    return f"is {kind}, not a regular file" if kind else None


def read_image_file(path: str | Path) -> bytearray:
    """A regular file's bytes into a writable buffer; :class:`ImageProblem` for anything else.

    The open is non-blocking and the descriptor's type is checked before reading: a named pipe or
    a device is never read, even one that replaced the file after the loader looked at it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        problem = kind_problem(path)
        raise ImageProblem(problem or f"cannot be read ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        kind = _kind_of(st.st_mode)
        if kind:
            raise ImageProblem(f"is {kind}, not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise ImageProblem(f"is {st.st_size / 2**20:.0f} MiB, larger than "
                               f"{MAX_FILE_BYTES >> 20} MiB (not a cell image)")
        data = bytearray(st.st_size)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            del data[handle.readinto(data):]
    except OSError as exc:
        raise ImageProblem(f"cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    return data


def geometry_problem(width: int, height: int) -> str | None:
    """Why a width x height image is not a plausible cell image, naming the bound."""
    if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
        return f"is {width}x{height} pixels, larger than {MAX_IMAGE_SIDE} (decompression bomb?)"
    if min(width, height) < MIN_IMAGE_SIDE:
        return (f"is {width}x{height} pixels, smaller than {MIN_IMAGE_SIDE} px on a side "
                "(not a cell image)")
    if max(width, height) > MAX_ASPECT * min(width, height):
        return (f"is {width}x{height} pixels, more elongated than {MAX_ASPECT:g}:1 "
                "(not a cell image)")
    return None


def kind_of_bytes(data: bytes | bytearray) -> str | None:
    """"JPEG", "PNG" or "TIFF" by the first bytes, or None."""
    if data[:3] == JPEG_MAGIC:
        return "JPEG"
    if data[:4] == PNG_MAGIC:
        return "PNG"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    return None


def kind_problem_of(data: bytes | bytearray, expected: str) -> str | None:
    """Why ``data`` is not an image of the ``expected`` kind (its name's), or None."""
    if not data:
        return "is an empty (zero-byte) file"
    found = kind_of_bytes(data)
    if found == expected:
        return None
    article = {"JPEG": "a JPEG", "PNG": "a PNG", "TIFF": "a TIFF"}
    shown = article.get(found or "", f"not {article[expected]}")
    return f"is {shown} file despite its name"


def jpeg_header(data: bytes | bytearray) -> tuple[int, int, str]:
    """(width, height, colour space) of JPEG bytes; :class:`ImageProblem` when unreadable."""
    import simplejpeg

    problem = kind_problem_of(data, "JPEG")
    if problem:
        raise ImageProblem(problem)
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise ImageProblem(f"is a damaged JPEG (unreadable header: {_libjpeg(exc)})") from None
    return width, height, colorspace


def _libjpeg(exc: Exception) -> str:
    text = str(exc)
    return text.split("(): ", 1)[-1] if "(): " in text else text


def needs_pillow(colorspace: str) -> bool:
    """TurboJPEG does not convert these to RGB; Pillow's ``convert('RGB')`` does."""
    return colorspace.upper() in _CMYK


def decode_jpeg_strict(data: bytes | bytearray, colorspace: str) -> np.ndarray:
    """JPEG bytes -> (H, W, 3) uint8 RGB as a viewer shows them; libjpeg's corrupt-data
    warnings raise :class:`ImageProblem`. ``colorspace`` from :func:`jpeg_header` (CMYK goes
    to Pillow). A header with EXIF or a colour profile: :mod:`lymphomil.data.display`."""
    if needs_pillow(colorspace):
        return displayed_pillow(data)
    import simplejpeg

    try:
        samples = simplejpeg.decode_jpeg(data, "RGB", strict=True)
    except ValueError as exc:
        raise ImageProblem(f"is a damaged JPEG ({_libjpeg(exc)})") from None
    return displayed_jpeg(samples, data) if jpeg_display_markers(data) else samples


def decode_displayed(data: bytes | bytearray, kind: str | None = "JPEG") -> np.ndarray:
    """An image file's bytes (of the ``kind`` its name says; None: any kind Pillow reads) ->
    (H, W, 3) uint8 RGB as a viewer shows them, after the checks of :func:`bytes_problem`;
    :class:`ImageProblem` otherwise."""
    if kind == "JPEG":
        width, height, colorspace = jpeg_header(data)
        problem = geometry_problem(width, height)
        if problem:
            raise ImageProblem(problem)
        return decode_jpeg_strict(data, colorspace)
    problem = (kind_problem_of(data, kind) if kind else None) or _pillow_geometry_problem(data)
    if problem:
        raise ImageProblem(problem)
    return displayed_pillow(data)


def _pillow_geometry_problem(data: bytes | bytearray) -> str | None:
    """The geometry check from a PNG's or TIFF's header (Pillow parses only the header)."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as header:
            return geometry_problem(*header.size)
    except Image.DecompressionBombError:
        return "is too large to decode safely (decompression bomb)"
    except Exception as exc:  # Pillow raises many types for broken files
        return f"is not a readable image ({type(exc).__name__}: {exc})"


def bytes_problem(data: bytes | bytearray, decode: bool = True, kind: str = "JPEG"
                  ) -> str | None:
    """Why encoded bytes are not a usable cell image of ``kind`` (header, geometry, and with
    ``decode`` a strict decode as a viewer shows it), or ``None``."""
    try:
        if decode:
            decode_displayed(data, kind)
        elif kind == "JPEG":
            problem = geometry_problem(*jpeg_header(data)[:2])
            if problem:
                return problem
        else:
            return kind_problem_of(data, kind) or _pillow_geometry_problem(data)
    except ImageProblem as exc:
        return str(exc)
    return None


# path -> (size, mtime_ns, ctime_ns, inode, problem): decoded once per process while unchanged
_CHECKED: dict[str, tuple[int, int, int, int, str | None]] = {}

#: files that decoded cleanly, kept across processes in the lymphomil cache (``validated/``):
#: path -> (size, mtime_ns, ctime_ns, inode). A later command trusts the verdict while the
#: file's size, times and inode are unchanged, so only new or changed images are decoded at load
#: (the shared cohort: 14,107 images, ~10 s of decoding here, once). The ctime moves on every
#: write, even one that puts the mtime back (``cp -p``, ``touch -d``): v1 keyed without it.
#: Versioned with the checks themselves.
MEMO_VERSION = 2
_MEMO: dict[str, tuple[int, ...]] | None = None
_MEMO_NEW: dict[str, tuple[int, ...]] = {}


#: the memo files' names (every version): what ``lymphomil cache clear`` removes
MEMO_FILE = re.compile(r"images-v[0-9]+\.json")


def memo_folder(cache_dir: str | Path | None) -> Path:
    """Where the memo of the cache root ``cache_dir`` (None: the default root) lives."""
    return cache_root(cache_dir) / "validated"


def _memo_file() -> Path:
    return memo_folder(_ROOT) / f"images-v{MEMO_VERSION}.json"


def _memo() -> dict[str, tuple[int, ...]]:
    global _MEMO
    if _MEMO is None:
        import json

        try:
            record = json.loads(_memo_file().read_text(encoding="utf-8"))
            entries = record["entries"] if record.get("checks") == _CHECKS else {}
            _MEMO = {str(k): tuple(int(x) for x in v[:4]) for k, v in entries.items()
                     if len(v) == 4}
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError,
                RecursionError, OverflowError):  # OverflowError: int(inf)
            _MEMO = {}  # none yet, or damaged: decode again
    return _MEMO


#: what a verdict depends on: the bounds and the decoder (and since issue 32: the image as a
#: viewer shows it, PNG and TIFF)
_CHECKS = (f"sides {MIN_IMAGE_SIDE}-{MAX_IMAGE_SIDE}, aspect {MAX_ASPECT:g}, simplejpeg strict, "
           "displayed v1")


def save_memo() -> None:
    """Keep this process's clean verdicts for later commands (never fails a command: a
    read-only or full cache only means decoding again next time)."""
    if not _MEMO_NEW:
        return
    import json

    memo = _memo()
    memo.update(_MEMO_NEW)
    _MEMO_NEW.clear()
    if len(memo) > 100_000:  # files of cohorts since deleted: keep those still there
        for gone in [k for k in memo if not os.path.exists(k)]:
            del memo[gone]
    try:
        atomic_write_text(_memo_file(), json.dumps({"checks": _CHECKS, "entries": memo},
                                                   separators=(",", ":")))
    except OSError:
        pass


#: the cache root whose memo is in use (a ``--cache-dir``; None: the default root), set by
#: :func:`memo_in` while a cohort is read
_ROOT: Path | None = None


@contextmanager
def memo_in(cache_dir: str | Path | None) -> Iterator[None]:
    """Read and keep clean verdicts in the memo of ``cache_dir`` (``--cache-dir``; None: the
    default cache root) while a cohort is read; the new verdicts are saved there at the end."""
    global _ROOT, _MEMO
    previous, wanted = _ROOT, None if cache_dir is None else Path(cache_dir)
    if wanted != _ROOT:
        save_memo()  # the pending verdicts belong to the memo in use until now
        _ROOT, _MEMO = wanted, None
    try:
        yield
    finally:
        save_memo()
        if _ROOT != previous:
            _ROOT, _MEMO = previous, None


def image_problem(path: str | Path, decode: bool = True) -> str | None:
    """Why the file at ``path`` is not a usable cell image, or ``None`` (see the module doc).

    Memoised by (path, size, mtime, ctime, inode): in this process for every verdict, across
    processes for clean decodes (:func:`save_memo`), so the stages of a run and later commands
    decode each unchanged image once.
    """
    key = os.fspath(path)
    try:
        st = os.stat(key)
    except OSError:
        return kind_problem(key)
    kind = _kind_of(st.st_mode)
    if kind:
        return f"is {kind}, not a regular file"
    state = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    known = _CHECKED.get(key)
    if known is not None and known[:4] == state and (known[4] is not None or decode):
        return known[4]
    if decode and _memo().get(key) == state:
        _CHECKED[key] = (*state, None)
        return None
    try:
        data = read_image_file(key)
    except ImageProblem as exc:
        return str(exc)
    kind = KIND_OF_SUFFIX.get(os.path.splitext(key)[1].lower(), "JPEG")
    problem = bytes_problem(data, decode, kind)
    if decode or problem is not None:
        _CHECKED[key] = (*state, problem)
        if decode and problem is None:
            _MEMO_NEW[key] = state
    return problem
