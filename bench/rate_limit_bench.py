"""What the rate-limit plugin costs: per decision (memory and Redis), and gateway throughput
with the plugin on versus off.

Run from the repository root (about 80 seconds; ``--quick`` for a short smoke run)::

    .venv/bin/python bench/rate_limit_bench.py

Part 1, cost per decision: a child process pinned to the gateway core builds a real
gateway app (``create_app``) and calls the plugin's ``gateway_request`` hook directly, in a
loop, with one request context (team ``bench``, its upstream key, ``GET`` of a customer).
Every limited variant counts against two buckets (the team's read limit and the account
budget), set so high that everything passes, unless it says otherwise:

* ``off``          the plugin with no limits configured (what every gateway pays by default);
* ``memory``       the in-process GCRA; ``memory, refusing`` the same with every request
  over its limit (the 429 is built and raised);
* ``redis``        decided from this instance's leases (default ``lease``; a Lua script
  call now and then, in the background), awaited one at a time, and ``redis x64`` with 64
  decisions in flight at once (throughput: wall time / decisions); ``..., lease 0`` the
  same with one Lua script call (a round trip) per decision;
* ``redis down``   Redis unreachable, circuit open: the in-process fallback decides.

Part 2, throughput: three gateways in front of ``harness.py``'s upstream, ``auth`` +
``audit`` + ``rate_limit`` on and every other plugin (the cache too) disabled, so every
request is decided and goes upstream: ``off`` (rate_limit disabled as well), ``memory``
and ``redis`` (limits as above, never refusing).
Each round measures the three back to back with ``wrk`` (order alternating between rounds);
ratios are medians of per-round ratios to ``off``. ``cpu/req`` is the gateway's CPU time
per request, the steadiest number on a shared machine; its difference to ``off`` is the
decision's cost in place. Every run's decisions are counted from the audit log.

Processes, all on 127.0.0.1: upstream, redis-server (``--save "" --appendonly no``) and
the load generator share one core, the gateways (and the part 1 child) the other, on a
2-core machine. Every process it started is stopped when it exits (also on Ctrl-C /
SIGTERM). Exit status: 0, or 1 when a run had failed or unexpected responses.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# bench/ is not a package: import the sibling script's helpers from this directory
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb

HOST = hb.HOST
PATH = hb.CUSTOMER_PATH
AUTH = {"Authorization": f"Bearer {hb.GATEWAY_KEY}"}
TIGHT_KEY = "gw_bench_tight_000000000000000001"
MODES = ("off", "memory", "redis")
#: so high that nothing is refused: every request is decided and allowed
OPEN = {"rate": 1e9, "burst": 1_000_000_000}
DECISIONS = ("allow", "deny", "fallback_allow", "null")


def _rate_limit_table(mode: str, redis_url: str) -> dict[str, Any]:
    """``[plugins.rate_limit]`` for a mode; the ``tight`` team proves the limiter is live."""
    table: dict[str, Any] = {
        "default": {"read": OPEN, "write": OPEN},
        "account": OPEN,
        "teams": {"tight": {"read": {"rate": 0.01, "burst": 2}}},
    }
    if mode == "redis":
        table.update(backend="redis", redis_url=redis_url, redis_timeout=0.5)
    return table


def _config(mode: str, params: dict[str, Any], table: dict[str, Any] | None = None) -> Any:
    """The gateway config of a mode; ``table`` replaces its ``[plugins.rate_limit]``."""
    from importlib.metadata import entry_points

    from gateway.config import parse_config
    from gateway.host import DEFAULT_PLUGINS, ENTRY_POINT_GROUP

    keep = {"auth", "audit"} if mode == "off" else {"auth", "audit", "rate_limit"}
    known = {name for name, _ in DEFAULT_PLUGINS} | {
        ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)
    }
    plugins: dict[str, Any] = {
        # every other plugin is off: the cache (on by default) would answer the repeated
        # retrieve itself, and a hit is never decided
        "disable": sorted(known - keep),
        "audit": {"path": params["audit_path"]},
    }
    if mode != "off":
        plugins["rate_limit"] = (
            _rate_limit_table(mode, params.get("redis_url", "")) if table is None else table
        )
    data: dict[str, Any] = {
        "server": {"host": HOST, "port": 0, "drain_timeout": 2.0},
        "upstream": {n: params["upstream"] for n in ("api", "files", "connect", "meter_events")},
        "plugins": plugins,
        "teams": [
            {"name": name, "key_sha256": [_digest(key)], "upstream_key_env": hb.UPSTREAM_KEY_ENV}
            for name, key in (("bench", hb.GATEWAY_KEY), ("tight", TIGHT_KEY))
        ],
    }
    return parse_config(data, source="bench", environ={hb.UPSTREAM_KEY_ENV: hb.UPSTREAM_KEY})


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# =============================================================================== children


async def _serve_gateway(params: dict[str, Any], parent: int) -> None:
    from gateway.app import create_app
    from gateway.keys import GENERATIONS
    from gateway.serve.server import serve

    app = create_app(_config(params["mode"], params))
    names = app[GENERATIONS].current.host.plugin_names()
    stop = asyncio.Event()
    watcher = asyncio.create_task(hb._watch_parent(stop, parent))
    loop = asyncio.get_running_loop()

    def listening(urls: list[str]) -> None:
        port = int(urls[0].rsplit(":", 1)[1])
        hb._announce(
            {"port": port, "pid": os.getpid(), "loop": hb._loop_name(loop), "plugins": names}
        )

    try:
        await serve(app, HOST, 0, drain_timeout=2.0, on_listening=listening, stop=stop)
    finally:
        watcher.cancel()


async def _micro(params: dict[str, Any]) -> dict[str, list[float]]:
    """Part 1: µs per call of the rate-limit plugin's ``gateway_request``, per variant."""
    from aiohttp.test_utils import make_mocked_request

    from gateway.app import create_app
    from gateway.context import RequestContext
    from gateway.errors import StripeErrorResponse
    from gateway.keys import GENERATIONS, METRICS
    from plugins.rate_limit import DECISION, RateLimitPlugin

    n = int(params["n"])
    #: variant -> [wall, CPU] microseconds per decision
    out: dict[str, list[float]] = {}

    async def started(config: Any) -> tuple[RateLimitPlugin, Any]:
        app = create_app(config)
        host = app[GENERATIONS].current.host
        plugin = host.pm.get_plugin("rate_limit")
        assert isinstance(plugin, RateLimitPlugin)
        plugin.gateway_startup(host, app[METRICS])
        plugin._log = _Quiet()  # "redis down" would log its first failure
        return plugin, app

    def context(team: str) -> RequestContext:
        config = _config("memory", params)
        ctx = RequestContext(
            request=make_mocked_request("GET", PATH, headers=AUTH),
            request_id="gwreq_bench",
            upstream_name="api",
            upstream_url="",
        )
        ctx.team = next(t for t in config.teams if t.name == team)
        ctx.upstream_key = hb.UPSTREAM_KEY
        return ctx

    async def timed(label: str, plugin: RateLimitPlugin, ctx: RequestContext, count: int) -> None:
        hook = plugin.gateway_request
        for i in range(min(count, 1000) + count):  # a warm-up, then the timed calls
            if i == min(count, 1000):
                began, cpu = time.perf_counter(), time.process_time()
            try:
                result = hook(ctx)
                if result is not None:
                    await result
            except StripeErrorResponse:
                pass
        out[label] = [
            (time.perf_counter() - began) / count * 1e6,
            (time.process_time() - cpu) / count * 1e6,
        ]

    ctx = context("bench")
    plugin, app = await started(_config("memory", params, table={}))
    await timed("off", plugin, ctx, n)
    assert ctx.state.get(DECISION) is None, ctx.state.get(DECISION)
    plugin, app = await started(_config("memory", params))
    await timed("memory", plugin, ctx, n)
    assert ctx.state.get(DECISION) == "allow", ctx.state.get(DECISION)
    tight = context("tight")
    await timed("memory, refusing", plugin, tight, n)
    assert tight.state.get(DECISION) == "deny", tight.state.get(DECISION)

    for suffix, lease in (("", {}), (", lease 0", {"lease": 0})):
        table = {**_rate_limit_table("redis", params["redis_url"]), **lease}
        plugin, app = await started(_config("redis", params, table=table))
        await timed("redis" + suffix, plugin, ctx, n // 20)
        assert ctx.state.get(DECISION) == "allow", ctx.state.get(DECISION)

        async def several(k: int, plugin: RateLimitPlugin = plugin) -> None:
            for _ in range(k):
                result = plugin.gateway_request(ctx)  # None when decided from a lease
                if result is not None:
                    await result

        tasks, each = 64, max(1, n // 20 // 64)
        began, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(several(each) for _ in range(tasks)))
        out["redis x64" + suffix] = [
            (time.perf_counter() - began) / (tasks * each) * 1e6,
            (time.process_time() - cpu) / (tasks * each) * 1e6,
        ]
        assert plugin.counts["backend_errors"] == 0, plugin.counts
        await plugin.gateway_shutdown(app)

    table = _rate_limit_table("redis", f"redis://{HOST}:{hb.free_port()}/0")
    plugin, app = await started(_config("redis", params, table={**table, "redis_breaker": 3600}))
    await plugin.gateway_request(ctx)  # type: ignore[misc]  # fails: the circuit opens
    await timed("redis down", plugin, ctx, n)
    assert ctx.state.get(DECISION) == "fallback_allow", ctx.state.get(DECISION)
    await plugin.gateway_shutdown(app)
    return out


class _Quiet:
    """A logger that drops everything."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _child_main(role: str, params: dict[str, Any]) -> int:
    cores = params.get("cores")
    if cores:
        os.sched_setaffinity(0, set(cores))
    loop = hb._new_loop(params["loop"])
    asyncio.set_event_loop(loop)
    parent = os.getppid()
    try:
        if role == "upstream":
            loop.run_until_complete(hb._serve_plain(hb._upstream_app(), 0, parent, {}))
        elif role == "gateway":
            loop.run_until_complete(_serve_gateway(params, parent))
        elif role == "micro":
            hb._announce(loop.run_until_complete(_micro(params)))
        else:
            raise SystemExit(f"unknown role {role!r}")
    finally:
        loop.close()
    return 0


# =============================================================================== parent


@dataclass
class Run:
    mode: str
    rps: float
    p50_ms: float
    p99_ms: float
    #: gateway CPU time per request, microseconds
    cpu_us: float
    errors: int
    requests: int
    #: rate-limit decisions counted in the audit log over the warm-up and the timed run
    decisions: dict[str, int]
    #: % of one core used by processes not started here
    other_cpu: float


class RateLimitBench(hb.Bench):
    """The harness's process, pinning and load helpers, with children run from this script."""

    def start(self, role: str, cores: list[int] | None, **params: Any) -> hb.Child:
        log = self.tmp / f"{role}-{params.get('mode', '')}.log"
        payload = {"loop": self.loop_kind, "cores": cores, **params}
        cmd = [sys.executable, str(Path(__file__).resolve()), hb.CHILD_FLAG, role]
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                [*cmd, json.dumps(payload)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        child = hb.Child(role=role, proc=proc, log=log)
        self.children.append(child)
        child.info = self._ready_line(child, timeout=120.0)
        return child

    def start_redis(self, cores: list[int] | None) -> hb.Child:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
        port = hb.free_port()
        log = self.tmp / "redis.log"
        cmd = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        cmd += ["--dir", str(self.tmp)]
        if cores and shutil.which("taskset"):
            cmd = ["taskset", "-c", ",".join(map(str, cores)), *cmd]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        child = hb.Child(role="redis", proc=proc, info={"port": port, "pid": proc.pid}, log=log)
        self.children.append(child)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return child
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)

    def measure_mode(
        self, gateway: hb.Child, mode: str, conns: int, audit: Path, others: list[hb.Child]
    ) -> Run:
        url = gateway.url + PATH
        if self.args.warmup > 0:
            self.load(url, conns, self.args.warmup)
        pids = [gateway.info["pid"], *(c.info["pid"] for c in others)]
        cpu_before = [hb._cpu_seconds(pid) for pid in pids]
        load_before = hb._children_cpu_seconds()
        machine_before = hb._machine_cpu_seconds()
        wall = time.monotonic()
        raw = self.load(url, conns, self.args.duration)
        wall = time.monotonic() - wall
        used = [hb._cpu_seconds(pid) - b for pid, b in zip(pids, cpu_before, strict=True)]
        used.append(hb._children_cpu_seconds() - load_before)
        other = max(0.0, hb._machine_cpu_seconds() - machine_before - sum(used)) / wall * 100
        cpu = [u / wall * 100.0 for u in used]
        time.sleep(0.3)  # the requests in flight when the load stopped finish and log
        seconds = raw["seconds"] or float("nan")
        run = Run(
            mode=mode,
            rps=raw["requests"] / seconds,
            p50_ms=raw["p50_ms"],
            p99_ms=raw["p99_ms"],
            cpu_us=used[0] / raw["requests"] * 1e6 if raw["requests"] else float("nan"),
            errors=raw["errors"] + raw["status_errors"],
            requests=raw["requests"],
            decisions=_audit_decisions(audit),
            other_cpu=other,
        )
        parts = " ".join(f"{c.role} {p:3.0f}" for c, p in zip(others, cpu[1:-1], strict=True))
        flag = f"  ERRORS: {run.errors}" if run.errors else ""
        if set(run.decisions) != {_EXPECTED[mode]}:
            flag += f"  UNEXPECTED DECISIONS: {run.decisions}"
        print(
            f"  {mode:<7} c={conns:<3}{run.rps:8.1f} req/s  p50 {run.p50_ms:6.2f} ms  "
            f"p99 {run.p99_ms:6.2f} ms  cpu/req {run.cpu_us:4.0f} us  "
            f"{_EXPECTED[mode]} x{run.decisions.get(_EXPECTED[mode], 0)} | cpu% gateway "
            f"{cpu[0]:3.0f} {parts} load {cpu[-1]:3.0f} other {other:3.0f}{flag}",
            flush=True,
        )
        return run


#: the one decision every request of a mode's runs must get
_EXPECTED = {"off": "null", "memory": "allow", "redis": "allow"}


def _audit_decisions(audit: Path) -> dict[str, int]:
    """Count the decisions in the audit log, then empty it (the gateway appends)."""
    if not audit.exists():
        return {}
    data = audit.read_bytes()
    os.truncate(audit, 0)  # the file is opened O_APPEND: the next line goes to offset 0
    counts = {d: data.count(f'"rate_limit":"{d}"'.encode()) for d in DECISIONS}
    # no decision: the field is null, or absent (the plugin off adds no field)
    counts["null"] = data.count(b"\n") - sum(counts.values())
    return {k: v for k, v in counts.items() if v}


def _fetch(url: str, key: str) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return response.status, dict(response.headers.items())
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code, dict(exc.headers.items())


def _sanity(gateway: hb.Child, mode: str, audit: Path) -> None:
    """The gateway answers; with the plugin on, the limit headers are there and the
    ``tight`` team is refused after its burst of 2."""
    url = gateway.url + PATH
    status, headers = _fetch(url, hb.GATEWAY_KEY)
    assert status == 200, (mode, status)
    assert ("RateLimit-Limit" in headers) == (mode != "off"), (mode, headers)
    tight = [_fetch(url, TIGHT_KEY)[0] for _ in range(3)]
    assert tight == ([200, 200, 200] if mode == "off" else [200, 200, 429]), (mode, tight)
    time.sleep(0.2)
    _audit_decisions(audit)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="rate-limit-bench-"))
    bench = RateLimitBench(args, tmp)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    atexit.register(bench.stop_all)
    try:
        return _run(args, bench, tmp, started)
    finally:
        bench.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace, bench: RateLimitBench, tmp: Path, started: float) -> int:
    layout = bench.layout
    upstream = bench.start("upstream", layout.upstream)
    redis = bench.start_redis(layout.upstream)
    redis_url = f"redis://{HOST}:{redis.info['port']}/0"
    common = {"upstream": upstream.url, "redis_url": redis_url}
    print("stripe-gateway rate-limit benchmark")
    print(f"  event loop     : {bench.loop_kind} (upstream: {upstream.info['loop']})")
    print(f"  python         : {sys.version.split()[0]}")
    print(f"  cores          : {len(os.sched_getaffinity(0))}; {layout.describe()}")
    print(f"                   redis-server shares the upstream's core; {redis_url}")
    print(
        "  limits         : team read/write and account budget at 1e9/s (never refusing: "
        "two buckets decided per request)"
    )
    print(flush=True)

    print(f"part 1: cost per gateway_request call, {args.calls} calls (redis: 1/20 of them)")
    micro = bench.start(
        "micro",
        layout.server,
        mode="micro",
        n=args.calls,
        audit_path=str(tmp / "m.jsonl"),
        **common,
    )
    base = micro.info["off"][1]
    print(f"  {'':<20}{'wall':>10}{'CPU':>10}{'CPU added':>12}   (us per decision)")
    labels = ("off", "memory", "memory, refusing", "redis", "redis x64")
    for label in (*labels, "redis, lease 0", "redis x64, lease 0", "redis down"):
        wall, cpu = micro.info[label]
        added = "" if label == "off" else f"{cpu - base:12.2f}"
        print(f"  {label:<20}{wall:10.2f}{cpu:10.2f}{added}")
    print(
        "  (redis: one decision at a time, wall = a round trip to redis-server with lease 0;\n"
        "   redis x64: 64 decisions in flight, wall = 1/throughput; CPU = this process's CPU time)"
    )
    print(flush=True)

    gateways: dict[str, hb.Child] = {}
    audits: dict[str, Path] = {}
    for mode in MODES:
        audits[mode] = tmp / f"audit-{mode}.jsonl"
        gateways[mode] = bench.start(
            "gateway", layout.server, mode=mode, audit_path=str(audits[mode]), **common
        )
        _sanity(gateways[mode], mode, audits[mode])
    loadgen = f"wrk ({bench.wrk}, 1 thread)" if bench.wrk else "python aiohttp load generator"
    print(f"part 2: gateway throughput, GET {PATH} at {args.conns} connections, {loadgen}")
    for mode, gw in gateways.items():
        print(f"  gateway {mode:<7}: pid {gw.info['pid']}, plugins {gw.info['plugins']}")
    print(
        f"  runs: warm-up {args.warmup:g} s + {args.duration:g} s each, {args.rounds} round(s)",
        flush=True,
    )
    runs: dict[str, list[Run]] = {mode: [] for mode in MODES}
    for round_no in range(args.rounds):
        print(f"round {round_no + 1}/{args.rounds}", flush=True)
        order = MODES if round_no % 2 == 0 else MODES[::-1]
        for mode in order:
            others = [upstream, redis] if mode == "redis" else [upstream]
            runs[mode].append(
                bench.measure_mode(gateways[mode], mode, args.conns, audits[mode], others)
            )
    _summary(args, runs)
    errors = sum(r.errors for rs in runs.values() for r in rs)
    odd = [r for rs in runs.values() for r in rs if set(r.decisions) != {_EXPECTED[r.mode]}]
    if errors:
        print(f"  WARNING  {errors} failed or non-200 responses: the numbers above are suspect")
    if odd:
        print(f"  WARNING  {len(odd)} run(s) had unexpected decisions (see above)")
    if args.quick:
        print("  (--quick: short runs, for a smoke test only)")
    print(f"\ntotal time {time.monotonic() - started:.0f} s", flush=True)
    return 1 if errors or odd else 0


