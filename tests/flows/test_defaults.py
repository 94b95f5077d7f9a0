"""The defaults `--help` shows (lymphomil.flows.defaults, no pydantic) are RunConfig's."""

from __future__ import annotations

from lymphomil.flows.config import DEFAULT_CANDIDATES, DEFAULT_MODEL, RunConfig
from lymphomil.flows.defaults import RUN_DEFAULTS


def test_help_defaults_are_the_configs() -> None:
    for name, shown in RUN_DEFAULTS.items():
        value = RunConfig.model_fields[name].get_default(call_default_factory=True)
        assert shown == str(value.isoformat() if hasattr(value, "isoformat") else value), name
    config = RunConfig()
    assert config.candidates == DEFAULT_CANDIDATES and DEFAULT_MODEL in DEFAULT_CANDIDATES
