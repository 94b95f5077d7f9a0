"""`--engine local` against `--engine ray` on this machine, at growing cohort sizes (issue 9).

For synthetic cohorts of 100, 400 and 1,600 patients (``--sizes``), in one run:

* ``lymphomil features COHORT --engine E`` into an empty cache (cold): wall time, images/s and
  the driver's peak RSS (the CLI process's own ``ru_maxrss`` from ``os.wait4``: Ray's raylet and
  workers are other processes, the driver is what must stay flat);
* ``lymphomil cv COHORT -m <attribute models> -m image-logreg --folds 5 --repeats 5 --engine E``
  on the cohorts in ``--cv-sizes``, reading the features the step above cached;
* both engines' outputs compared: feature files and out-of-fold probabilities must be
  bit-identical, or the benchmark says so.

Each command is a fresh process, so Ray's start-up (a local Ray with this machine's cores) is
inside the ray figures. The cohorts are generated once into ``--work`` and reused.

Then ``--project`` reads those measurements back and projects 10,000 patients onto 1, 4 and 16
nodes (a projection, not a measurement: see its printed assumptions).

Example:
    nice -n -5 .venv/bin/python benchmarks/scale.py --out docs/benchmarks/scale.txt
    .venv/bin/python benchmarks/scale.py --project --out docs/benchmarks/scale-projection.txt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ATTRIBUTE_MODELS = ["logreg", "svm", "tree", "forest", "mlp"]
IMAGE_MODEL = "image-logreg"


def lymphomil_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("lymphomil")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "lymphomil.cli"]


def measure(args: list[str]) -> dict:
    """Wall time and the process's own peak RSS (not its children's)."""
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", COLUMNS="120")
    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise SystemExit(f"command failed ({rc}): {' '.join(args)}\n"
                         f"{out.decode(errors='replace')[-3000:]}")
    return {"wall_s": wall, "driver_peak_rss_mib": usage.ru_maxrss / 1024}


def cohort(work: Path, patients: int) -> Path:
    from lymphomil.data.synth import write_synthetic_cohort

    folder = work / f"synth-{patients}"
    if not (folder / "clinical_annotation.csv").is_file():
        print(f"generating a {patients}-patient synthetic cohort …", flush=True)
        write_synthetic_cohort(folder, n_patients=patients, seed=0)
    return folder


def n_images(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*set/*/*.jpg"))


def feature_digest(cache: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((cache / "features").rglob("*.safetensors")):
        digest.update(path.name.encode() + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def oof_digest(out: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(out.glob("oof_*.csv")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def compare(digests: dict[str, str], what: str, size: int) -> str:
    """The line that says whether every engine wrote the same bytes."""
    if len(set(digests.values())) > 1:
        return f"  !! {what} DIFFER between engines at {size} patients"
    return f"  {what} bit-identical between {' and '.join(digests)}"


def digest_rate(folder: Path) -> float:
    """Images/s of the driver's serial step (reading + hashing every image), page cache warm."""
    code = ("import sys, time; from pathlib import Path; "
            "from lymphomil.features.cache import image_digests; "
            "paths = sorted(Path(sys.argv[1]).glob('*set/*/*.jpg')); image_digests(paths[:64]); "
            "t = time.perf_counter(); image_digests(paths); "
            "print(len(paths) / (time.perf_counter() - t))")
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip())


