"""Start-up per command: a command imports what it runs (issue 24).

Measured as modules imported and as CPU seconds of a child process, relative to `--help`'s:
a ratio, not a time, so a loaded CI machine does not fail it (`benchmarks/startup.py` prints
the figures on the shared cohort).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from lymphomil.features.spec import FeatureSpec

HEAVY = ("numpy", "pydantic", "sklearn", "scipy", "torch", "lymphomil.flows.patients")
#: CPU seconds of a warm `features` (cached: reads the cohort, hashes its 480 images) per CPU
#: second of `--help`: 2 here (0.36 s / 0.18 s); importing every model family, as it did
#: before, adds ~3 s
FEATURES_VS_HELP = 6.0


def _run(code: str, env: dict | None = None) -> tuple[list[str], float]:
    """(heavy modules the child imported, the child's CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\nprint(json.dumps("
                          f"[m for m in {HEAVY!r} if m in sys.modules]))"],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(out.stdout.strip().splitlines()[-1]), cpu


def _cli(*args: str) -> str:
    return ("import sys\nfrom lymphomil.cli import app\nsys.argv = ['lymphomil', "
            + ", ".join(repr(a) for a in args) + "]\ntry:\n    app()\nexcept SystemExit:\n    pass")


def test_help_imports_no_library_of_the_work() -> None:
    heavy, _ = _run(_cli("--help"))
    assert heavy == []


def test_a_cached_features_call_imports_no_model_family(synthetic_root: Path,
                                                        synthetic_features: Path) -> None:
    spec = FeatureSpec.parse("resnet50-thin@112")
    args = ("features", str(synthetic_root), "--backbone", spec.backbone, "--crop",
            str(spec.crop), "--precision", "fp32", "--cache-dir", str(synthetic_features))
    heavy, features_cpu = _run(_cli(*args))
    assert not {"torch", "sklearn", "scipy", "lymphomil.flows.patients"} & set(heavy), heavy
    help_cpu = min(_run(_cli("--help"))[1] for _ in range(2))
    assert features_cpu <= FEATURES_VS_HELP * help_cpu, (features_cpu, help_cpu)


def test_a_saved_fusion_model_loads_without_torch() -> None:
    heavy, _ = _run("from lymphomil.models.base import create_model\n"
                    "create_model('fusion-mean')")
    assert "torch" not in heavy and "lymphomil.flows.patients" not in heavy
