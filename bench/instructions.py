"""Instructions per request of the gateway, counted by valgrind's callgrind: the number
that does not move when other work shares the machine (req/s and even CPU time do).

For the optimisation loop, not a verdict: it runs the upstream as usual and each gateway
configuration of ``stack_bench.py`` under ``valgrind --tool=callgrind`` (instrumentation
off at start; about 15 s to import), warms it up, then counts the instructions of
``--requests`` sequential keep-alive requests (``GET /v1/customers/cus_…``, the team key;
``Cache-Control: no-cache`` where the row says so) and prints them per request::

    .venv/bin/python bench/instructions.py                 # every row, about 3 minutes
    .venv/bin/python bench/instructions.py A C-miss        # some rows
    .venv/bin/python bench/instructions.py --keep /tmp/cg  # keep the callgrind files

One connection at a time: every request pays its own event-loop wake-ups, so the counts
are higher than a share of a 50-connection run's, but they compare exactly.
Needs ``valgrind`` (``apt-get install -y valgrind``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb
from stack_bench import GATEWAYS, NO_CACHE, StackBench

#: row -> (gateway of stack_bench.GATEWAYS, request headers)
ROWS: dict[str, tuple[str, dict[str, str]]] = {
    # the floor: the bench's upstream itself, an aiohttp web.Application answering the
    # customer from memory (no client, no proxying): what any aiohttp server pays a request
    "aiohttp-static": ("upstream", {}),
    "baseline": ("baseline", {}),
    "bare": ("bare", {}),
    # the bare gateway with the cache-miss row's request header (what the cache alone adds)
    "bare-no-cache": ("bare", NO_CACHE),
    "auth": ("auth", {}),
    "audit": ("audit", {}),
    "audit+red": ("audit+red", {}),
    "rate_limit": ("rate_limit", {}),
    "idempotency": ("idempotency", {}),
    "metrics": ("metrics", {}),
    "cache-miss": ("cache", NO_CACHE),
    "cache-hit": ("cache", {}),
    "A": ("A", {}),
    "B": ("B", {}),
    # B with the Redis rate limiter: leases on (the default), then lease = 0 (a round trip
    # each); a redis-server is started for these (its own instructions are not counted)
    "B-rl-redis": ("B/rl-redis", {}),
    "B-rl-redis0": ("B/rl-redis0", {}),
    "C-miss": ("C", NO_CACHE),
    "C-hit": ("C", {}),
}


def _requests(port: int, count: int, headers: dict[str, str]) -> None:
    conn = http.client.HTTPConnection(hb.HOST, port, timeout=60)
    try:
        for _ in range(count):
            conn.request("GET", hb.CUSTOMER_PATH, headers={**hb_auth(), **headers})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"status {response.status}")
    finally:
        conn.close()


def hb_auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {hb.GATEWAY_KEY}"}


def _control(pid: int, *args: str) -> None:
    subprocess.run(
        ["callgrind_control", *args, str(pid)], capture_output=True, timeout=120, check=True
    )


def _total(path: Path) -> int:
    """A dump's instruction count (0 for a file still being written, or empty)."""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="*", default=list(ROWS), help=f"of {list(ROWS)}")
    parser.add_argument("--requests", type=int, default=200, help="requests counted per row")
    parser.add_argument("--warmup", type=int, default=100, help="requests before counting")
    parser.add_argument("--keep", metavar="DIR", help="keep the callgrind output files here")
    args = parser.parse_args(argv)
    unknown = set(args.rows) - set(ROWS)
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; known: {list(ROWS)}")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install -y valgrind)")
    tmp = Path(tempfile.mkdtemp(prefix="instructions-"))
    out_dir = Path(args.keep) if args.keep else tmp
    out_dir.mkdir(parents=True, exist_ok=True)
    ns = argparse.Namespace(asyncio=False, loadgen="python")
    bench = StackBench(ns, tmp)
    specs = {g.name: g for g in GATEWAYS}
    try:
        upstream = bench.start("upstream", None, name="upstream")
        redis_url = ""
        if any(
            specs[ROWS[row][0]].rate_limit != "memory" or specs[ROWS[row][0]].cache != "memory"
            for row in args.rows
            if ROWS[row][0] in specs
        ):
            redis = bench.start_redis(None)
            redis_url = f"redis://{hb.HOST}:{redis.info['port']}/0"
        print(f"{'row':<14}{'instructions/request':>22}")
        for row in args.rows:
            name, headers = ROWS[row]
            out = out_dir / f"callgrind.{row}.out"
            for stale in out_dir.glob(f"callgrind.{row}.out*"):
                stale.unlink()
            params: dict[str, object] = {
                "loop": bench.loop_kind,
                "cores": None,
                "name": name,
                "upstream": upstream.url,
            }
            if name not in ("baseline", "upstream"):
                g = specs[name]
                params.update(
                    audit_path=str(tmp / f"audit-{row}.jsonl"),
                    plugins=list(g.plugins),
                    rate_limit=g.rate_limit,
                    cache=g.cache,
                    redis_url=redis_url,
                )
            cmd = [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                sys.executable,
                str(Path(__file__).resolve().parent / "stack_bench.py"),
                hb.CHILD_FLAG,
                name if name in ("baseline", "upstream") else "gateway",
                json.dumps(params),
            ]
            log = tmp / f"valgrind-{row}.log"
            with open(log, "wb") as err:
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
                )
            child = hb.Child(role=row, proc=proc, log=log)
            bench.children.append(child)
            child.info = bench._ready_line(child, timeout=300.0)
            port, pid = child.info["port"], child.info["pid"]
            _requests(port, args.warmup, headers)
            _control(pid, "-i", "on")
            _requests(port, args.requests, headers)
            _control(pid, "-i", "off")
            _control(pid, "-d")
            time.sleep(0.5)
            dumps = sorted(out_dir.glob(f"callgrind.{row}.out*"), key=os.path.getmtime)
            total = sum(_total(p) for p in dumps)
            print(f"{row:<14}{total / args.requests:>22,.0f}", flush=True)
            proc.terminate()
            proc.wait(timeout=60)
            bench.children.remove(child)
    finally:
        bench.stop_all()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
