"""Where the work runs: in this process (``local``) or on a Ray cluster (``ray``).

The work is already cut into idempotent pieces, so an engine only decides where they run:

* **features** — one chunk of patients' images into the content-addressed cache
  (:meth:`lymphomil.features.cache.FeatureCache.ensure`); each patient's files are written
  atomically, so a retried or interrupted piece never leaves a file anyone trusts;
* **cross-validation** — one (model, repeat, fold) fit of the harness
  (:func:`lymphomil.evaluation.crossval.fit_fold`), seeded from (seed, model, repeat, fold), never
  from the order in which pieces finish.

Both engines run the same functions with the same thread layout (one intra-op thread per
extraction stream, ``--threads`` per fit), so they give bit-identical cache entries,
out-of-fold probabilities and predictions. The core never imports Ray:
``lymphomil.runtime.ray_engine`` is imported only when ``--engine ray`` is asked for
(:func:`lymphomil.runtime.engines.get_engine`). This module is the bottom layer: it imports nothing
of lymphomil but the errors.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

ENGINES = ("local", "ray")
RAY_INSTALL_FIX = 'install the extra: pip install "lymphomil[ray]" (or run with --engine local)'


class Engine(Protocol):
    """Where independent, idempotent pieces of work run. Both kinds map a function over tasks:
    ``extract_features`` runs ``cache.extract`` over chunks of patients, ``run_fits`` runs
    ``fit(shared, task)`` over the harness's fits; results come back in task order."""

    name: str

    def extract_features(self, cache: Any, patients: Sequence[Any], plans: Sequence[Any],
                         spec: Any, disk_kinds: Sequence[str]) -> int:
        """Compute the features of ``patients`` into ``cache``; the number of images."""
        ...

    def run_fits(self, fit: Callable[[Any, Any], Any], tasks: Sequence[Any],
                 on_done: Callable[[int, Any], None] | None = None,
                 shared: Any = None) -> list[Any]:
        """``[fit(shared, task) for task in tasks]``; ``on_done(index, result)`` as each ends."""
        ...

    def close(self) -> None:
        ...


class LocalEngine:
    """Everything in this process (feature streams as threads, fits one after another)."""

    name = "local"

    def extract_features(self, cache: Any, patients: Sequence[Any], plans: Sequence[Any],
                         spec: Any, disk_kinds: Sequence[str]) -> int:
        return cache.extract(patients, plans, spec, disk_kinds, progress=True)

    def run_fits(self, fit: Callable[[Any, Any], Any], tasks: Sequence[Any],
                 on_done: Callable[[int, Any], None] | None = None,
                 shared: Any = None) -> list[Any]:
        """``fit(shared, task)`` for each task in order; ``on_done(index, result)`` after each."""
        results = []
        for index, task in enumerate(tasks):
            results.append(fit(shared, task))
            if on_done is not None:
                on_done(index, results[-1])
        return results

    def close(self) -> None:
        pass
