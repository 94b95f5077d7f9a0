"""Typed configuration: TOML file + command-line overrides; the resolved copy is saved per run.

``lymphomil run --config RUN_DIR/config.toml`` repeats a run exactly: every option the run used
is in that file, and nothing in it depends on the calendar or the machine.
"""

from __future__ import annotations

import json
import os
import tomllib
from datetime import date
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lymphomil.data.reference_date import MAX_YEAR, MIN_YEAR
from lymphomil.flows.defaults import DEFAULT_CANDIDATES, DEFAULT_MODEL, RUN_DEFAULTS
from lymphomil.flows.options import check_model_names, features_option
from lymphomil.runtime.engine import ENGINES
from lymphomil.runtime.errors import LymphomilError, one_of, plain_problems


def default_model_features() -> list:
    """``(FeatureSpec, kind)`` pairs the default model reads: what ``lymphomil features``
    computes when no backbone is named (so that a later ``run`` or ``train`` finds them)."""
    # deferred for start-up time: `features` reads this module, and imports no model family
    from lymphomil.models.base import create_model

    return list(create_model(DEFAULT_MODEL).required_features())


#: the fields whose value is one of a few names
OnErrorPolicy = Annotated[str, one_of(lambda: ("raise", "skip"),
                                       "on_error must be 'raise' or 'skip'")]
EngineName = Annotated[str, one_of(lambda: ENGINES, "engine must be one of {choices}")]


class RunConfig(BaseModel):
    """Every option of `lymphomil run` (and the shared ones of cv/train/predict)."""

    model_config = ConfigDict(extra="forbid")

    data: Path | None = Field(None, description="challenge-layout folder, or a lab's CSV of "
                                                "patients; none = synthetic cohort")
    images: Path | None = Field(None, description="with a CSV as data: the folder of one image "
                                                  "folder per patient (default: the CSV's)")
    columns: dict[str, str] | None = Field(None, description="with a CSV as data: its column "
                                                             "names, e.g. {id = 'Patient'}")
    synthetic_patients: int = Field(RUN_DEFAULTS["synthetic_patients"], ge=8, le=100_000)
    synthetic_seed: int = Field(RUN_DEFAULTS["synthetic_seed"], ge=0)
    candidates: list[str] = Field(default_factory=lambda: list(DEFAULT_CANDIDATES))
    model: str | None = Field(None, description="fit this model instead of the CV winner")
    folds: int = Field(RUN_DEFAULTS["folds"], ge=2, le=50)
    repeats: int = Field(RUN_DEFAULTS["repeats"], ge=1, le=100)
    seed: int = RUN_DEFAULTS["seed"]
    reference_date: date = RUN_DEFAULTS["reference_date"]
    on_error: OnErrorPolicy = RUN_DEFAULTS["on_error"]
    features: str | None = Field(None, description="override image models' features, e.g. "
                                                   "'efficientnet-lite0@112'")
    cache_dir: Path | None = None
    threads: int = Field(RUN_DEFAULTS["threads"], ge=1, le=256,
                         description="threads for model fitting (torch, BLAS)")
    gallery_k: int = Field(RUN_DEFAULTS["gallery_k"], ge=1, le=64)
    nested_selection: bool = Field(
        RUN_DEFAULTS["nested_selection"], description="also cross-validate the choice among the "
        "candidates made inside each outer training part (the honest figure of 'the best of "
        "these'; about 3x the candidates' CV)")
    engine: EngineName = Field(RUN_DEFAULTS["engine"], description="where features and CV fits "
                               "run: local or ray (RAY_ADDRESS, or a local Ray)")
    max_referral: float | None = Field(None, gt=0, lt=1, description="the referral rule refers "
                                       "at most this fraction (default 0.2 when neither target "
                                       "is set; lymphomil.referral)")
    target_accuracy: float | None = Field(None, gt=0.5, le=1, description="the referral rule "
                                          "refers the fewest patients whose auto-calls reach "
                                          "this balanced accuracy in the inner CV")

    @model_validator(mode="after")
    def _one_target(self) -> "RunConfig":
        if self.max_referral is not None and self.target_accuracy is not None:
            raise ValueError("max_referral and target_accuracy exclude each other: give one")
        return self

    @field_validator("candidates")
    @classmethod
    def _candidates(cls, value: list[str]) -> list[str]:
        return _model_names(value, "candidates")

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        return None if value is None else _model_names([value], "model")[0]

    @field_validator("features")
    @classmethod
    def _features(cls, value: str | None) -> str | None:
        try:
            return features_option(value, "features")
        except LymphomilError as exc:
            raise ValueError(f"{exc.problem} ({exc.fix})") from None

    @field_validator("columns")
    @classmethod
    def _columns(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        from lymphomil.data.plain import read_columns  # deferred: the data layer (numpy)

        if value is None:
            return None
        try:
            return read_columns(value)[0]
        except LymphomilError as exc:
            raise ValueError(f"{exc.problem} ({exc.fix})") from None

    @field_validator("data", "images", "cache_dir", mode="before")
    @classmethod
    def _paths(cls, value: Any, info: Any) -> Any:
        return expand_path(value, info.field_name) if isinstance(value, (str, Path)) else value

    @field_validator("reference_date")
    @classmethod
    def _reference(cls, value: date) -> date:
        if not MIN_YEAR <= value.year <= MAX_YEAR:
            raise ValueError(f"{value.isoformat()} is implausible (years {MIN_YEAR} to {MAX_YEAR})")
        return value


def _model_names(names: list[str], field_name: str) -> list[str]:
    try:
        return check_model_names(names, field_name)
    except LymphomilError as exc:
        raise ValueError(f"{exc.problem} ({exc.fix})") from None


#: the fields holding paths: relative ones in a config file are relative to that file's folder
PATH_FIELDS = ("data", "images", "cache_dir")


def expand_path(value: str | Path, name: str) -> str:
    """``~`` and ``$VARS`` expanded (a config file is not read by a shell); an empty path or an
    unset variable refused: ``Path("")`` would silently be the working folder."""
    text = str(value) if isinstance(value, Path) else value
    if not text.strip():
        raise ValueError(f"{name} is empty (an empty path would mean the working folder); give "
                         "a folder path, or leave the key out for the default")
    expanded = os.path.expanduser(os.path.expandvars(text))
    if "$" in expanded:
        import re

        unset = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expanded)
        if unset:
            raise ValueError(f"{name} {text!r} names the environment variable ${unset[0]}, "
                             "which is not set; set it or write the path out")
    return expanded


