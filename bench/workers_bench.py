"""Gateway throughput with 1 and with 2 worker processes (``serve --workers N``).

Run from the repository root (about 40 seconds; ``--quick`` for a short smoke run)::

    .venv/bin/python bench/workers_bench.py

Processes, all on 127.0.0.1, reusing ``harness.py``'s helpers (upstream child, wrk
handling, CPU accounting):

* ``upstream``   the harness's Stripe stand-in (``GET /v1/customers/{id}``, ~700 bytes);
* ``gateway-1w`` ``stripe-gateway serve --config FILE --workers 1`` (one process);
* ``gateway-2w`` ``stripe-gateway serve --config FILE --workers 2`` (supervisor + 2 workers
  sharing the port with SO_REUSEPORT);
* the load generator, ``wrk`` when installed (else the harness's aiohttp client).

Both gateways use the same config apart from the worker count: ``auth`` and ``audit`` on
(audit to a file in a temp dir), every other plugin disabled (the cache would answer the
repeated retrieve itself), uvloop when installed. Nothing is pinned: the point is how the
gateway uses a second core, and on a 2-core machine it shares both cores with the upstream
and the load generator, so the ratio is bounded well below 2 by what they need; the CPU
columns show where the cores went. Each round measures both gateways back to back (order
alternating between rounds); the ratio is the median of the per-round ratios.

Every line shows req/s, p50/p99, the gateway's CPU (all its workers) and the CPU that
processes not started here used meanwhile (``other``: other people's tests on a shared
machine; the summary warns above 25 % of a core). The 2-worker lines also show how the
requests were split between the workers (from the audit lines' ``worker`` field).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb

REPO = Path(__file__).resolve().parents[1]
AUTH = {"Authorization": f"Bearer {hb.GATEWAY_KEY}"}


@dataclass
class Gateway:
    """``stripe-gateway serve --workers N`` in a subprocess."""

    workers: int
    proc: subprocess.Popen[bytes]
    audit: Path
    url: str = ""
    stderr: list[str] = field(default_factory=list)

    def pids(self) -> list[int]:
        """The processes doing the work: the workers, or the gateway itself with one."""
        if self.workers == 1:
            return [self.proc.pid]
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(c) for c in children]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


def _config(tmp: Path, name: str, upstream: str) -> tuple[Path, Path]:
    from gateway.host import DEFAULT_PLUGINS

    audit = tmp / f"{name}-audit.jsonl"
    disabled = sorted({n for n, _ in DEFAULT_PLUGINS} - {"auth", "audit"})
    text = f"""
[server]
host = "{hb.HOST}"
port = 0
drain_timeout = 2.0

[upstream]
api = "{upstream}"
files = "{upstream}"

[plugins]
disable = {json.dumps(disabled)}

[plugins.audit]
path = "{audit}"