def project(work: Path, patients: int = 10_000, images_per_patient: int = 100,
            nodes: tuple[int, ...] = (1, 4, 16), labelled_fraction: float = 0.75) -> list[str]:
    """10,000 patients on 1/4/16 nodes like this one, from the measured rates (a projection)."""
    import math

    rows = json.loads((work / "scale.json").read_text())
    feats = {r["patients"]: r for r in rows if r["step"] == "features" and r["engine"] == "ray"}
    largest = max(feats)
    cores = os.cpu_count() or 1
    per_core = feats[largest]["images_per_s"] / cores  # includes Ray's start-up and the driver
    hashing = digest_rate(work / f"synth-{largest}")
    images = patients * images_per_patient
    out = [f"# projection (not a measurement) of {patients:,} patients x {images_per_patient} "
           f"images = {images:,} images, nodes like this one ({cores} cores each)",
           f"# features: measured ray rate at {largest} patients = "
           f"{feats[largest]['images_per_s']:.0f} img/s on {cores} cores = {per_core:.0f} img/s "
           f"per core, assumed to scale linearly with cores;",
           f"#   plus the driver's serial read+hash of every image at the measured {hashing:,.0f} "
           "img/s (shared filesystem assumed as fast as this local disk)"]
    cv_sizes = sorted({r["patients"] for r in rows if r["step"] == "cv" and r["engine"] == "local"})
    model_seconds: dict[str, list[tuple[float, float]]] = {}
    for size in cv_sizes[-2:]:
        metrics = json.loads((work / f"cv-{size}-local" / "metrics.json").read_text())
        for name, entry in metrics.items():
            model_seconds.setdefault(name, []).append(
                (entry["n_patients"], entry["summary"]["fit_seconds"]["total"]))
    target = patients * labelled_fraction
    projected: dict[str, float] = {}
    for name, points in model_seconds.items():
        if len(points) < 2:
            continue
        (n1, t1), (n2, t2) = points
        measured = math.log(t2 / t1) / math.log(n2 / n1)
        exponent = max(1.0, measured)  # below 1 the fixed costs dominate; do not trust it far out
        projected[name] = t2 * (target / n2) ** exponent
        out.append(f"# cv {name}: 25 fits took {t1:.0f} s at {n1} labelled, {t2:.0f} s at {n2} "
                   f"-> exponent measured {measured:.2f}, used {exponent:.2f} -> "
                   f"{projected[name] / 3600:.1f} CPU-hours at {target:,.0f} labelled")
    fits = 25
    out.append(f"{'nodes':>5}  {'cores':>5}  {'features':>12}  {'5x5 cv (all models)':>20}")
    for n in nodes:
        feature_s = images / hashing + images / (per_core * cores * n)
        if projected:
            total = sum(projected.values())
            longest = max(projected.values()) / fits
            cv_s = max(total / (cores * n), longest)  # perfect packing, bounded by the longest fit
            cv_text = f"{cv_s / 3600:.1f} h"
        else:
            cv_text = "n/a"
        out.append(f"{n:>5}  {cores * n:>5}  {feature_s / 60:>10.0f} min  {cv_text:>20}")
    out.append("# cv wall = max(total CPU time / cores, the longest single fit): fits are "
               "independent tasks; the real figure is higher by the tail of uneven fits")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 400, 1600])
    parser.add_argument("--cv-sizes", type=int, nargs="*", default=[100, 400])
    parser.add_argument("--engines", nargs="+", default=["local", "ray"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/lymphomil-scale"))
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--project", action="store_true",
                        help="only project 10,000 patients from the measurements in --work")
    args = parser.parse_args()
    if args.project:
        text = "\n".join(project(args.work)) + "\n"
        print(text, end="")
        if args.out:
            args.out.write_text(text)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    cli = lymphomil_cmd()
    rows: list[dict] = []
    lines = [f"# benchmarks/scale.py — {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()}, "
             f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at start",
             f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}"]

    def report(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    for size in args.sizes:
        folder = cohort(args.work, size)
        images = n_images(folder)
        digests = {}
        for engine in args.engines:
            cache = args.work / f"cache-{size}-{engine}"
            shutil.rmtree(cache, ignore_errors=True)
            result = measure([*cli, "features", str(folder), "--cache-dir", str(cache),
                              "--engine", engine])
            digests[engine] = feature_digest(cache)
            row = {"step": "features", "patients": size, "images": images, "engine": engine,
                   **result, "images_per_s": images / result["wall_s"]}
            rows.append(row)
            report(f"features {size:>5} patients {images:>6} images  {engine:<5}  "
                   f"{result['wall_s']:7.1f} s  {row['images_per_s']:6.0f} img/s  "
                   f"driver peak RSS {result['driver_peak_rss_mib']:6.0f} MiB")
        report(compare(digests, "feature files", size))
        if size not in args.cv_sizes:
            continue
        oofs = {}
        for engine in args.engines:
            cache = args.work / f"cache-{size}-{engine}"
            out = args.work / f"cv-{size}-{engine}"
            shutil.rmtree(out, ignore_errors=True)
            models = [a for m in [*ATTRIBUTE_MODELS, IMAGE_MODEL] for a in ("-m", m)]
            result = measure([*cli, "cv", str(folder), *models, "--folds", str(args.folds),
                              "--repeats", str(args.repeats), "--cache-dir", str(cache),
                              "--engine", engine, "--out", str(out)])
            oofs[engine] = oof_digest(out)
            fits = (len(ATTRIBUTE_MODELS) + 1) * args.folds * args.repeats
            rows.append({"step": "cv", "patients": size, "engine": engine, "fits": fits, **result})
            report(f"cv       {size:>5} patients {fits:>4} fits ({args.folds}x{args.repeats}, "
                   f"{len(ATTRIBUTE_MODELS)} attribute models + {IMAGE_MODEL})  {engine:<5}  "
                   f"{result['wall_s']:7.1f} s  driver peak RSS "
                   f"{result['driver_peak_rss_mib']:6.0f} MiB")
        report(compare(oofs, "out-of-fold probabilities", size))

    report("")
    report("ray / local wall time:")
    for step in ("features", "cv"):
        for size in sorted({r["patients"] for r in rows if r["step"] == step}):
            by = {r["engine"]: r for r in rows if r["step"] == step and r["patients"] == size}
            if {"local", "ray"} <= set(by):
                ratio = by["ray"]["wall_s"] / by["local"]["wall_s"]
                report(f"  {step:<8} {size:>5} patients: {ratio:5.2f}  "
                       f"({'within' if ratio <= 1.15 else 'OVER'} the 15 % bound)")
    report("driver peak RSS, features, 400 -> largest cohort:")
    for engine in args.engines:
        rss = {r["patients"]: r["driver_peak_rss_mib"] for r in rows
               if r["step"] == "features" and r["engine"] == engine}
        if 400 in rss and len(rss) > 1:
            top = max(rss)
            report(f"  {engine:<5} {rss[400]:.0f} MiB -> {rss[top]:.0f} MiB at {top} patients "
                   f"({(rss[top] / rss[400] - 1) * 100:+.0f} %)")
    text = "\n".join(lines) + "\n"
    (args.work / "scale.json").write_text(json.dumps(rows, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
