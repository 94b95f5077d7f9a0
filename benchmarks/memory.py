"""Peak memory (RSS) of `lymphomil features` and `lymphomil cv` at scale (issue 6, part 5).

Each command runs in its own child process; its peak RSS is read from ``os.wait4`` (the
child's own ``ru_maxrss``) and from ``resource.getrusage(RUSAGE_CHILDREN)`` (the largest of
every waited-for descendant, which covers worker processes too).

Cases:

a. ``features`` on one synthetic patient holding 2,000 images (one patient generated, its
   images copied to 2,000 files);
b. ``features`` on a 1,000-patient synthetic cohort (16–20 images per patient);
c. ``cv -m logreg --folds 5 --repeats 1`` on the same 1,000-patient cohort.

Example: nice -n 10 .venv/bin/python benchmarks/memory.py --out docs/benchmarks/memory.txt
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LYMPHOMIL = [sys.executable, "-m", "lymphomil.cli"]


def lymphomil_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("lymphomil")
    return [str(exe)] if exe.is_file() else LYMPHOMIL


def measure(args: list[str], env: dict[str, str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"rc": proc.returncode, "wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024,
            "children_max_rss_mib": children / 1024, "tail": out.decode(errors="replace")[-600:]}


def one_patient_with(root: Path, n_images: int) -> Path:
    from lymphomil.data.synth import write_synthetic_cohort

    base = write_synthetic_cohort(root / "base", n_patients=8, seed=0, images_per_patient=(16, 16))
    rows = list(csv.reader(open(base / "clinical_annotation.csv", newline="")))
    header = rows[0]
    first = next(r for r in rows[1:] if r[header.index("LABEL")] in ("0", "1"))
    pid = first[header.index("ID")]
    src = next(p for p in (base / "trainset" / pid, base / "testset" / pid) if p.is_dir())
    out = root / "one"
    folder = out / "trainset" / pid
    folder.mkdir(parents=True)
    sources = sorted(src.glob("*.jpg"))
    for i in range(n_images):
        shutil.copyfile(sources[i % len(sources)], folder / f"{i:06d}.jpg")
    with open(out / "clinical_annotation.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerow(first)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs/benchmarks/memory.txt")
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    from lymphomil.data.synth import write_synthetic_cohort

    work = args.work or Path(tempfile.mkdtemp(prefix="lymphomil-memory-"))
    env = dict(os.environ, LYMPHOMIL_CACHE_DIR=str(work / "cache"), LYMPHOMIL_PROGRESS="0")
    cmd = lymphomil_cmd()
    lines = ["# peak RSS of lymphomil commands (benchmarks/memory.py), "
             f"{time.strftime('%Y-%m-%d %H:%M')}",
             f"# python {platform.python_version()}, {os.cpu_count()} CPUs, niceness "
             f"{os.nice(0)}, load average {os.getloadavg()[0]:.2f} at start",
             f"# backbone {args.backbone} crop {args.crop}; cache in a fresh temp folder",
             ""]

    t0 = time.perf_counter()
    one = one_patient_with(work, args.images)
    lines.append(f"setup (a): 1 patient x {args.images} images in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    big = write_synthetic_cohort(work / "big", n_patients=args.patients, seed=0,
                                 images_per_patient=(16, 20))
    n_img = sum(1 for _ in big.rglob("*.jpg"))
    lines.append(f"setup (b): {args.patients} patients, {n_img} images in "
                 f"{time.perf_counter() - t0:.1f} s")
    lines.append("")
    cases = [
        (f"(a) features, 1 patient x {args.images} images",
         cmd + ["features", str(one), "--backbone", args.backbone, "--crop", str(args.crop),
                "--cache-dir", str(work / "cache-a")]),
        (f"(b) features, {args.patients} patients x 16-20 images",
         cmd + ["features", str(big), "--backbone", args.backbone, "--crop", str(args.crop),
                "--cache-dir", str(work / "cache-b")]),
        (f"(c) cv -m logreg --folds 5 --repeats 1, {args.patients} patients",
         cmd + ["cv", str(big), "-m", "logreg", "--folds", "5", "--repeats", "1",
                "--cache-dir", str(work / "cache-c")]),
    ]
    lines.append(f"{'case':<52} {'rc':>3} {'wall s':>8} {'peak RSS MiB':>13} {'max child MiB':>14}")
    for name, argv in cases:
        result = measure(argv, env)
        lines.append(f"{name:<52} {result['rc']:>3} {result['wall_s']:>8.1f} "
                     f"{result['peak_rss_mib']:>13.0f} {result['children_max_rss_mib']:>14.0f}")
        if result["rc"] != 0:
            lines.append("   output: " + result["tail"].replace("\n", "\n   "))
        print(lines[-1], flush=True)
    lines += ["", "peak RSS = the child's own ru_maxrss (os.wait4); max child = the largest "
              "ru_maxrss of any descendant waited for so far (RUSAGE_CHILDREN).",
              f"load average at end {os.getloadavg()[0]:.2f} "
              "(2-core machine shared with other jobs)"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
