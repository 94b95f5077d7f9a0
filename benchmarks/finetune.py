"""Seconds per epoch and peak memory: cached-trunk fine-tuning vs whole-network training (issue 18).

Every case fits one model in its own child process (peak RSS from ``os.wait4``) on labelled
patients of the cohort, with ``validation_fraction=0`` (no early stopping: every epoch runs and
is timed by the training loop's own per-epoch record) and ``--threads`` torch threads.

* ``mil-e2e`` (whole network, EfficientNet-Lite0 @112, ``grad_images=32``, batch 2) and
  ``mil-trunk`` with the same ``grad_images`` and batch, on the same stratified subset of
  ``--subset`` patients: the ratio of their steady-state seconds per epoch (epoch ≥ 2:
  ``mil-e2e`` decodes the JPEGs in its first epoch and keeps them);
* ``mil-trunk`` and ``topk-trunk`` with their defaults on the same subset, and on every labelled
  patient (seconds per epoch and peak RSS of a full-cohort fit).

The trunk is read from the feature cache (``lymphomil features DATA --kinds trunk`` first; the
script extracts what is missing, and reports that one-off cost separately).

Example: .venv/bin/python benchmarks/finetune.py /work/shared/data/dlmi-lymphocytosis \
    --out docs/benchmarks/finetune.txt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _subset(patients: list, n: int | None, seed: int) -> list:
    import numpy as np

    labelled = [p for p in patients if p.label in (0, 1)]
    if n is None or n >= len(labelled):
        return labelled
    rng = np.random.default_rng(seed)
    y = np.array([p.label for p in labelled])
    chosen: list[int] = []
    for cls in (0, 1):
        members = np.flatnonzero(y == cls)
        take = int(round(n * len(members) / len(y)))
        chosen += list(rng.choice(members, size=take, replace=False))
    return [labelled[i] for i in sorted(chosen)]


def child(args: argparse.Namespace) -> None:
    """One fit; prints a JSON line with the per-epoch seconds."""
    import numpy as np
    import torch

    from lymphomil.data.cohort import load_cohort
    from lymphomil.features import FeatureCache, attach_store
    from lymphomil.models.base import create_model

    torch.set_num_threads(args.threads)
    patients = _subset(load_cohort(args.data).patients, args.subset, seed=0)
    cache = FeatureCache(args.cache_dir) if args.cache_dir else FeatureCache()
    patients = attach_store(patients, cache)
    y = np.array([p.label for p in patients])
    overrides = json.loads(args.params)
    model = create_model(args.model).set_params(max_epochs=args.epochs, patience=args.epochs,
                                                validation_fraction=0.0, **overrides)
    start = time.perf_counter()
    model.fit(patients, y)
    wall = time.perf_counter() - start
    print(json.dumps({"model": args.model, "patients": len(patients),
                      "images": int(sum(p.n_images for p in patients)),
                      "epoch_seconds": [r["seconds"] for r in model.history_],
                      "fit_wall_s": wall, "params": overrides}))


def run_case(args: argparse.Namespace, model: str, subset: int | None, params: dict) -> dict:
    cmd = [sys.executable, __file__, str(args.data), "--child", "--model", model,
           "--epochs", str(args.epochs), "--threads", str(args.threads),
           "--params", json.dumps(params)]
    if subset is not None:
        cmd += ["--subset", str(subset)]
    if args.cache_dir:
        cmd += ["--cache-dir", str(args.cache_dir)]
    import tempfile

    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        out = proc.stdout.read()  # type: ignore[union-attr]
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{model} failed:\n{err.read().decode()[-3000:]}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--subset", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per fit (1: `lymphomil cv`'s default)")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--model", default="mil-trunk")
    parser.add_argument("--params", default="{}")
    parser.add_argument("--pair-only", action="store_true",
                        help="only the mil-e2e / mil-trunk pair on the subset (the speed-up)")
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from lymphomil.data.cohort import load_cohort
    from lymphomil.features import FeatureCache, FeatureSpec

    lines = [f"# benchmarks/finetune.py {args.data} --epochs {args.epochs} "
             f"--threads {args.threads}",
             f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
             f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start"]
    cache = FeatureCache(args.cache_dir) if args.cache_dir else FeatureCache()
    spec = FeatureSpec.parse("efficientnet-lite0@112")
    cohort = load_cohort(args.data).patients
    cache.ensure(cohort, spec, kinds=("trunk",))
    run = cache.last_run
    folder = Path(run["folder"])
    trunk_bytes = sum(f.stat().st_size for f in folder.glob("*.trunk.safetensors"))
    lines.append(f"trunk cache: {run['patients']} patients, {run['images']} images, "
                 f"{trunk_bytes / 1e6:.1f} MB on disk (float16); this run computed "
                 f"{run['computed_images']} images in {run['seconds']:.1f} s")

    subset = 24
    same = {"grad_images": 32, "batch_size": 2}
    cases = [("mil-e2e", subset, same), ("mil-trunk", subset, same), ("mil-trunk", subset, {}),
             ("topk-trunk", subset, {}), ("mil-trunk", None, {}), ("topk-trunk", None, {})]
    if args.pair_only:
        cases = cases[:2]
    results = []
    for model, n, params in cases:
        r = run_case(args, model, n, params)
        results.append(r)
        steady = r["epoch_seconds"][1:] or r["epoch_seconds"]
        r["steady_s"] = sum(steady) / len(steady)
        rss = f"{r['peak_rss_mib']:.0f} MiB"
        lines.append(f"{model:10s} {json.dumps(params):36s} {r['patients']:3d} patients "
                     f"{r['images']:5d} images: epochs "
                     f"{', '.join(f'{s:.1f}' for s in r['epoch_seconds'])} s; steady "
                     f"{r['steady_s']:.2f} s/epoch; fit {r['fit_wall_s']:.1f} s; peak RSS {rss}")
        print(lines[-1], flush=True)
    e2e, trunk = results[0]["steady_s"], results[1]["steady_s"]
    lines.append(f"speed-up, same subset, backbone, batch 2 and grad_images 32: "
                 f"{e2e / trunk:.1f}x (mil-e2e {e2e:.2f} s/epoch vs mil-trunk {trunk:.2f} s/epoch)")
    if len(results) > 3:
        lines.append(f"speed-up, mil-trunk defaults (grad_images 64): "
                     f"{e2e / results[2]['steady_s']:.1f}x; topk-trunk defaults: "
                     f"{e2e / results[3]['steady_s']:.1f}x")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
