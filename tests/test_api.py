"""The public Python API: ``import lymphomil`` is cheap, and the README's example runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import lymphomil
from tests.conftest import seed_features

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_import_is_cheap_and_exports_the_api() -> None:
    code = ("import sys, lymphomil; "
            "print(','.join(m for m in ('numpy', 'sklearn', 'torch', 'lymphomil.models') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    for name in ("load_cohort", "create_model", "load_model", "cross_validate", "run",
                 "with_features", "labels_of", "list_models"):
        assert callable(getattr(lymphomil, name)), name
    assert set(lymphomil.__all__) >= {"load_cohort", "create_model", "load_model",
                                      "cross_validate", "run"}


def test_the_readme_example_runs(synthetic_root: Path, synthetic_features: Path, tmp_path: Path,
                                 monkeypatch) -> None:
    """The example as written, on the synthetic cohort instead of the shared data (its features
    already in the cache: extraction is tested elsewhere)."""
    code = readme_example()
    assert 'data = "../shared/data/dlmi-lymphocytosis"' in code
    code = code.replace('"../shared/data/dlmi-lymphocytosis"', repr(str(synthetic_root)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LYMPHOMIL_CACHE_DIR", str(seed_features(synthetic_features,
                                                                tmp_path / "cache")))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert (tmp_path / "my-run" / "report.html").is_file()
    assert result.chosen in ("logreg", "fusion-mean")
    assert (tmp_path / "my-model" / "model.json").is_file()
    assert len(namespace["p_malignant"]) == len(namespace["cohort"].unlabelled)
    assert 0 <= namespace["cv"].summary()["balanced_accuracy"]["mean"] <= 1


def test_train_and_predict_are_the_commands_flows(synthetic_root: Path, tmp_path: Path) -> None:
    """``lymphomil.train`` writes the folder `lymphomil train` writes (its referral rule and
    model card included), and ``lymphomil.predict`` gives the probabilities `lymphomil predict`
    writes: one flow each (lymphomil.flows), whichever front end calls it."""
    import csv

    from typer.testing import CliRunner

    from lymphomil.cli import app

    cohort = lymphomil.load_cohort(synthetic_root)
    model = lymphomil.train("logreg", cohort, tmp_path / "py-model", cache_dir=tmp_path / "c")
    assert model.predict_proba(cohort.labelled).shape == (len(cohort.labelled), 2)
    cli = CliRunner().invoke(app, ["train", str(synthetic_root), "-m", "logreg", "--out",
                                   str(tmp_path / "cli-model"), "--cache-dir",
                                   str(tmp_path / "c")])
    assert cli.exit_code == 0, cli.output
    for name in ("model.json", "referral.json", "model_card.json"):
        assert (tmp_path / "py-model" / name).read_bytes() == \
            (tmp_path / "cli-model" / name).read_bytes(), name
    pred = lymphomil.predict(tmp_path / "py-model", synthetic_root, cache_dir=tmp_path / "c")
    out = tmp_path / "pred.csv"
    cli = CliRunner().invoke(app, ["predict", str(tmp_path / "cli-model"), str(synthetic_root),
                                   "--out", str(out), "--cache-dir", str(tmp_path / "c")])
    assert cli.exit_code == 0, cli.output
    rows = list(csv.DictReader(out.open()))
    assert [r["ID"] for r in rows] == pred.ids
    assert [r["PROBA"] for r in rows] == [f"{p:.6f}" for p in pred.proba]
