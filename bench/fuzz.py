"""The raw-request fuzzer of tests/fuzzing.py, for as long as asked.

Run from the repository root::

    .venv/bin/python bench/fuzz.py --minutes 30

Batches of randomly seeded hypothesis runs (no example database) against one gateway in
front of recording fake Stripe hosts, until the time is up. Every invariant failure is
shrunk by hypothesis and printed with the raw request that shows it; the run goes on with
the next batch, and the exit status is 1 when anything failed. At the end: what the
requests led to (forwarded, served from the cache, the gateway's own answers by status).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, given, settings

from tests.fuzzing import FuzzRequest, FuzzStack, fuzz_stack, request_sequences, run_sequence
from tests.helpers import LoopThread


def batch(fs: FuzzStack, examples: int) -> None:
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests=request_sequences())
    def run(requests: list[FuzzRequest]) -> None:
        run_sequence(fs, requests)

    run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=500, help="examples per hypothesis run")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the gateway's own tracebacks: the failures say enough
    deadline = time.monotonic() + args.minutes * 60
    failures: dict[str, str] = {}
    loop = LoopThread()
    try:
        with tempfile.TemporaryDirectory() as tmp, fuzz_stack(loop, Path(tmp)) as fs:
            batches = 0
            while time.monotonic() < deadline:
                batches += 1
                try:
                    batch(fs, args.batch)
                except Exception as exc:  # hypothesis re-raises the shrunk failure
                    text = "".join(traceback.format_exception_only(type(exc), exc))
                    first = text.strip().splitlines()[0][:160]
                    if first not in failures:
                        failures[first] = text
                        print(f"--- batch {batches}: new failure\n{text}", flush=True)
                else:
                    print(f"batch {batches}: no failure", flush=True)
            print("\noutcomes:", ", ".join(f"{k}={v}" for k, v in sorted(fs.stats.items())))
    finally:
        loop.stop()
    print(f"{len(failures)} distinct failure(s)")
    for first in failures:
        print(" -", first)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
