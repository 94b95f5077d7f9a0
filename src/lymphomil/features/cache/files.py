"""The feature cache's files: where they live, their names (:class:`Plan`: one patient's files
for one spec) and their safetensors format with its provenance and checksum."""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lymphomil.outputs import cache_root

CACHE_FORMAT = 1
#: the name a kind has in file names and file metadata. "views" became the 8 dihedral views
#: (was 4 flips): the new name keeps every 4-view file written before from being read as one
FILE_KINDS = {"views": "views8"}
ENV_CACHE_DIR = "LYMPHOMIL_CACHE_DIR"
SPEC_JSON = "spec.json"
SUFFIX = ".safetensors"
DEFAULT_MEMORY_BYTES = 1 << 30  # in-memory LRU bound
FLOAT16_MAX = 65504.0


def file_kind(kind: str) -> str:
    """A kind's name on disk (:data:`FILE_KINDS`)."""
    return FILE_KINDS.get(kind, kind)


def default_root() -> Path:
    """``features/`` under the lymphomil cache (``$LYMPHOMIL_CACHE_DIR`` or
    ``~/.cache/lymphomil``)."""
    return feature_root(None)


def feature_root(cache_dir: str | Path | None) -> Path:
    """Where features live for a ``--cache-dir`` (the lymphomil cache root: features/, cv/, …)."""
    return cache_root(cache_dir) / "features"


# --------------------------------------------------------------------------- safetensors I/O


def encode_features(array: np.ndarray, metadata: dict[str, Any]) -> bytes:
    from safetensors.numpy import save

    array = np.ascontiguousarray(array)
    meta = dict(metadata, dtype=str(array.dtype), shape=list(array.shape),
                data_sha256=hashlib.sha256(memoryview(array).cast("B")).hexdigest())
    return save({"features": array}, metadata={"lymphomil": json.dumps(meta, sort_keys=True)})


def read_header(data: bytes | memoryview) -> dict[str, Any]:
    """The lymphomil metadata of a safetensors file (raises ValueError when it is not one)."""
    if len(data) < 8:
        raise ValueError("file shorter than a safetensors header")
    (size,) = struct.unpack("<Q", bytes(data[:8]))
    if size > len(data) - 8 or size > 10_000_000:
        raise ValueError("safetensors header runs past the end of the file")
    header = json.loads(bytes(data[8:8 + size]))
    tensor = header["features"]
    start, end = tensor["data_offsets"]
    if 8 + size + end != len(data) or start != 0:
        raise ValueError("file size does not match its header (truncated?)")
    return json.loads(header["__metadata__"]["lymphomil"])


def decode_features(data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    from safetensors.numpy import load

    meta = read_header(data)
    array = load(data)["features"]
    if (hashlib.sha256(memoryview(np.ascontiguousarray(array)).cast("B")).hexdigest()
            != meta["data_sha256"]):
        raise ValueError("array checksum mismatch (damaged file)")
    return array, meta


@dataclass(frozen=True)
class Plan:
    """Where one patient's files live for one spec."""

    patient_id: str
    content_hash: str
    names: tuple[str, ...]
    digests: tuple[str, ...]
    folder: Path

    def path(self, kind: str) -> Path:
        return self.folder / f"{self.patient_id}-{self.content_hash}.{file_kind(kind)}{SUFFIX}"
