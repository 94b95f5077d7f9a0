"""The per-image statistics the OOD checks compare (colour, nucleus, detail, JPEG blocks, size),
and their memo in the lymphomil cache so a warm run decodes nothing."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from lymphomil.data.digests import image_digests
from lymphomil.outputs import atomic_write_text, cache_root, dumps_json

#: the per-image statistics :func:`image_stats` returns, in order
IMAGE_STATS = ("mean_r", "mean_g", "mean_b", "nucleus_r", "nucleus_g", "nucleus_b",
               "sharpness", "blockiness", "nucleus_size")
COLOUR = slice(0, 6)
SHARP, BLOCK, SIZE = 6, 7, 8
#: a pixel is "dark-stained" when its darkest channel is below this share of the image's median
DARK_SHARE = 0.4


def image_stats(image: np.ndarray) -> np.ndarray:
    """The :data:`IMAGE_STATS` of one (3, H, W) uint8 RGB image (float64, 9 values).

    Cheap by design (~1 ms): colour and the nucleus on the image subsampled 2x; the detail and
    the JPEG block edges at full resolution on the grey image. ``nucleus_*`` are NaN and
    ``nucleus_size`` 0 when no dark-stained region is found.
    """
    from scipy import ndimage

    x = np.asarray(image)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {x.shape}")
    small = x[:, ::2, ::2]  # (3, h, w) uint8
    out = np.full(len(IMAGE_STATS), np.nan)
    out[0:3] = small.reshape(3, -1).mean(axis=1)
    darkest = small.min(axis=0)  # (h, w)
    dark = darkest < DARK_SHARE * max(float(np.median(darkest)), 1.0)
    labels, count = ndimage.label(dark)
    if count:
        sizes = np.bincount(labels.ravel())[1:]
        region = labels == (int(np.argmax(sizes)) + 1)
        out[3:6] = small[:, region].mean(axis=1)
        out[SIZE] = math.sqrt(4.0 * float(sizes.max()))  # side of a square, full-res pixels
    else:
        out[SIZE] = 0.0
    grey = x[1].astype(np.float32)  # (H, W): green carries most of the stain's contrast
    lap = (4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2]
           - grey[1:-1, 2:])
    out[SHARP] = 0.5 * math.log(float(np.mean(lap * lap)) + 1.0)  # log RMS Laplacian
    out[BLOCK] = 0.5 * (_block_ratio(grey) + _block_ratio(grey.T))
    return out


def _block_ratio(grey: np.ndarray) -> float:
    """Mean step across the 8-pixel JPEG block edges over the mean step elsewhere (1 = none)."""
    step = np.abs(np.diff(grey, axis=1))  # (H, W-1): step j is between columns j and j+1
    at_edge = np.zeros(step.shape[1], dtype=bool)
    at_edge[7::8] = True
    inside = float(step[:, ~at_edge].mean())
    return float(step[:, at_edge].mean()) / max(inside, 1e-3)


#: image statistics kept across processes in the lymphomil cache (``ood/``), keyed by the sha256
#: of the file's bytes (the digests the feature cache computes anyway): a warm run decodes
#: nothing. Versioned with :func:`image_stats` itself.
STATS_VERSION = 1
_MEMO: dict[str, dict[str, list]] = {}  # memo file -> {digest: stats}
_MEMO_NEW: dict[str, int] = {}  # memo file -> entries added since it was read


def _memo_path(cache_dir: str | os.PathLike | None) -> str:
    return os.fspath(cache_root(cache_dir) / "ood" / f"image-stats-v{STATS_VERSION}.json")


def _memo(path: str) -> dict[str, list]:
    if path not in _MEMO:
        try:
            with open(path, encoding="utf-8") as handle:
                record = json.load(handle)
            entries = record["entries"] if record.get("stats") == list(IMAGE_STATS) else {}
            _MEMO[path] = {str(k): list(v) for k, v in entries.items()
                           if isinstance(v, list) and len(v) == len(IMAGE_STATS)}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            _MEMO[path] = {}  # none yet, or damaged: decode again
    return _MEMO[path]


def save_stats_memo(cache_dir: str | os.PathLike | None = None) -> None:
    """Keep this process's image statistics for later commands (never fails a command: a
    read-only or full cache only means decoding again next time)."""
    path = _memo_path(cache_dir)
    if not _MEMO_NEW.pop(path, 0):
        return
    try:
        atomic_write_text(path, dumps_json({"stats": list(IMAGE_STATS),
                                            "entries": _memo(path)}, compact=True))
    except OSError:
        pass


def _stats_of_files(paths: list[str], cache_dir: str | os.PathLike | None) -> np.ndarray:
    memo_path = _memo_path(cache_dir)
    memo = _memo(memo_path)
    rows = []
    for path, digest in zip(paths, image_digests(paths)):
        known = memo.get(digest)
        if known is None:
            # deferred for start-up: the decoder imports torch, which a warm run never needs
            from lymphomil.features.preprocess import decode_image

            known = memo[digest] = image_stats(decode_image(path).numpy()).tolist()
            _MEMO_NEW[memo_path] = _MEMO_NEW.get(memo_path, 0) + 1
        rows.append(known)
    return np.array(rows, dtype=float).reshape(len(rows), len(IMAGE_STATS))


def spread_indices(n: int, at_most: int) -> np.ndarray:
    """``at_most`` indices evenly spread over ``range(n)`` (all of them when ``n`` is smaller)."""
    if n <= at_most:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, at_most).round().astype(int))


def patient_image_stats(patient: Any, max_images: int = 32,
                        cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """(k, 9) :data:`IMAGE_STATS` of up to ``max_images`` of the patient's images (evenly
    spread over its bag, so the cost stays bounded), decoded with the project's decoder once
    per file content (the memo in the lymphomil cache, see :func:`save_stats_memo`)."""
    paths = [os.fspath(patient.image_paths[i])
             for i in spread_indices(len(patient.image_paths), max_images)]
    return _stats_of_files(paths, cache_dir)


def summarise(stats: np.ndarray) -> np.ndarray:
    """A patient's statistics: the median over its images (NaN-aware for the nucleus colour)."""
    stats = np.asarray(stats, dtype=float).reshape(-1, len(IMAGE_STATS))
    if not len(stats):
        return np.full(len(IMAGE_STATS), np.nan)
    out = np.median(stats, axis=0)
    colour = stats[:, 3:6]
    if np.isfinite(colour).any():
        out[3:6] = np.nanmedian(colour[np.isfinite(colour).all(axis=1)], axis=0)
    return out