[[teams]]
name = "bench"
key_sha256 = ["{hashlib.sha256(hb.GATEWAY_KEY.encode()).hexdigest()}"]
upstream_key_env = "{hb.UPSTREAM_KEY_ENV}"
"""
    path = tmp / f"{name}.toml"
    path.write_text(text)
    return path, audit


def _start_gateway(tmp: Path, workers: int, upstream: str) -> Gateway:
    config, audit = _config(tmp, f"gateway-{workers}w", upstream)
    return start_serve(config, audit, workers, {hb.UPSTREAM_KEY_ENV: hb.UPSTREAM_KEY})


def start_serve(
    config: Path,
    audit: Path,
    workers: int,
    environ: dict[str, str],
    python: list[str] | None = None,
) -> Gateway:
    """``stripe-gateway serve --config CONFIG --workers N``; its stderr lines are kept.
    ``python``: the interpreter's command line (default ``sys.executable``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_GATEWAY_")}
    env.update(environ)
    command = [*(python or [sys.executable]), "-m", "gateway", "serve", "--config", str(config)]
    proc = subprocess.Popen(
        [*command, "--workers", str(workers)],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    gateway = Gateway(workers=workers, proc=proc, audit=audit)
    found = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            gateway.stderr.append(line)
            m = re.search(r"listening on (http://[\d.]+:\d+)", line)
            if m and not found.is_set():
                gateway.url = m[1]
                found.set()

    threading.Thread(target=pump, daemon=True).start()
    if not found.wait(30):
        proc.kill()
        raise RuntimeError(f"gateway --workers {workers} did not start:\n{''.join(gateway.stderr)}")
    return gateway


def _sanity(gateway: Gateway) -> None:
    status, body = hb._get(gateway.url + hb.CUSTOMER_PATH, AUTH)
    assert status == 200 and json.loads(body)["id"] == hb._CUSTOMER["id"], (status, body[:200])
    status, _ = hb._get(gateway.url + hb.CUSTOMER_PATH)
    assert status == 401, f"gateway without a key answered {status}, expected 401"


@dataclass
class Run:
    workers: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    gateway_cpu: float
    upstream_cpu: float
    load_cpu: float
    other_cpu: float
    split: dict[int, int]
    #: gateway CPU time (all workers) per request, in microseconds
    cpu_us: float


def _measure(bench: hb.Bench, gateway: Gateway, upstream: hb.Child, conns: int) -> Run:
    url = gateway.url + hb.CUSTOMER_PATH
    if bench.args.warmup > 0:
        bench.load(url, conns, bench.args.warmup)
    gateway.audit.write_bytes(b"")  # count this run's lines only
    pids = gateway.pids()
    gw_before = sum(hb._cpu_seconds(p) for p in pids)
    up_before = hb._cpu_seconds(upstream.info["pid"])
    load_before = hb._children_cpu_seconds()
    machine_before = hb._machine_cpu_seconds()
    wall = time.monotonic()
    raw = bench.load(url, conns, bench.args.duration)
    wall = time.monotonic() - wall
    gw = sum(hb._cpu_seconds(p) for p in pids) - gw_before
    up = hb._cpu_seconds(upstream.info["pid"]) - up_before
    load = hb._children_cpu_seconds() - load_before
    other = max(0.0, hb._machine_cpu_seconds() - machine_before - gw - up - load)
    time.sleep(0.2)  # the last audit lines
    split: Counter[int] = Counter()
    for line in gateway.audit.read_text().splitlines():
        if line:
            split[int(json.loads(line).get("worker", 0))] += 1
    seconds = raw["seconds"] or float("nan")
    run = Run(
        workers=gateway.workers,
        rps=raw["requests"] / seconds,
        p50_ms=raw["p50_ms"],
        p99_ms=raw["p99_ms"],
        errors=raw["errors"] + raw["status_errors"],
        gateway_cpu=gw / wall * 100,
        upstream_cpu=up / wall * 100,
        load_cpu=load / wall * 100,
        other_cpu=other / wall * 100,
        split=dict(sorted(split.items())),
        cpu_us=gw / raw["requests"] * 1e6 if raw["requests"] else float("nan"),
    )
    shares = " ".join(f"w{k}={v / max(1, sum(split.values())):.0%}" for k, v in run.split.items())
    flag = f"  ERRORS: {run.errors}" if run.errors else ""
    print(
        f"  workers={gateway.workers} c={conns:<3}{run.rps:8.1f} req/s  p50 {run.p50_ms:6.2f} ms"
        f"  p99 {run.p99_ms:6.2f} ms  cpu/req {run.cpu_us:4.0f} us | cpu% gateway "
        f"{run.gateway_cpu:3.0f} upstream {run.upstream_cpu:3.0f} load {run.load_cpu:3.0f} "
        f"other {run.other_cpu:3.0f}"
        f"{'  split ' + shares if gateway.workers > 1 else ''}{flag}",
        flush=True,
    )
    return run


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="workers-bench-"))
    bench = hb.Bench(args, tmp)
    bench.layout = hb.Layout(server=None, upstream=None, load=None)  # nothing pinned
    gateways: list[Gateway] = []

    def stop_all() -> None:
        for gateway in gateways:
            gateway.stop()
        gateways.clear()
        bench.stop_all()

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    atexit.register(stop_all)
    try:
        upstream = bench.start("upstream", None)
        one = _start_gateway(tmp, 1, upstream.url)
        gateways.append(one)
        two = _start_gateway(tmp, 2, upstream.url)
        gateways.append(two)
        for gateway in (one, two):
            _sanity(gateway)
        loadgen = f"wrk ({bench.wrk}, 1 thread)" if bench.wrk else "python aiohttp client"
        print("stripe-gateway workers benchmark")
        print(f"  python         : {sys.version.split()[0]}; event loop {bench.loop_kind}")
        print(f"  cores          : {len(os.sched_getaffinity(0))}; nothing pinned")
        print(f"  load generator : {loadgen}, {args.conns} connections")
        print(f"  gateways       : auth + audit on, other plugins disabled; audit -> {tmp}")
        print(f"                   1 worker: pid {one.proc.pid}; 2 workers: {two.pids()}")
        print(
            f"  runs           : warm-up {args.warmup:g} s + {args.duration:g} s each, "
            f"{args.rounds} round(s), median over rounds",
            flush=True,
        )
        runs: dict[int, list[Run]] = {1: [], 2: []}
        for round_no in range(args.rounds):
            print(f"round {round_no + 1}/{args.rounds}", flush=True)
            order = [one, two] if round_no % 2 == 0 else [two, one]
            for gateway in order:
                runs[gateway.workers].append(_measure(bench, gateway, upstream, args.conns))
        ratios = [b.rps / a.rps for a, b in zip(runs[1], runs[2], strict=True)]
        print()
        print("summary: medians over rounds")
        for n in (1, 2):
            r = runs[n]
            print(
                f"  {n} worker{'s' if n > 1 else ' '}  {statistics.median(x.rps for x in r):8.1f} "
                f"req/s  p99 {statistics.median(x.p99_ms for x in r):6.2f} ms  gateway cpu "
                f"{statistics.median(x.gateway_cpu for x in r):3.0f}%  cpu/req "
                f"{statistics.median(x.cpu_us for x in r):4.0f} us"
            )
        print(
            f"  ratio 2 workers / 1 worker: {statistics.median(ratios):.2f}x  "
            f"(per round: {' '.join(f'{x:.2f}' for x in ratios)})"
        )
        busy = max(x.other_cpu for r in runs.values() for x in r)
        if busy > hb.BUSY_MACHINE_PCT:
            print(
                f"  WARNING  other processes used up to {busy:.0f}% of a core during a run: "
                "the machine was not quiet, rerun for firmer numbers"
            )
        errors = sum(x.errors for r in runs.values() for x in r)
        if errors:
            print(f"  WARNING  {errors} failed or non-200 responses: the numbers are suspect")
        codes = [gateway.stop() for gateway in gateways]
        print(f"  gateways stopped with exit codes {codes}")
        print(f"\ntotal time {time.monotonic() - started:.0f} s", flush=True)
        return 1 if errors or any(codes) else 0
    finally:
        stop_all()
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)


def _parser() -> argparse.ArgumentParser:
    parser = hb.load_parser(__doc__, "about 15 s", 64, "connections")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = hb.load_args(_parser(), sys.argv[1:] if argv is None else argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
