"""A rerun reuses the exploration and the fitted models whose inputs did not change; `cache
clear` removes what every cache wrote, and nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lymphomil.data.cohort import labelled_patients, load_cohort
from lymphomil.flows.caches import cached_explore, cached_fit
from lymphomil.flows.patients import configure_model


def test_explore_is_reused_and_recomputed_when_damaged(synthetic_root: Path,
                                                       tmp_path: Path) -> None:
    cohort = load_cohort(synthetic_root)
    cache = tmp_path / "cache"
    first = cached_explore(cohort, tmp_path / "a", cache)
    (entry,) = (cache / "run").glob("explore-*")
    second = cached_explore(cohort, tmp_path / "b", cache)
    assert {k: v for k, v in second.items() if k != "files"} == \
        {k: v for k, v in first.items() if k != "files"}
    assert sorted(second["files"]) == sorted(first["files"])
    for name, path in first["files"].items():
        assert second["files"][name].read_bytes() == path.read_bytes(), name
    (entry / "files" / "hist_age.png").write_bytes(b"damaged")
    third = cached_explore(cohort, tmp_path / "c", cache)  # checksum fails: drawn again
    assert (third["files"]["hist_age.png"].read_bytes()
            == first["files"]["hist_age.png"].read_bytes())


def test_a_fit_is_reused_with_the_same_predictions(synthetic_root: Path, tmp_path: Path) -> None:
    labelled = labelled_patients(load_cohort(synthetic_root))
    cache = tmp_path / "cache"
    calls = []

    def fit(model):
        calls.append(1)
        return model.fit(labelled.patients, labelled.y)

    model = configure_model("logreg")
    fitted, folder = cached_fit(model, labelled.patients, labelled.y, tag="t", cache_dir=cache,
                                fit=lambda: fit(model))
    assert folder is None and len(calls) == 1
    again = configure_model("logreg")
    loaded, folder = cached_fit(again, labelled.patients, labelled.y, tag="t", cache_dir=cache,
                                fit=lambda: fit(again))
    assert folder is not None and len(calls) == 1  # not fitted again
    np.testing.assert_array_equal(loaded.predict_proba(labelled.patients),
                                  fitted.predict_proba(labelled.patients))
    other = configure_model("logreg", random_state=1)  # another parameter: another key
    cached_fit(other, labelled.patients, labelled.y, tag="t", cache_dir=cache,
               fit=lambda: fit(other))
    assert len(calls) == 2


def test_clear_all_removes_what_each_cache_wrote_and_nothing_else(synthetic_root: Path,
                                                                   tmp_path: Path) -> None:
    from lymphomil.flows.caches import clear_all

    cache = tmp_path / "cache"
    cached_explore(load_cohort(synthetic_root), tmp_path / "a", cache)
    (cache / "run" / "notes.txt").write_text("mine")
    figures, memo = cache / "figures", cache / "validated"
    for folder, ours in ((figures, "0" * 32 + ".png"), (memo, "images-v2.json")):
        folder.mkdir()
        (folder / ours).write_bytes(b"written by lymphomil")
        (folder / "mine.txt").write_bytes(b"not")
    cleared = clear_all(cache)
    assert cleared.counts == {"CV results": 0, "run results": 1, "image memo": 1, "figures": 1}
    assert cleared.bytes > 0 and cleared.root == cache
    assert [p.name for p in (cache / "run").iterdir()] == ["notes.txt"]
    assert [p.name for p in figures.iterdir()] == [p.name for p in memo.iterdir()] == ["mine.txt"]
