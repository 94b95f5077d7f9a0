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


def test_fit_referral_and_decide_are_what_train_and_predict_save_and_decide(
        synthetic_root: Path, synthetic_features: Path, tmp_path: Path) -> None:
    """The rule that ``lymphomil.fit_referral`` fits is the one `train` saves (its budget net of
    the patients the OOD checks flag when held out), and ``lymphomil.decide`` refers whom
    `predict` refers, for the same reasons (an OOD check's among them), for every patient."""
    import shutil

    from lymphomil.referral import load_rule

    cache = seed_features(synthetic_features, tmp_path / "cache")
    data = tmp_path / "data"  # a copy where one new patient's count is far above the cohort's
    shutil.copytree(synthetic_root, data)
    shifted = lymphomil.load_cohort(data).unlabelled[0]
    for table in data.rglob("*.csv"):  # the count is the last column of every annotation CSV
        lines = [",".join(line.split(",")[:-1] + ["900"]) if f",{shifted.id}," in f",{line},"
                 else line for line in table.read_text().splitlines()]
        table.write_text("\n".join(lines) + "\n")
    cohort = lymphomil.load_cohort(data)
    folder = tmp_path / "model"
    lymphomil.train("image-logreg-thin", cohort, folder, cache_dir=cache, max_referral=0.3)
    pred = lymphomil.predict(folder, data, patients="all", cache_dir=cache)

    model = lymphomil.load_model(folder)
    train = lymphomil.with_features(cohort.labelled, model, cache_dir=cache)
    referral = lymphomil.fit_referral("image-logreg-thin", train, max_referral=0.3,
                                      cache_dir=cache)
    saved = load_rule(folder)
    assert referral.rule == saved and referral.threshold == saved.threshold
    assert saved.inner_referred_other > 0  # the OOD checks took part of the budget
    by_id = {p.id: p for p in cohort.patients}
    patients = lymphomil.with_features([by_id[i] for i in pred.ids], model, cache_dir=cache)
    decided = lymphomil.decide(model, referral, patients)
    assert [(d.decision, d.reasons) for d in decided] == \
        [(d.decision, d.reasons) for d in pred.decisions]
    reasons = dict(zip(pred.ids, decided))[shifted.id].reasons
    assert any("lymphocyte count 900" in r and "outside the training range" in r
               for r in reasons), reasons
