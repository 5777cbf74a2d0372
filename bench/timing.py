"""Shared timing helpers of the end-to-end benchmarks: page-cache control, `cat`, timed subprocesses.

Every timed step is its own process (process start included, as a user runs it); `run_timed` returns
wall seconds, the child's peak resident memory (`os.wait4`'s rusage) and its stdout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


@dataclass(frozen=True)
class Timed:
    seconds: float
    peak_rss_bytes: int
    stdout: str


def weight_files(folders: list[Path]) -> list[Path]:
    return [f for folder in folders for f in sorted(folder.glob("*.safetensors"))]


def drop_cache(folders: list[Path]) -> None:
    """Evict the folders' weight files from the page cache (posix_fadvise DONTNEED after fsync)."""
    for file in weight_files(folders):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_timed(argv: list[str]) -> Timed:
    """Run `argv` (stdout captured, stderr shown), fail on a non-zero exit; time it from fork to reap."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} exited with {proc.returncode}")
    return Timed(seconds, usage.ru_maxrss * 1024, out)


MODELS = ("0.5b", "1.5b", "7b")  # bench/synthetic_pair.py's shapes; the parent never imports torch, so
# the children's peak RSS (which counts what they inherit at fork) is theirs.


def write_synthetic(out: Path, model: str, layers: int | None, device: str, steps: int | None = None) -> None:
    """bench/synthetic_pair.py in its own process (A/B, or base + `steps` checkpoints)."""
    argv = [sys.executable, str(BENCH / "synthetic_pair.py"), str(out), "--model", model, "--device", device]
    argv += [] if layers is None else ["--layers", str(layers)]
    argv += [] if steps is None else ["--steps", str(steps)]
    timed = run_timed(argv)
    print(f"wrote {out} ({model}) in {timed.seconds:.1f} s", flush=True)


def cat(folders: list[Path]) -> Timed:
    return run_timed(["sh", "-c", 'cat "$@" > /dev/null', "cat", *map(str, weight_files(folders))])


def hand_loop(a: Path, b: Path, device: str) -> Timed:
    return run_timed([sys.executable, str(BENCH / "hand_loop.py"), str(a), str(b), "--device", device])


def dynamics(*args: str) -> Timed:
    return run_timed([sys.executable, "-m", "dynamics.cli", *args])
