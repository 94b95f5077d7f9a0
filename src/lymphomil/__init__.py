"""lymphomil: reactive vs malignant lymphocytosis by multiple-instance learning.

The Python API (see :mod:`lymphomil.api`): ``load_cohort``, ``create_model``, ``load_model``,
``list_models``, ``with_features``, ``labels_of``, ``cross_validate``, ``fit_referral``,
``decide``, ``train``, ``predict``, ``run``. They load on first
use, so ``import lymphomil`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_cohort", "create_model", "load_model", "list_models",
           "with_features", "labels_of", "cross_validate", "fit_referral", "decide", "train",
           "predict", "run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lymphomil import api  # deferred for start-up time: `import lymphomil` stays cheap

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lymphomil' has no attribute {name!r}")
