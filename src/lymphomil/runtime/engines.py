"""An engine by its name (``--engine local|ray``): Ray's module is imported only for ``ray``.

Kept apart from :mod:`lymphomil.runtime.engine` (a bottom module, which imports nothing of
lymphomil but the errors) and from the flows (which import the model registry): the ``features``
command needs an engine and no model family.
"""

from __future__ import annotations

from typing import Any

from lymphomil.runtime.engine import ENGINES, RAY_INSTALL_FIX, Engine, LocalEngine
from lymphomil.runtime.errors import LymphomilError


def get_engine(name: str | None, **options: Any) -> Engine:
    """The engine called ``name`` (``local`` or ``ray``); a clear error when Ray is missing."""
    name = (name or "local").lower()
    if name == "local":
        return LocalEngine()
    if name == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise LymphomilError("--engine ray needs Ray, which is not installed in this "
                                 "environment", fix=RAY_INSTALL_FIX) from None
        # deferred for start-up: Ray is optional and heavy, imported for --engine ray only
        from lymphomil.runtime.ray_engine import RayEngine

        return RayEngine(**options)
    raise LymphomilError(f"unknown engine {name!r}", fix=f"use one of {', '.join(ENGINES)}")
