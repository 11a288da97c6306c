"""The whole suite, several times in a row, on a machine kept busy: `make test-stress`.

A test that fails one run in a few on a loaded machine will one day fail CI for a change that
broke nothing. This runs pytest ``--runs`` times while ``--burners`` processes (one per core by
default) spin on plain CPU-bound arithmetic at normal priority, as another program would, keeps
each run's output in ``--logs``, and prints each run's time and result. Exit status 1 when any run
failed.

    python -m tests.stress [--runs 3] [--burners N] [--logs DIR] [pytest arguments...]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import subprocess
import sys
import time
from pathlib import Path

SUMMARY = re.compile(r"^=* ?(\d+ (?:passed|failed|errors?)\b.*?) in [\d.]+s", re.MULTILINE)


def burn() -> None:
    """Keep one core busy until terminated."""
    value = 1.0
    while True:
        for _ in range(1_000_000):
            value = value * 1.0000001 % 1000.0


def run_suite(index: int, logs: Path, pytest_args: list[str]) -> tuple[float, int, str]:
    """One pytest run, its output kept in a file: (seconds, exit status, pytest's summary)."""
    log_path = logs / f"run-{index}.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        status = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args],
            stdout=log, stderr=subprocess.STDOUT, check=False,
        ).returncode
    seconds = time.monotonic() - started
    found = SUMMARY.findall(log_path.read_text(errors="replace"))
    return seconds, status, found[-1] if found else f"no summary (exit status {status})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--logs", type=Path, default=Path("build/stress"))
    options, pytest_args = parser.parse_known_args()
    options.logs.mkdir(parents=True, exist_ok=True)
    burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(options.burners)]
    for burner in burners:
        burner.start()
    print(f"{options.runs} runs of the suite beside {options.burners} CPU-bound processes; logs in {options.logs}/",
          flush=True)
    results = []
    try:
        for index in range(1, options.runs + 1):
            seconds, status, summary = run_suite(index, options.logs, pytest_args)
            results.append(status)
            print(f"run {index}: {seconds / 60:.1f} min, {summary}", flush=True)
    finally:
        for burner in burners:
            burner.terminate()
    failed = sum(1 for status in results if status != 0)
    print(f"{len(results) - failed} of {len(results)} runs passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
