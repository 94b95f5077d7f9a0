"""Figures kept by content: a warm render reads them back instead of drawing them again."""

from __future__ import annotations

from pathlib import Path

import pytest

from lymphomil.report import plots
from lymphomil.report.render import render_report

from .test_decisions import curves
from .test_render import fake_cv, make_context


def test_unchanged_figures_are_read_back_not_drawn(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = make_context(tmp_path, n_patients=2, n_images=4)
    ctx.risk_coverage = curves()
    cache = tmp_path / "figures"
    cold = render_report(ctx, tmp_path / "cold.html", gallery_k=2, figure_cache=cache)
    drawn = sorted(cache.glob("*.png"))
    assert len(drawn) == 6  # roc, confusion, hard subset, scatter, calibration, risk-coverage

    def no_drawing(*args, **kwargs):
        raise AssertionError("a figure was drawn again")

    with monkeypatch.context() as patch:
        patch.setattr(plots, "_new_figure", no_drawing)
        warm = render_report(ctx, tmp_path / "warm.html", gallery_k=2, figure_cache=cache)
    assert warm.read_bytes() == cold.read_bytes()
    # a changed input draws that figure again, and only that one
    ctx.cv_results[0] = fake_cv(ctx.cv_results[0].model_name, 0.3)
    ctx.risk_coverage = None
    render_report(ctx, tmp_path / "changed.html", gallery_k=2, figure_cache=cache)
    assert len(set(cache.glob("*.png")) - set(drawn)) == 3  # roc, confusion, hard subset


def test_a_damaged_cached_figure_is_drawn_again(tmp_path: Path) -> None:
    data = curves()
    with plots.figure_cache(tmp_path):
        first = plots.risk_coverage_figure(data, "fusion-alpha")
    (path,) = tmp_path.glob("*.png")
    path.write_bytes(first[: len(first) // 2])  # torn
    with plots.figure_cache(tmp_path):
        assert plots.risk_coverage_figure(data, "fusion-alpha") == first
    assert path.read_bytes() == first
    assert plots.risk_coverage_figure(data, "fusion-alpha") == first  # no cache: drawn


def test_content_key_follows_the_content() -> None:
    result = fake_cv("logreg", 1.0)
    key = plots.figure_key(plots._roc, [[result], "logreg", {}], {})
    assert key == plots.figure_key(plots._roc, [[fake_cv("logreg", 1.0)], "logreg", {}], {})
    result.proba[0, 0] += 1e-9
    assert key != plots.figure_key(plots._roc, [[result], "logreg", {}], {})
    assert key != plots.figure_key(plots._confusions, [[fake_cv("logreg", 1.0)], "logreg", {}],
                                   {})
    with pytest.raises(TypeError):
        plots.figure_key(plots._roc, [object()], {})
