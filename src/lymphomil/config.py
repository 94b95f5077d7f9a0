"""Typed configuration: TOML file + command-line overrides; the resolved copy is saved per run.

``lymphomil run --config RUN_DIR/config.toml`` repeats a run exactly: every option the run used
is in that file, and nothing in it depends on the calendar or the machine.
"""

from __future__ import annotations

import tomllib
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lymphomil.errors import LymphomilError

#: attribute models, image models and fusions that `run` compares by repeated CV
#: (the full comparison of every family is docs/results.md; these are the cheap, strong ones)
DEFAULT_CANDIDATES = ["logreg-compact", "image-logreg-thin", "fusion-mean", "fusion-min",
                      "fusion-max"]
#: what `train` and `run` fit when no model is named (chosen by repeated CV: docs/results.md)
DEFAULT_MODEL = "fusion-mean"


class RunConfig(BaseModel):
    """Every option of `lymphomil run` (and the shared ones of cv/train/predict)."""

    model_config = ConfigDict(extra="forbid")

    data: Path | None = Field(None, description="challenge-layout folder; none = synthetic cohort")
    synthetic_patients: int = Field(60, ge=8)
    synthetic_seed: int = 0
    candidates: list[str] = Field(default_factory=lambda: list(DEFAULT_CANDIDATES))
    model: str | None = Field(None, description="fit this model instead of the CV winner")
    folds: int = Field(5, ge=2)
    repeats: int = Field(5, ge=1)
    seed: int = 0
    reference_date: date = date(2024, 1, 1)
    on_error: str = "raise"
    features: str | None = Field(None, description="override image models' features, e.g. "
                                                   "'efficientnet-lite0@112'")
    cache_dir: Path | None = None
    threads: int = Field(1, ge=1, description="threads for model fitting (torch, BLAS)")
    gallery_k: int = Field(8, ge=1)
    engine: str = Field("local", description="where features and CV fits run: local or ray "
                                              "(RAY_ADDRESS, or a local Ray)")

    @field_validator("engine")
    @classmethod
    def _engine(cls, value: str) -> str:
        from lymphomil.engine import ENGINES

        if value not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}")
        return value

    @field_validator("on_error")
    @classmethod
    def _policy(cls, value: str) -> str:
        if value not in ("raise", "skip"):
            raise ValueError("on_error must be 'raise' or 'skip'")
        return value


def load_config(path: Path | None, overrides: dict[str, Any]) -> RunConfig:
    """File values, then non-None command-line ``overrides`` on top."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LymphomilError("config file not found", file=path,
                                 fix="give the path of a TOML file (a run saves its config.toml)") from None
        except tomllib.TOMLDecodeError as exc:
            raise LymphomilError(f"not valid TOML ({exc})", file=path,
                                 fix="correct the TOML syntax") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return RunConfig(**data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise LymphomilError(f"invalid configuration ({problems})", file=path,
                             fix="see `lymphomil run --help` for the options") from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def to_toml(config: RunConfig) -> str:
    """The resolved config as TOML (flat keys; ``None`` values are left out)."""
    lines = ["# lymphomil run configuration (resolved); repeat with: lymphomil run --config <this file>"]
    for key, value in config.model_dump().items():
        if value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