def _summary(args: argparse.Namespace, runs: dict[str, list[Run]]) -> None:
    print()
    print(
        f"summary: medians over {args.rounds} round(s); ratio = mode / off, median of the "
        "per-round ratios"
    )
    print(f"  {'':<24}{'off':>10}{'memory':>10}{'redis':>10}{'memory/off':>12}{'redis/off':>11}")
    for label, metric, digits in (
        ("req/s", "rps", 1),
        ("p50 ms", "p50_ms", 2),
        ("p99 ms", "p99_ms", 2),
        ("gateway CPU us/request", "cpu_us", 1),
    ):
        med = {m: statistics.median(getattr(r, metric) for r in runs[m]) for m in MODES}
        ratios = [
            statistics.median(
                getattr(a, metric) / getattr(b, metric) if getattr(b, metric) else float("nan")
                for a, b in zip(runs[m], runs["off"], strict=True)
            )
            for m in ("memory", "redis")
        ]
        print(
            f"  {label:<24}"
            + "".join(f"{med[m]:>10.{digits}f}" for m in MODES)
            + f"{ratios[0]:>12.3f}{ratios[1]:>11.3f}"
        )
    cpu = {m: statistics.median(r.cpu_us for r in runs[m]) for m in MODES}
    print(
        f"  added gateway CPU per request: memory {cpu['memory'] - cpu['off']:+.1f} us, "
        f"redis {cpu['redis'] - cpu['off']:+.1f} us"
    )
    busy = max(r.other_cpu for rs in runs.values() for r in rs)
    if busy > hb.BUSY_MACHINE_PCT:
        print(
            f"  WARNING  other processes used up to {busy:.0f}% of a core during a run: "
            "the machine was not quiet, rerun for firmer numbers"
        )


def _parser() -> argparse.ArgumentParser:
    parser = hb.load_parser(__doc__, "about 25 s", 50, "concurrent connections")
    parser.add_argument("--calls", type=int, default=200_000, help="part 1 calls per variant")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [hb.CHILD_FLAG]:
        return _child_main(argv[1], json.loads(argv[2]))
    args = hb.load_args(_parser(), argv)
    if args.quick:
        args.calls = 40_000
    if args.calls < 1000:
        raise SystemExit("--calls must be at least 1000")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
