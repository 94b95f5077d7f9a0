"""The report in a real browser: headless Chromium draws it (skipped where Chromium is absent)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from .test_render import make_context

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "screenshot_report.py"


def load_script():
    spec = importlib.util.spec_from_file_location("screenshot_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def has_chromium() -> bool:
    return any(shutil.which(n) for n in ("chromium", "chromium-browser")) or \
        Path("/usr/bin/chromium").is_file()


@pytest.mark.skipif(not has_chromium(),
                    reason="Chromium is not installed (apt-get install chromium)")
def test_chromium_screenshot_of_the_report(tmp_path: Path) -> None:
    from lymphomil.report.render import render_report

    report = render_report(make_context(tmp_path, n_patients=4, n_images=12), tmp_path / "r.html")
    out = tmp_path / "shot.png"
    done = subprocess.run([sys.executable, str(SCRIPT), str(report), str(out), "--width", "1024",
                           "--height", "900"], capture_output=True, text=True, timeout=180,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 10_000
    with Image.open(out) as image:
        assert image.size == (1024, 900)
        colours = image.convert("RGB").resize((64, 56)).getcolors(64 * 56)
        assert colours is None or len(colours) > 20, "the screenshot is blank"


def test_script_says_clearly_when_chromium_is_absent(tmp_path: Path, capsys,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_script()
    monkeypatch.setattr(module, "find_chromium", lambda: None)
    report = tmp_path / "r.html"
    report.write_text("<!DOCTYPE html><title>x</title>")
    assert module.main([str(report), str(tmp_path / "s.png")]) == 2
    assert "Chromium was not found" in capsys.readouterr().err


LAYOUT = ["h1", "#pindex", "#calibration img", "#risk-coverage img", "#review-table",
          "#ptable th[data-sort=width]", "#ptable th[data-sort=borderline]", "#ptable",
          "#ptable .tag.borderline", ".sidebar", "section.patient"]


@pytest.mark.skipif(not has_chromium(),
                    reason="Chromium is not installed (apt-get install chromium)")
def test_phone_and_desktop_layout(tmp_path: Path) -> None:
    """At 420 px (a phone) the title comes before any patient list, the figures and the
    spread/borderline columns fit the screen; at 1280 px the patient index sits beside the page."""
    from lymphomil.report.render import render_report

    from .test_decisions import curves, with_rule

    ctx = with_rule(make_context(tmp_path, n_patients=42, n_images=6), referred=(0, 4, 9))
    ctx.risk_coverage = curves()
    ctx.calls[1].interval = (0.2, 0.88)  # a borderline auto-call: its tag must be in view too
    report = render_report(ctx, tmp_path / "r.html", gallery_k=3)
    module = load_script()
    phone = module.measure_layout(report, LAYOUT, width=420)
    assert phone["width"] == 420
    shown = phone["elements"]
    assert shown["h1"]["top"] < 400, "the title is pushed down (by the patient index?)"
    assert not shown["#pindex"]["shown"] or shown["#pindex"]["top"] > shown["h1"]["top"]
    for selector in LAYOUT[2:9] + ["section.patient"]:
        assert shown[selector]["shown"], selector
        assert shown[selector]["right"] <= 420 + 0.5, f"{selector} runs off a phone screen"
    desktop = module.measure_layout(report, LAYOUT, width=1280)["elements"]
    assert desktop["#pindex"]["shown"] and desktop[".sidebar"]["right"] <= 300
    assert desktop["h1"]["left"] >= desktop[".sidebar"]["right"]
