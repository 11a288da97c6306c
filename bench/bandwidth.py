"""This machine's memory bandwidth, measured with a STREAM-style triad (bench/triad.c).

Single-stream decode reads (about) every weight once per token, so bandwidth divided by the
model file's size bounds decode speed: the report gives each result as a share of that bound.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("triad.c")
RUNS = 3


def triad_bandwidth_gbs(threads: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "triad"
        subprocess.run(
            ["gcc", "-O3", "-march=native", "-fopenmp", str(SOURCE), "-o", str(binary)], check=True
        )
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_PROC_BIND": "true"}
        # Best of several runs (each already the best of its passes): a shared machine's
        # neighbours only ever make a run slower.
        runs = [subprocess.run([str(binary)], env=env, check=True, capture_output=True, text=True)
                for _ in range(RUNS)]
    return max(float(result.stdout.strip()) for result in runs)


def decode_limit_tps(bandwidth_gbs: float, model_path: Path) -> float:
    """Tokens per second if every token read the whole file at the measured bandwidth."""
    return bandwidth_gbs * 1e9 / model_path.stat().st_size


if __name__ == "__main__":
    print(f"{triad_bandwidth_gbs(os.cpu_count() or 1):.2f} GB/s")
