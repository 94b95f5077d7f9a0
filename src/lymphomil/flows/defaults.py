"""The defaults the command line shows in ``--help``, importable without pydantic or numpy.

``lymphomil --help`` builds every command's options, so what they show must not import the
libraries a command needs only to run. Each default is written once, here:
:class:`lymphomil.flows.config.RunConfig`'s fields and the commands' options read it.
"""

from __future__ import annotations

from lymphomil.data.reference_date import DEFAULT_REFERENCE_DATE

#: attribute models, image models and fusions that `run` compares by repeated CV
#: (the full comparison of every family is docs/results.md; these are the cheap, strong ones)
DEFAULT_CANDIDATES = ["logreg-compact", "image-logreg-thin", "fusion-mean", "fusion-min",
                      "fusion-max"]
#: what `train` and `run` fit when no model is named (chosen by repeated CV: docs/results.md)
DEFAULT_MODEL = "fusion-mean"
#: the defaults of `run` (RunConfig's fields read them) and of the options `cv`, `train`,
#: `predict` and `explore` share with it: written once here, shown by every `--help`
RUN_DEFAULTS = {"folds": 5, "repeats": 5, "seed": 0, "synthetic_patients": 60,
                "synthetic_seed": 0, "reference_date": DEFAULT_REFERENCE_DATE,
                "on_error": "raise", "threads": 1, "gallery_k": 8, "engine": "local",
                "nested_selection": False}


def shown(name: str) -> str:
    """A default as ``--help`` shows it (a date as YYYY-MM-DD)."""
    value = RUN_DEFAULTS[name]
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
