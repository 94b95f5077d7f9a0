"""The defaults the command line shows in ``--help``, importable without pydantic or numpy.

``lymphomil --help`` builds every command's options, so what they show must not import the
libraries a command needs only to run (:class:`lymphomil.flows.config.RunConfig` reads the same
values; ``tests/flows/test_defaults.py`` checks that they agree).
"""

from __future__ import annotations

#: attribute models, image models and fusions that `run` compares by repeated CV
#: (the full comparison of every family is docs/results.md; these are the cheap, strong ones)
DEFAULT_CANDIDATES = ["logreg-compact", "image-logreg-thin", "fusion-mean", "fusion-min",
                      "fusion-max"]
#: what `train` and `run` fit when no model is named (chosen by repeated CV: docs/results.md)
DEFAULT_MODEL = "fusion-mean"
#: RunConfig's defaults as `lymphomil run --help` shows them
RUN_DEFAULTS = {"folds": "5", "repeats": "5", "seed": "0", "synthetic_patients": "60",
                "reference_date": "2024-01-01", "on_error": "raise", "threads": "1",
                "engine": "local", "nested_selection": "False"}