def load_config(path: Path | None, overrides: dict[str, Any]) -> RunConfig:
    """File values, then non-None command-line ``overrides`` on top.

    A relative path in the file is read relative to the file's folder (a saved config.toml
    repeats its run from any working directory); one on the command line, to the working
    directory."""
    data: dict[str, Any] = {}
    if path is not None:
        import stat

        try:  # a named pipe or a device would block the read or never end
            mode = os.stat(path).st_mode
            if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
                raise LymphomilError("the config path is not a regular file (a named pipe or a "
                                     "device?)", file=path, fix="give the path of a TOML file")
            if os.stat(path).st_size > 1 << 20:
                raise LymphomilError("the config file is larger than 1 MiB (not a run config)",
                                     file=path, fix="give the path of a TOML file")
        except OSError:
            pass  # the read below names the problem
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LymphomilError("config file not found", file=path,
                                 fix="give the path of a TOML file "
                                     "(a run saves its config.toml)") from None
        except IsADirectoryError:
            raise LymphomilError("the config path is a folder, not a TOML file", file=path,
                                 fix="give the config.toml file inside it") from None
        except UnicodeDecodeError as exc:
            raise LymphomilError(f"the file is not UTF-8 text (byte {exc.start})", file=path,
                                 fix="save the config as UTF-8 TOML") from None
        except OSError as exc:
            raise LymphomilError(f"cannot read the config file ({exc.strerror or exc})",
                                 file=path, fix="check the path and its permissions") from None
        except tomllib.TOMLDecodeError as exc:
            raise LymphomilError(f"not valid TOML ({exc})", file=path,
                                 fix="correct the TOML syntax") from None
        except RecursionError:
            raise LymphomilError("not a run config: its arrays or tables are nested too deeply "
                                 "to read", file=path, fix="give the path of a run's TOML file "
                                                           "(flat keys)") from None
        base = Path(path).expanduser().absolute().parent
        for key in PATH_FIELDS:
            value = data.get(key)
            if isinstance(value, str) and value.strip():
                try:
                    value = expand_path(value, key)
                except ValueError as exc:
                    raise LymphomilError(str(exc), file=path, fix=f"correct {key} in the "
                                                                  "config file") from None
                data[key] = value if Path(value).is_absolute() else str(base / value)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return RunConfig(**data)
    except ValidationError as exc:
        problems = plain_problems(exc, RunConfig.model_fields)
        raise LymphomilError(f"invalid configuration: {problems}", file=path,
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
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    # a TOML basic string: JSON's escapes are TOML's (a newline or an escape in a path stays
    # text, never a broken file)
    return json.dumps(str(value), ensure_ascii=False)


def to_toml(config: RunConfig) -> str:
    """The resolved config as TOML (flat keys; ``None`` values are left out)."""
    lines = ["# lymphomil run configuration (resolved); "
             "repeat with: lymphomil run --config <this file>"]
    for key, value in config.model_dump().items():
        if value is not None:
            if isinstance(value, Path):  # absolute: the file repeats the run from anywhere
                value = Path(os.path.abspath(value.expanduser()))
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
