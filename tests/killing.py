"""Kill a feature extraction in a subprocess once some patients' files exist (resume tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def kill_extraction_midway(code: str, args: list[str], folder: Path, pattern: str,
                           minimum: int = 2, timeout: float = 60) -> int:
    """Run ``python -c code *args``; SIGKILL it once ``minimum`` files match ``pattern`` under
    ``folder``; the number of files that match after the kill."""
    process = subprocess.Popen([sys.executable, "-c", code, *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while len(list(folder.rglob(pattern))) < minimum:
            assert process.poll() is None, process.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the extraction did not start"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return len(list(folder.rglob(pattern)))
