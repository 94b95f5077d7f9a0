"""The content-addressed instance-feature cache (docs/design.md §3): extract once, read everywhere.

Layout::

    <root>/<backbone>-<crop>px-<precision>-<spec hash>/spec.json
    <root>/<backbone>-<crop>px-<precision>-<spec hash>/<patient>-<content hash>.<kind>.safetensors

* The **spec hash** covers everything that changes the numbers: backbone, the sha256 of its
  weights, crop, precision, the decoder, the cache format, the versions of the libraries
  that compute it (torch, Pillow and what builds the backbone: ``features.env.library_versions``)
  and a batch size other than the default 16. TTA is not in it: the plain view is its own kind,
  and the TTA views are another (named ``views8`` on disk since TTA became the 8 dihedral views:
  the 4-flip ``views`` files of before are never read as 8-view ones).
* The **content hash** covers the patient's image file names (bag order) and each file's bytes,
  so a changed, added or removed image invalidates exactly that patient.
* Each file is written atomically (temp file + rename) as soon as its patient is done, so a
  killed run resumes where it stopped and never trusts half a file. Its safetensors metadata
  holds the full provenance and a checksum of the array; a file that fails to parse, does not
  match its key, or fails its checksum is recomputed.

Kinds on disk: ``pooled`` (n, d) plain view, ``views`` (8, n, d) TTA views (the dihedral group:
flips and rotations; file kind ``views8``), ``map`` (n, d, h, w) and ``trunk`` (n, d_t, h_t, w_t;
the activation before the backbone's last stage, :mod:`lymphomil.features.trunk`), both stored as
float16 where they fit.
``d`` is the backbone's pooled size (768 for ``dinov2-s``: CLS + mean patch token; its map has
384 channels). ``load(kind="pooled")`` with ``spec.tta`` returns the mean of the 8 views.
Everything is returned as read-only float32 arrays and kept in a
byte-bounded in-memory LRU, so cross-validation folds do not re-read files.
"""

from lymphomil.data.digests import forget_digests, image_digests
from lymphomil.features.cache.files import (
    CACHE_FORMAT,
    ENV_CACHE_DIR,
    FILE_KINDS,
    SPEC_JSON,
    SUFFIX,
    Plan,
    default_root,
    feature_root,
    file_kind,
)
from lymphomil.features.cache.store import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MEMORY_BYTES,
    FeatureCache,
    shared_cache,
)

__all__ = ["CACHE_FORMAT", "DEFAULT_BATCH_SIZE", "DEFAULT_MEMORY_BYTES", "ENV_CACHE_DIR",
           "FILE_KINDS", "SPEC_JSON", "SUFFIX", "FeatureCache", "Plan", "default_root",
           "feature_root", "file_kind", "forget_digests", "image_digests",
           "shared_cache"]
