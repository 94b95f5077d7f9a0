"""Start-up per command (issue 24): import time and the wall time of a warm call.

For each command, on the shared cohort (features already cached, a trained model at hand):

* **imports**: the seconds the child spent importing modules (the sum of the top-level entries of
  ``python -X importtime``, over the whole call: a command imports what it runs as it runs it);
* **wall**: the best of ``--repeats`` warm calls, after one untimed call (each a fresh process,
  as a user types it);
* **CPU**: user + system seconds of that child (less sensitive than wall to other jobs on a
  shared machine; the load average is printed with the table).

The untimed first call of ``run`` is a cold run when the CV cache is empty (minutes).

Example: .venv/bin/python benchmarks/startup.py ../shared/data/dlmi-lymphocytosis
         .venv/bin/python benchmarks/startup.py DATA --commands help,features,predict
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = ("help", "models", "features", "cache-info", "cv", "predict", "run")


def _argv(command: str, data: Path, work: Path) -> list[str]:
    return {
        "help": ["--help"],
        "models": ["models"],
        "features": ["features", str(data), "--backbone", "resnet50-thin", "--crop", "112"],
        "cache-info": ["cache", "info"],
        "cv": ["cv", str(data), "-m", "fusion-mean"],
        "train": ["train", str(data), "-m", "fusion-mean", "--out", str(work / "model")],
        "predict": ["predict", str(work / "model"), str(data), "--out",
                    str(work / "predictions.csv")],
        "run": ["run", str(data), "--out", str(work / "run")],
    }[command]


def _call(args: list[str], importtime: bool = False) -> tuple[float, float, str]:
    """(wall s, CPU s, stderr) of ``python -m lymphomil.cli ARGS`` in a child process."""
    flags = ["-X", "importtime"] if importtime else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *flags, "-m", "lymphomil.cli", *args],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        tail = [line for line in done.stderr.splitlines() if not line.startswith("import time")]
        raise SystemExit(f"lymphomil {' '.join(args)} failed ({done.returncode}):\n"
                         + "\n".join(tail[-15:]))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stderr


def import_seconds(stderr: str) -> float:
    """Sum of the top-level (not nested) cumulative times of ``-X importtime`` lines."""
    total = 0
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|", 2)
        if not name[1:].startswith(" "):  # nested imports are indented under their parent
            total += int(cumulative)
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="the challenge folder (features cached)")
    parser.add_argument("--commands", default=",".join(COMMANDS),
                        help=f"comma-separated, of {', '.join(COMMANDS)}")
    parser.add_argument("--repeats", type=int, default=2, help="timed warm calls per command")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the model, predictions and run (default: a temp folder)")
    args = parser.parse_args()
    commands = [c.strip() for c in args.commands.split(",") if c.strip()]
    work = args.work or Path(tempfile.mkdtemp(prefix="lymphomil-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    if "predict" in commands and not (work / "model" / "model.json").is_file():
        _call(_argv("train", args.data, work))  # the model `predict` applies
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; {os.cpu_count()} CPUs; "
          f"python {sys.version.split()[0]}; work folder {work}")
    print(f"{'command':<12} {'imports s':>10} {'wall s':>8} {'CPU s':>7}")
    for command in commands:
        argv = _argv(command, args.data, work)
        _call(argv)  # warm-up: caches filled, files in the page cache
        timed = [_call(argv) for _ in range(max(1, args.repeats))]
        wall, cpu, _ = min(timed)
        imports = import_seconds(_call(argv, importtime=True)[2])
        print(f"{command:<12} {imports:>10.2f} {wall:>8.2f} {cpu:>7.2f}", flush=True)
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
