"""report.html with a referral rule: patients to review first, the risk–coverage figure, and the
fixes a new user asked for (one cell-ranking sentence, no constant column, whole-image links)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from lymphomil.report import plots
from lymphomil.report.render import ReportContext, cell_ranking, render_report

from .test_render import decode_data_uri, make_context, parse

REASON = "P(malignant) {:.2f} is inside the uncertain band 0.29–0.71"


def with_rule(ctx: ReportContext, referred: tuple[int, ...] = (0, 2)) -> ReportContext:
    """Decisions on every call: the ``referred`` ones are referred, with reasons."""
    for i, call in enumerate(ctx.calls):
        if i in referred:
            call.decision = "refer"
            call.reasons = (REASON.format(call.proba), f"cells unlike the training cells ({i})")
        else:
            call.decision = "malignant" if call.predicted else "reactive"
    return ctx


def full_card(**extra) -> dict:
    """A model card with what the template reads (the run writes every key)."""
    return {"model": {"name": "fusion-alpha", "class": "FusionModel", "family": "fusion",
                      "description": ""},
            "inputs": {"attributes": ["age"], "image_features": [
                {"backbone": "resnet50-thin", "crop": "112 px", "kind": "pooled",
                 "precision": "fp32"}], "cell_scores": "logit share (unitless)"},
            "training": {"n_patients": 40, "n_malignant": 27, "n_reactive": 13,
                         "reference_date": "2024-01-01", "seed": 0},
            "threshold": {"value": 0.5, "why": "fixed"}, **extra}


def section(text: str, start: str, end: str) -> str:
    return text[text.index(f'<section id="{start}"'):text.index(f'<section id="{end}"')]


def curves() -> dict:
    coverage = [1.0, 0.95, 0.9, 0.85, 0.8, 0.7]
    return {"fusion-alpha": {"coverage": coverage,
                             "balanced_accuracy": [0.92, 0.937, 0.945, 0.955, 0.965, 0.97],
                             "ci_low": [0.88, 0.9, 0.91, 0.92, 0.93, 0.93],
                             "ci_high": [0.95, 0.96, 0.97, 0.98, 0.99, 0.99],
                             "rule": {"coverage": 0.82, "balanced_accuracy": 0.968}},
            "logreg": {"coverage": coverage,
                       "balanced_accuracy": [0.85, 0.86, 0.87, 0.88, 0.9, 0.91]}}


def test_referred_patients_come_first_with_their_reasons(tmp_path: Path) -> None:
    ctx = with_rule(make_context(tmp_path, n_patients=6, n_images=6))
    page, text = parse(render_report(ctx, tmp_path / "r.html", gallery_k=2))
    referred = [c for c in ctx.calls if c.decision == "refer"]
    auto = [c for c in ctx.calls if c.decision != "refer"]
    # the page opens with the patients to review, then the auto-calls, then the evidence
    order = [text.index(f'<section id="{s}"') for s in ("review", "patients", "summary")]
    assert order == sorted(order)
    assert page.ids.get("review") == "section" and "#review" in page.links
    review = section(text, "review", "patients")
    table = review[review.index('id="review-table"'):review.index("</table>")]
    assert [c.id for c in referred] == [c.id for c in ctx.calls
                                        if f'href="#patient-{c.id}"' in table]
    for call in referred:
        assert f'id="patient-{call.id}"' in review
        for reason in call.reasons:
            assert reason in table and reason in review.split(f'id="patient-{call.id}"')[1]
    auto_part = section(text, "patients", "summary")
    for call in auto:
        assert f'id="patient-{call.id}"' in auto_part and f'id="patient-{call.id}"' not in review
    assert all(f'id="patient-{c.id}"' not in auto_part for c in referred)
    assert f"<strong>{len(referred)}</strong> of {len(ctx.calls)} patients" in review
    # every patient is still reachable from the index, each card exactly once
    for call in ctx.calls:
        assert page.ids.get(f"patient-{call.id}") == "section"
        assert f"#patient-{call.id}" in page.links


def test_without_a_rule_the_page_is_as_before(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, n_patients=3, n_images=4)
    page, text = parse(render_report(ctx, tmp_path / "r.html", gallery_k=2))
    assert "review" not in page.ids and "Patients to review" not in text
    assert '<h2 id="patients-h">Patients</h2>' in text
    assert text.index('id="summary"') < text.index('id="patients"')
    assert 'class="tag refer"' not in text


def test_a_rule_that_refers_nobody_says_so(tmp_path: Path) -> None:
    ctx = with_rule(make_context(tmp_path, n_patients=3, n_images=4), referred=())
    page, text = parse(render_report(ctx, tmp_path / "r.html", gallery_k=2))
    assert "referred none of the 3 patients" in text
    assert page.ids.get("score-legend") == "p"  # the legend still appears, once


def test_risk_coverage_figure_renders() -> None:
    png = plots.risk_coverage_figure(curves(), "fusion-alpha")
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size[0] > 400
    assert png == plots.risk_coverage_figure(curves(), "fusion-alpha")  # same bytes twice
    assert plots.risk_coverage_figure({}) is None
    assert plots.risk_coverage_figure({"m": {"coverage": [], "balanced_accuracy": []}}) is None
    bare = {"m": {"coverage": [1.0, 0.8], "balanced_accuracy": [0.9, 0.95]}}  # no CI, no rule
    assert Image.open(io.BytesIO(plots.risk_coverage_figure(bare))).format == "PNG"


def test_risk_coverage_is_in_the_cv_section(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, n_patients=1, n_images=2)
    _, text = parse(render_report(ctx, tmp_path / "plain.html", gallery_k=1))
    assert 'id="risk-coverage"' not in text
    ctx.risk_coverage = curves()
    page, text = parse(render_report(ctx, tmp_path / "r.html", gallery_k=1))
    cv = section(text, "cross-validation", "roc")
    assert 'id="risk-coverage"' in cv and "82 % auto-called at balanced accuracy 0.968" in cv
    figure = cv[cv.index('id="risk-coverage"'):]
    src = figure[figure.index('src="') + 5:]
    assert decode_data_uri(src[:src.index('"')]).format == "PNG"


def test_constant_columns_are_dropped_and_stated_once(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, n_patients=4, n_images=4)
    for call in ctx.calls:
        call.true_label, call.gender = -1, "F"
    _, text = parse(render_report(ctx, tmp_path / "r.html", gallery_k=2))
    table = text[text.index('id="ptable"'):]
    table = table[:table.index("</table>")]
    header = table[:table.index("</thead>")]
    assert "<th>Label</th>" not in header and "Gender" not in header and "to predict" not in table
    assert "Age" in header and "Images" not in header  # ages differ; 4 images each
    assert "Label: to predict; Gender: F; Images: 4" in text
    cells_per_row = {row.count("<td") for row in table.split("<tr data-index")[1:]}
    assert cells_per_row == {len(re.findall(r"<th[ >]", header))}  # as many cells as headers
    ctx.calls[3].true_label = 1  # a labelled patient: the column says something again
    _, text = parse(render_report(ctx, tmp_path / "r2.html", gallery_k=2))
    assert "<th>Label</th>" in text and "to predict" in text


def test_each_thumbnail_links_to_the_whole_image(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, n_patients=2, n_images=4)
    out = tmp_path / "run" / "report.html"
    page, text = parse(render_report(ctx, out, gallery_k=2))
    links = [link for link in page.links if link.endswith(".jpg")]
    assert len(links) == 2 + 2 + 2  # 2 most + 2 least suspicious; 2 cells of the unscored one
    images = {p.resolve() for c in ctx.calls for p in c.image_paths}
    for link in links:
        whole = (out.parent / unquote(link)).resolve()
        assert whole in images and whole.is_file()
        with Image.open(whole) as image:
            assert image.size == (224, 224)  # the whole image, not the 112 px crop
    assert "click one to open the whole image" in text


def test_one_sentence_says_which_model_ranks_the_cells(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, n_patients=2, n_images=4)
    ctx.model_card = full_card()
    ctx.cell_scorer, ctx.score_units = "cell-topk", "cell log-odds of malignancy (cell classifier)"
    sentence = cell_ranking(ctx)
    assert sentence.startswith("Cells are ranked by cell-topk")
    assert "fusion-alpha makes the calls but does not rank single cells" in sentence
    _, text = parse(render_report(ctx, tmp_path / "r.html", gallery_k=2))
    assert text.count(sentence) == 3  # summary, model card, gallery legend
    for place in (section(text, "summary", "model-card"), section(text, "model-card", "data"),
                  section(text, "patients", "errors")):
        assert sentence in place
    assert "logit share" not in text and "as the model" not in text
    ctx.cell_scorer = None  # the chosen model ranks its own cells
    assert cell_ranking(ctx).startswith("Cells are ranked by fusion-alpha")
    assert "does not rank" not in cell_ranking(ctx)


def test_borderline_mark_is_explained_in_visible_text(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, n_patients=2, n_images=2)
    ctx.calls[0].interval = (0.4, 0.6)
    _, text = parse(render_report(ctx, tmp_path / "r.html", gallery_k=1))
    assert '<p class="pindex-note">± borderline: the spread' in text


@pytest.mark.parametrize("referral, shown, hidden", [
    ({"max_referral": 0.2, "coverage": 0.83, "auto_call_balanced_accuracy": 0.971},
     ["refer at most 20 % of patients", "coverage (patients auto-called) 83 %",
      "auto-call balanced accuracy 0.971"], []),
    ({"coverage": {"mean": 0.81, "std": 0.02, "ci_low": 0.77, "ci_high": 0.85},
      "auto_call_balanced_accuracy": {"mean": 0.97, "std": 0.01}},
     ["coverage (patients auto-called) 81 % ± 2 [77, 85]", "balanced accuracy 0.970 ± 0.010"],
     ["refer at most"]),
    (None, [], ["Referral rule"]),
])
def test_model_card_states_the_rules_measured_coverage(tmp_path: Path, referral, shown,
                                                       hidden) -> None:
    ctx = make_context(tmp_path, n_patients=1, n_images=2)
    ctx.model_card = full_card(referral=referral)
    _, text = parse(render_report(ctx, tmp_path / "r.html", gallery_k=1))
    card = section(text, "model-card", "data")
    for words in shown:
        assert words in card
    for words in hidden:
        assert words not in card


def test_patient_calls_carry_the_decisions_of_the_predictions() -> None:
    from lymphomil.report.pages import patient_calls

    patients = [SimpleNamespace(id=f"P{i}", label=-1, age=60.0, gender="F", lymph_count=9.0,
                                n_images=2, image_paths=[Path("a.jpg"), Path("b.jpg")])
                for i in range(2)]
    model = SimpleNamespace(instance_scores=lambda ps: [np.zeros(2) for _ in ps])
    pred = SimpleNamespace(ids=["P0", "P1"], proba=np.array([0.55, 0.9]),
                           labels=np.array([1, 1]), patients=patients, model=model)
    calls = patient_calls(pred)
    assert [c.decision for c in calls] == [None, None] and calls[0].reasons == ()
    from lymphomil.referral import Decision

    pred.decisions = [Decision("refer", ("P 0.55 in the band",)), Decision("malignant")]
    calls = patient_calls(pred)
    assert [c.decision for c in calls] == ["refer", "malignant"]
    assert calls[0].reasons == ("P 0.55 in the band",) and calls[1].reasons == ()


def test_no_ranking_sentence_when_no_cell_was_scored(tmp_path: Path) -> None:
    """An attribute-only model's galleries show cells in file order: nothing ranks them."""
    ctx = make_context(tmp_path, n_patients=2, n_images=4)
    for call in ctx.calls:
        call.instance_scores = None
    page, text = parse(render_report(ctx, tmp_path / "r.html", gallery_k=2))
    assert "Cells are ranked by" not in text and "score-legend" not in page.ids
    assert "no cell drove the call" in text
