"""What identifies a set of instance features: the contract between models and the cache.

Image models carry a :class:`FeatureSpec` among their hyper-parameters and ask each patient for
``patient.bag(spec, kind)``; the attached :class:`FeatureStore` answers from the on-disk cache
(computing what is missing). A saved model stores its spec, so ``predict`` on a new folder
extracts exactly the same features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Iterable, Protocol

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from lymphomil.data.cohort import Patient

#: kinds of instance features a store can give for one patient
#:  "pooled": (n_images, d) float32, globally pooled backbone features (mean over TTA views if any)
#:  "views":  (8, n_images, d) float32, one pooled row per dihedral view (TTA: 4 flips x transpose)
#:  "map":    (n_images, d, h, w) float32, the backbone's last spatial feature map
#:  "trunk":  (n_images, d_t, h_t, w_t) float32, the activation before the backbone's last stage
#:            (features.trunk: what partial fine-tuning trains on; float16 on disk)
KINDS = ("pooled", "views", "map", "trunk")

#: the centre crop of every default (112 px of the 224 px images: the cell, little background)
DEFAULT_CROP = 112
#: the features the neural families and image-logreg read unless told otherwise
DEFAULT_FEATURES = f"efficientnet-lite0@{DEFAULT_CROP}"


@dataclass(frozen=True)
class FeatureSpec:
    backbone: str = "efficientnet-lite0"
    weights: str = "imagenet"  # "imagenet", "none", or a path to a local state_dict
    crop: int = DEFAULT_CROP  # centre crop in pixels; 224 = whole image
    tta: bool = False  # the 8 dihedral views as TTA ("views" kind; "pooled" averages them)
    precision: str = "fp32"  # "fp32" or "bf16" (resolved: never "auto" here)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSpec":
        return cls(**data)

    @classmethod
    def parse(cls, text: "str | FeatureSpec | dict") -> "FeatureSpec":
        """A spec from its text, ``BACKBONE[:WEIGHTS]@CROP[+tta][+bf16]``, a dict or a spec.

        ``"efficientnet-lite0@112"``; ``"dinov2-s@112+tta"`` (TTA = mean over the 8 flips and
        rotations); ``"resnet18:none@224"`` (random weights); ``"resnet18:/w/r18.pt@112+bf16"``
        (a local state_dict, bf16 features): every option of ``lymphomil features`` can be
        written, and :meth:`label` writes it back (``FeatureSpec.parse(s.label()) == s``).
        """
        if isinstance(text, FeatureSpec):
            return text
        if isinstance(text, dict):
            return cls.from_dict(text)
        head, at, rest = text.rpartition("@")
        if not at:
            head, rest = text, ""
        flags = rest.split("+")
        unknown = [f for f in flags[1:] if f not in ("tta", "bf16", "fp32")]
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join('+' + f for f in unknown)}; "
                             "use +tta and/or +bf16")
        if flags[0] and not (flags[0].isascii() and flags[0].isdigit()):
            raise ValueError(f"the crop {flags[0]!r} is not a number")
        name, _, weights = head.partition(":")
        crop = int(flags[0]) if flags[0] else DEFAULT_CROP
        return cls(backbone=name, weights=weights or "imagenet", crop=crop, tta="tta" in flags[1:],
                   precision="bf16" if "bf16" in flags[1:] else "fp32")

    def label(self) -> str:
        """The text :meth:`parse` reads back; the defaults (ImageNet weights, fp32) unwritten."""
        weights = "" if self.weights == "imagenet" else f":{self.weights}"
        return (f"{self.backbone}{weights}@{self.crop}" + ("+tta" if self.tta else "")
                + ("+bf16" if self.precision == "bf16" else ""))


class FeatureStore(Protocol):
    """Gives instance features per patient; implemented by :mod:`lymphomil.features.cache`."""

    def load(self, patient: "Patient", spec: FeatureSpec, kind: str = "pooled") -> np.ndarray:
        ...

    def ensure(self, patients: Iterable["Patient"], spec: FeatureSpec,
               kinds: Iterable[str] = ("pooled",)) -> None:
        """Compute (with a progress bar) whatever is not cached yet."""
        ...
