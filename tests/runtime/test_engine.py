"""The engine switch without Ray: the local engine, and clear messages when Ray is absent."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lymphomil.cli import app
from lymphomil.runtime.engine import LocalEngine
from lymphomil.runtime.engines import get_engine
from lymphomil.runtime.errors import LymphomilError

runner = CliRunner()


def test_local_engine_runs_fits_in_order_and_reports_each() -> None:
    seen = []
    out = LocalEngine().run_fits(lambda shared, task: shared * task, [1, 2, 3],
                                 on_done=lambda i, r: seen.append((i, r)), shared=10)
    assert out == [10, 20, 30] and seen == [(0, 10), (1, 20), (2, 30)]


def test_unknown_engine_is_a_clear_error() -> None:
    with pytest.raises(LymphomilError, match="unknown engine 'spark'"):
        get_engine("spark")


@pytest.mark.parametrize("command", [
    ["features", "{data}", "--engine", "ray"],
    ["cv", "{data}", "-m", "logreg", "--engine", "ray"],
    ["run", "{data}", "--out", "{out}", "--engine", "ray"],
])
def test_engine_ray_without_the_extra_says_how_to_install_it(
        command: list[str], synthetic_root: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    args = [a.format(data=synthetic_root, out=tmp_path / "run") for a in command]
    args += ["--cache-dir", str(tmp_path / "cache")]
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert 'pip install "lymphomil[ray]"' in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_features_says_workers_do_not_apply_under_ray(synthetic_root: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    result = runner.invoke(app, ["features", str(synthetic_root), "--engine", "ray",
                                 "--workers", "2", "--cache-dir", str(tmp_path / "cache")])
    assert "--workers is ignored under --engine ray" in result.output
    plain = runner.invoke(app, ["features", str(synthetic_root), "--engine", "ray",
                                "--cache-dir", str(tmp_path / "cache")])
    assert "--workers is ignored" not in plain.output


def test_config_rejects_an_unknown_engine(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text('engine = "dask"\n')
    result = runner.invoke(app, ["run", "--config", str(config), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "engine must be one of local, ray" in result.output


def test_core_never_imports_ray(synthetic_root: Path, tmp_path: Path) -> None:
    """A local run of every stage leaves Ray unimported (it is an optional extra)."""
    import subprocess

    code = ("import sys; from typer.testing import CliRunner; from lymphomil.cli import app; "
            f"r = CliRunner().invoke(app, ['cv', {str(synthetic_root)!r}, '-m', 'tree', "
            f"'--folds', '2', '--repeats', '1', '--cache-dir', {str(tmp_path)!r}]); "
            "assert r.exit_code == 0, r.output; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_cross_validate_many_equals_one_model_at_a_time(synthetic_root: Path) -> None:
    from lymphomil.data.cohort import labelled_patients, load_cohort
    from lymphomil.evaluation.crossval import cross_validate, cross_validate_many
    from lymphomil.flows.patients import configure_model

    labelled = labelled_patients(load_cohort(synthetic_root))
    # two attribute models with a grid search (logreg-compact: the small C grid, fast)
    models = [(name, configure_model(name)) for name in ("tree", "logreg-compact")]
    together = cross_validate_many(models, labelled.patients, labelled.y, folds=2, repeats=2)
    for (name, model), result in zip(models, together):
        alone = cross_validate(model, labelled.patients, labelled.y, folds=2, repeats=2,
                               model_name=name)
        np.testing.assert_array_equal(alone.proba, result.proba)
        assert result.model_name == name and not np.isnan(result.proba).any()
