"""What in the environment decides the numbers: CPU precision support, decoder, library versions.

Kept free of torch on purpose: a fully cached run (hash the images, check the cache files) never
needs to import torch, which alone takes longer than the rest of a warm run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lymphomil.features.weights import BUILTIN_BACKBONES, TORCHVISION_BACKBONES
from lymphomil.runtime.environment import cpu_count, package_versions  # noqa: F401 (cpu_count re-exported)
from lymphomil.runtime.errors import LymphomilError

PRECISIONS = ("auto", "bf16", "fp32")
#: the image decoder (part of the feature cache key): libjpeg-turbo through simplejpeg, strict
#: (corrupt data is an error), Pillow for CMYK and non-JPEGs (pixel-identical on the challenge's
#: JPEGs to the former torchvision op); "+displayed" (issue 32): the EXIF orientation and a
#: colour profile applied as a viewer shows them (lymphomil.data.display)
DECODER = "simplejpeg-strict+pil-fallback+displayed"
#: libraries whose versions can change the numbers (the feature cache key names each; the Ray
#: nodes must match the driver's). timm builds no backbone any more; it stays in the list, read
#: "absent", so the keys of the core backbones' caches are the ones they were
NUMERIC_LIBRARIES = ("torch", "torchvision", "timm", "pillow")
#: the libraries (besides torch and Pillow) that build a backbone: only these are read for its key
BACKBONE_LIBRARIES = {"efficientnet-lite0": ("efficientnet-lite-pytorch",),
                      **{name: ("torchvision",) for name in TORCHVISION_BACKBONES}}
_CORE_LIBRARIES = ("torch", "pillow")


def _cpuinfo_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


def bf16_supported() -> bool:
    """True where bf16 convolutions run natively on this CPU (AVX512-BF16 or AMX) via oneDNN."""
    flags = _cpuinfo_flags()
    if flags is not None and "torch" not in sys.modules:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(getattr(torch, "cpu", None), probe, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # an old torch without the probe's backend
            continue
    return bool(flags and {"avx512_bf16", "amx_bf16"} & flags)


def resolve_precision(precision: str) -> str:
    """``"auto"`` -> ``"bf16"`` where the CPU supports it natively, else ``"fp32"``."""
    precision = str(precision).lower()
    if precision not in PRECISIONS:
        raise LymphomilError(f"unknown precision {precision!r}", fix="use auto, bf16 or fp32")
    if precision == "auto":
        return "bf16" if bf16_supported() else "fp32"
    return precision


def library_versions(backbone: str | None = None) -> dict[str, str]:
    """Installed versions of :data:`NUMERIC_LIBRARIES` (read from metadata, nothing imported).

    For a built-in ``backbone`` (its feature cache key): only torch, Pillow and the libraries
    that build it (:data:`BACKBONE_LIBRARIES`) are read; the others read "absent" (not part of
    the computation), so installing or removing the torchvision extra changes no key of a core
    backbone. A backbone registered at run time keeps every version (what builds it is unknown).
    """
    if backbone is None or backbone not in BUILTIN_BACKBONES:
        return package_versions(NUMERIC_LIBRARIES)
    used = (*_CORE_LIBRARIES, *BACKBONE_LIBRARIES.get(backbone, ()))
    versions = package_versions(used)
    return {**{name: versions.get(name, "absent") for name in NUMERIC_LIBRARIES}, **versions}
