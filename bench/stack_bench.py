"""The whole plugin stack against a bare aiohttp pass-through: every row of issue 16's table.

Run from the repository root (about 6 minutes; ``--quick`` for a one-minute smoke run)::

    .venv/bin/python bench/stack_bench.py

Every part runs in its own process, on 127.0.0.1 only (``harness.py``'s processes, core
pinning, CPU accounting and load generators: ``wrk`` when installed): the upstream, the
bare pass-through (``baseline``), a redis-server on a free port, and one gateway process
per configuration below, all started before anything is measured and measured one at a
time, pinned to the same core as the baseline, on the same event loop (uvloop).

Gateways (``[plugins] disable`` lists every plugin not named; ``audit`` writes to a file
with ``params = true``; ``rate_limit`` has limits so high nothing is refused; ``metrics``
counts only with the admin listener on, so it is on):

* ``bare``: no plugin at all (the client's Authorization goes upstream as sent);
* one per plugin, alone (``auth``, ``audit``, ``rate_limit``, ``idempotency``,
  ``metrics``, ``cache``) and ``audit+red`` (audit and redaction: redaction alone only
  redacts lines nobody writes): the per-plugin CPU table, each over ``bare``;
* ``A`` = auth + audit + redaction; ``B`` = A + rate_limit (memory) + idempotency +
  metrics; ``B/rl-redis``: B with the Redis rate limiter (leases on, the default),
  ``B/rl-redis0`` with ``lease = 0`` (for information); ``C`` = B + cache (memory),
  measured on a miss that is stored (``Cache-Control: no-cache``) and on a hit;
  ``C/redis``: C with the Redis cache, on a hit.

Ratios are gateway/baseline req/s at 50 connections, each round's baseline measured in
the same round (twice: first and last of the round's 50-connection runs, averaged), and
are medians of the per-round ratios. Every line also shows the gateway's CPU time per
request, the number a busy machine moves least: the per-plugin table is made of those.
The exit status is 1 when a run had failed or non-200 responses, or (``--strict``) when
an aim is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# bench/ is not a package: import the shared harness from this directory
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb
from cache_bench import CacheBench

HOST = hb.HOST
AUTH = {"Authorization": f"Bearer {hb.GATEWAY_KEY}"}
NO_CACHE = {"Cache-Control": "no-cache"}
#: so high that nothing is refused: every request is decided and allowed
OPEN = {"rate": 1e9, "burst": 1_000_000_000}

A = ("auth", "audit", "redaction")
B = (*A, "rate_limit", "idempotency", "metrics")
C = (*B, "cache")


@dataclass(frozen=True)
class Gateway:
    """One gateway process: its plugins and how its stores are backed."""

    name: str
    plugins: tuple[str, ...]
    rate_limit: str = "memory"
    cache: str = "memory"


GATEWAYS = (
    Gateway("bare", ()),
    Gateway("auth", ("auth",)),
    Gateway("audit", ("audit",)),
    Gateway("audit+red", ("audit", "redaction")),
    Gateway("rate_limit", ("rate_limit",)),
    Gateway("idempotency", ("idempotency",)),
    Gateway("metrics", ("metrics",)),
    Gateway("cache", ("cache",)),
    Gateway("A", A),
    Gateway("B", B),
    Gateway("B/rl-redis", B, rate_limit="redis"),
    Gateway("B/rl-redis0", B, rate_limit="redis-lease0"),
    Gateway("C", C),
    Gateway("C/redis", C, cache="redis"),
)

#: the per-plugin table: (plugin, gateway measured, gateway it adds to, request headers)
BREAKDOWN = (
    ("auth", "auth", "bare", {}),
    ("audit (params, to a file)", "audit", "bare", {}),
    ("redaction (of the audit line)", "audit+red", "audit", {}),
    ("rate_limit (memory)", "rate_limit", "bare", {}),
    ("idempotency", "idempotency", "bare", {}),
    ("metrics (admin listener on)", "metrics", "bare", {}),
    ("cache (miss, stored)", "cache", "bare", NO_CACHE),
)

#: the 50-connection runs of a round: (label, gateway, headers); the baseline frames them
RPS_RUNS = (
    ("bare", "bare", {}),
    ("auth", "auth", {}),
    ("audit", "audit", {}),
    ("audit+red", "audit+red", {}),
    ("rate_limit", "rate_limit", {}),
    ("idempotency", "idempotency", {}),
    ("metrics", "metrics", {}),
    ("cache", "cache", NO_CACHE),
    ("A", "A", {}),
    ("B", "B", {}),
)

#: the runs the throughput aims are read from, measured after those, in a palindrome framed
#: by the baseline (baseline, these, these reversed, baseline): each has the baseline at
#: its own mean time, so a machine whose speed drifts during the round (seen here: the
#: baseline 2x faster at a round's end) does not decide the verdict
AIM_RUNS = (
    ("C miss", "C", NO_CACHE),
    ("C hit", "C", {}),
    ("C/redis hit", "C/redis", {}),
)

#: (row of the issue's table, run label, aim as a ratio of the baseline's req/s or None)
TABLE = (
    ("gateway, auth + audit (to a file) + redaction", "A", None),
    ("+ rate_limit (memory) + idempotency + metrics (admin listener on)", "B", None),
    ("+ cache, every request a miss that is stored (no-cache)", "C miss", 0.8),
    ("cache hit, every plugin on", "C hit", 2.0),
    ("Redis cache hit, every plugin on", "C/redis hit", 1.5),
)
AIM_P99 = 1.5
#: the label of the baseline's runs that frame the aims' palindrome
AIM_BASE = "baseline (aims)"
AIM_RL_REDIS_P50_MS = 0.3
AIM_DOWNLOAD = 0.9
AIM_RSS_MB = 20.0


# =============================================================================== children


def _config(params: dict[str, Any]) -> Any:
    from importlib.metadata import entry_points

    from gateway.config import parse_config
    from gateway.host import DEFAULT_PLUGINS, ENTRY_POINT_GROUP

    keep = set(params["plugins"])
    known = {name for name, _ in DEFAULT_PLUGINS} | {
        ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)
    }
    upstream = params["upstream"]
    plugins: dict[str, Any] = {"disable": sorted(known - keep)}
    if "audit" in keep:
        plugins["audit"] = {"path": params["audit_path"], "params": True}
    if "rate_limit" in keep:
        table: dict[str, Any] = {"default": {"read": OPEN, "write": OPEN}, "account": OPEN}
        if params["rate_limit"] in ("redis", "redis-lease0"):
            table.update(backend="redis", redis_url=params["redis_url"], redis_timeout=0.5)
        if params["rate_limit"] == "redis-lease0":  # every request asks Redis (exact)
            table.update(lease=0)
        plugins["rate_limit"] = table
    if "cache" in keep:
        cache: dict[str, Any] = {"default_ttl": 3600}
        if params["cache"] == "redis":
            cache.update(backend="redis", redis_url=params["redis_url"], redis_timeout=0.5)
        plugins["cache"] = cache
    data: dict[str, Any] = {
        "server": {"host": HOST, "port": 0, "drain_timeout": 2.0},
        "upstream": {name: upstream for name in ("api", "files", "connect", "meter_events")},
        "plugins": plugins,
        "teams": [
            {
                "name": "bench",
                "key_sha256": [hashlib.sha256(hb.GATEWAY_KEY.encode()).hexdigest()],
                "upstream_key_env": hb.UPSTREAM_KEY_ENV,
            }
        ],
    }
    if "metrics" in keep:  # metrics count only when the admin listener that shows them is on
        data["admin"] = {"host": HOST, "port": hb.free_port()}
    return parse_config(data, source="bench", environ={hb.UPSTREAM_KEY_ENV: hb.UPSTREAM_KEY})


async def _serve_gateway(params: dict[str, Any], parent: int) -> None:
    from gateway.app import create_app
    from gateway.keys import GENERATIONS
    from gateway.serve.server import serve

    app = create_app(_config(params))
    plugins = app[GENERATIONS].current.host.plugin_names()
    stop = asyncio.Event()
    watcher = asyncio.create_task(hb._watch_parent(stop, parent))
    loop = asyncio.get_running_loop()

    def listening(urls: list[str]) -> None:
        port = int(urls[0].rsplit(":", 1)[1])
        info = {"port": port, "pid": os.getpid(), "loop": hb._loop_name(loop), "plugins": plugins}
        hb._announce(info)

    try:
        await serve(app, HOST, 0, drain_timeout=2.0, on_listening=listening, stop=stop)
    finally:
        watcher.cancel()


def _child_main(role: str, params: dict[str, Any]) -> int:
    if role != "gateway":
        return hb._child_main(role, params)
    cores = params.get("cores")
    if cores:
        os.sched_setaffinity(0, set(cores))
    loop = hb._new_loop(params["loop"])
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve_gateway(params, os.getppid()))
    finally:
        loop.close()
    return 0


# =============================================================================== parent


class StackBench(CacheBench):
    """The harness's helpers (and cache_bench's redis-server), children from this script."""

    def start(self, role: str, cores: list[int] | None, **params: Any) -> hb.Child:
        log = self.tmp / f"{role}-{params.get('name', '')}.log".replace("/", "_")
        payload = {"loop": self.loop_kind, "cores": cores, **params}
        cmd = [sys.executable, str(Path(__file__).resolve()), hb.CHILD_FLAG, role]
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                [*cmd, json.dumps(payload)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        child = hb.Child(role=params.get("name", role), proc=proc, log=log)
        self.children.append(child)
        child.info = self._ready_line(child, timeout=60.0)
        return child


@dataclass
class Runs:
    """Every result of the run, by (scenario, label), one per round."""

    by: dict[tuple[str, str], list[hb.Result]] = field(default_factory=dict)
    #: per round: the baseline's req/s at 50 connections (mean of its two runs)
    baseline_rps: list[float] = field(default_factory=list)
    baseline_cpu: list[float] = field(default_factory=list)
    #: per round: the baseline of the aims' palindrome (mean of its two runs)
    aim_baseline_rps: list[float] = field(default_factory=list)
    aim_baseline_cpu: list[float] = field(default_factory=list)
    rss: list[tuple[int, int, int]] = field(default_factory=list)

    def add(self, result: hb.Result) -> None:
        self.by.setdefault((result.scenario, result.target), []).append(result)

    def get(self, scenario: str, label: str) -> list[hb.Result]:
        return self.by.get((scenario, label), [])


def _fetch(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def _sanity(gateways: dict[str, hb.Child], audits: dict[str, Path]) -> None:
    """Every gateway answers; the cache gateways miss with no-cache and hit without; the
    audit lines are written, with ``params``."""
    for name, gateway in gateways.items():
        status, _, body = _fetch(gateway.url + hb.CUSTOMER_PATH, {**AUTH, **NO_CACHE})
        assert status == 200 and json.loads(body)["id"] == hb._CUSTOMER["id"], (name, status)
    for name in ("C", "C/redis", "cache"):
        url = gateways[name].url + hb.CUSTOMER_PATH
        assert _fetch(url, {**AUTH, **NO_CACHE})[1].get("X-Cache") == "MISS", name
        assert _fetch(url, AUTH)[1].get("X-Cache") == "HIT", name
    status, _, _ = _fetch(gateways["A"].url + hb.CUSTOMER_PATH, {})
    assert status == 401, f"gateway A without a key answered {status}, expected 401"
    for name, audit in audits.items():
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not audit.exists():
            time.sleep(0.05)
        lines = audit.read_text().splitlines() if audit.exists() else []
        assert lines, f"no audit line from gateway {name} in {audit}"
        assert "params" in json.loads(lines[-1]), (name, lines[-1][:300])


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="stack-bench-"))
    bench = StackBench(args, tmp)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    atexit.register(bench.stop_all)
    try:
        return _run(args, bench, tmp, started)
    finally:
        bench.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace, bench: StackBench, tmp: Path, started: float) -> int:
    layout = bench.layout
    upstream = bench.start("upstream", layout.upstream, name="upstream")
    redis = bench.start_redis(layout.upstream)
    redis_url = f"redis://{HOST}:{redis.info['port']}/0"
    baseline = bench.start("baseline", layout.server, name="baseline", upstream=upstream.url)
    gateways: dict[str, hb.Child] = {}
    audits: dict[str, Path] = {}
    for g in GATEWAYS:
        audit = tmp / f"audit-{g.name.replace('/', '_')}.jsonl"
        if "audit" in g.plugins:
            audits[g.name] = audit
        gateways[g.name] = bench.start(
            "gateway",
            layout.server,
            name=g.name,
            upstream=upstream.url,
            audit_path=str(audit),
            plugins=list(g.plugins),
            rate_limit=g.rate_limit,
            cache=g.cache,
            redis_url=redis_url,
        )
    print("stripe-gateway stack benchmark (issue 16)")
    print(f"  event loop     : {bench.loop_kind}; python {sys.version.split()[0]}")
    print(f"  cores          : {len(os.sched_getaffinity(0))}; {layout.describe()}")
    print(f"  load generator : {'wrk ' + bench.wrk if bench.wrk else 'python (harness loadgen)'}")
    print(f"  redis-server   : {redis_url} ({redis.info['version']})")
    for g in GATEWAYS:
        on = ", ".join(g.plugins) or "none"
        extra = f" rate_limit={g.rate_limit}" if "rate_limit" in g.plugins else ""
        extra += f" cache={g.cache}" if "cache" in g.plugins else ""
        print(f"  gateway {g.name:<12}: {on}{extra}")
    print(
        f"  runs           : warm-up {args.warmup:g} s + {args.duration:g} s each, "
        f"{args.rounds} round(s), median over rounds"
    )
    print(flush=True)
    _sanity(gateways, audits)

    runs = Runs()
    path = hb.CUSTOMER_PATH

    def measure_all(sequence: Iterable[tuple[str, str, dict[str, str]]]) -> None:
        """The 50-connection runs of ``sequence`` (label, gateway, headers), one by one."""
        for label, name, headers in sequence:
            others = (redis,) if "redis" in name else ()
            runs.add(
                bench.measure(
                    gateways[name],
                    "rps",
                    path,
                    args.conns,
                    upstream,
                    headers=headers,
                    label=label,
                    others=others,
                )
            )

    for round_no in range(args.rounds):
        print(f"round {round_no + 1}/{args.rounds}", flush=True)
        order = list(RPS_RUNS) if round_no % 2 == 0 else list(reversed(RPS_RUNS))
        first = bench.measure(baseline, "rps", path, args.conns, upstream)
        measure_all(order)
        last = bench.measure(baseline, "rps", path, args.conns, upstream)
        framed = [bench.measure(baseline, "rps", path, args.conns, upstream, label=AIM_BASE)]
        measure_all((*AIM_RUNS, *reversed(AIM_RUNS)))
        framed.append(bench.measure(baseline, "rps", path, args.conns, upstream, label=AIM_BASE))
        for r in framed:
            runs.add(r)
        runs.aim_baseline_rps.append(statistics.fmean(r.rps for r in framed))
        runs.aim_baseline_cpu.append(statistics.fmean(r.cpu_us for r in framed))
        runs.baseline_rps.append((first.rps + last.rps) / 2)
        runs.baseline_cpu.append((first.cpu_us + last.cpu_us) / 2)
        for r in (first, last):
            runs.add(r)
        # latency at 10 connections: the baseline, every plugin on (a miss), and the
        # rate limiters, in a palindrome (A B C C B A): each target's two runs sit at the
        # same mean time, so a machine that speeds up or slows down steadily over the
        # round (seen here: the baseline 30 % faster at a round's end than at its start)
        # favours none of them; the round's figure of a target is the mean of its two
        latency = [
            (baseline, "baseline", {}, ()),
            (gateways["C"], "C miss", NO_CACHE, ()),
            (gateways["B"], "B", {}, ()),
            (gateways["B/rl-redis"], "B/rl-redis", {}, (redis,)),
            (gateways["B/rl-redis0"], "B/rl-redis0", {}, (redis,)),
        ]
        latency += reversed(latency)
        for target, label, headers, others in latency:
            runs.add(
                bench.measure(
                    target,
                    "latency",
                    path,
                    args.latency_conns,
                    upstream,
                    headers=headers,
                    label=label,
                    others=others,
                )
            )
        download = [(baseline, "baseline"), (gateways["C"], "C")]
        if round_no % 2:
            download.reverse()
        for target, label in download:
            if target is baseline:
                runs.add(bench.measure(target, "download", hb.DOWNLOAD_PATH, 8, upstream))
                continue
            pid = target.info["pid"]
            before = hb._rss_kb(pid)
            with hb._rss_sampler(pid) as samples:
                result = bench.measure(
                    target, "download", hb.DOWNLOAD_PATH, 8, upstream, label=label
                )
            after = hb._rss_kb(pid)
            runs.rss.append((before, after, max([before, after, *samples])))
            runs.add(result)
    ok = _summary(args, runs)
    errors = sum(r.errors for results in runs.by.values() for r in results)
    if errors:
        print(f"  WARNING  {errors} failed or non-200 responses: the numbers above are suspect")
    if args.quick:
        print("  (--quick: short runs, for a smoke test only; use the full run for the verdict)")
    print(f"\ntotal time {time.monotonic() - started:.0f} s", flush=True)
    if errors:
        return 1
    return 1 if args.strict and not ok else 0


#: runs of each target per round at 10 connections (the palindrome's two halves)
LATENCY_REPEATS = 2


def _per_round(results: list[hb.Result]) -> list[dict[str, float]]:
    """A latency target's figures per round: the means of its runs in that round."""
    rounds = []
    for i in range(0, len(results) - LATENCY_REPEATS + 1, LATENCY_REPEATS):
        chunk = results[i : i + LATENCY_REPEATS]
        rounds.append(
            {
                "p50": statistics.fmean(r.p50_ms for r in chunk),
                "p99": statistics.fmean(r.p99_ms for r in chunk),
                "cpu": statistics.fmean(r.cpu_us for r in chunk),
            }
        )
    return rounds


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def _summary(args: argparse.Namespace, runs: Runs) -> bool:
    """Print the issue's table, the per-plugin table and the aims; True when all are met."""
    all_ok = True
    base_rps = runs.baseline_rps
    base_cpu = _median(runs.baseline_cpu)
    print()
    print(
        f"issue 16 table: ratios to the bare aiohttp pass-through (median of per-round "
        f"ratios; baseline {_median(base_rps):.0f} req/s, CPU {base_cpu:.0f} us/request)"
    )
    print(f"  {'target':<68}{'req/s':>8}{'thru':>7}{'CPU/req':>9}{'CPU':>7}  aim")
    aim_labels = {label for label, _, _ in AIM_RUNS}
    for text, label, aim in TABLE:
        results = runs.get("rps", label)
        if not results:
            continue
        if label in aim_labels:  # two runs a round, against the palindrome's baseline
            rounds = [results[i : i + 2] for i in range(0, len(results) - 1, 2)]
            rps = [statistics.fmean(r.rps for r in pair) for pair in rounds]
            cpus = [statistics.fmean(r.cpu_us for r in pair) for pair in rounds]
            ratio = _median([r / b for r, b in zip(rps, runs.aim_baseline_rps, strict=True)])
            cpu_ratio = _median([c / b for c, b in zip(cpus, runs.aim_baseline_cpu, strict=True)])
        else:
            rps = [r.rps for r in results]
            cpus = [r.cpu_us for r in results]
            ratio = _median([r / b for r, b in zip(rps, base_rps, strict=False)])
            cpu_ratio = _median(cpus) / base_cpu
        cpu = _median(cpus)
        line = f"  {text:<68}{_median(rps):>8.0f}{ratio:>6.2f}x{cpu:>7.0f}us{cpu_ratio:>6.2f}x"
        if aim is not None:
            ok = ratio >= aim
            all_ok &= ok
            line += f"  >= {aim}x {_verdict(ok)}"
        print(line)

    print()
    print("per-plugin cost: each plugin alone, over the gateway it adds to (50 connections)")
    print(f"  {'plugin':<34}{'over':>10}{'CPU/req':>10}{'adds':>10}{'thru':>8}")
    bare = runs.get("rps", "bare")
    if bare:
        bare_cpu = _median([r.cpu_us for r in bare])
        ratio = _median([r.rps / b for r, b in zip(bare, base_rps, strict=False)])
        print(
            f"  {'bare gateway (no plugin)':<34}{'baseline':>10}{bare_cpu:>8.0f}us"
            f"{bare_cpu - base_cpu:>+8.0f}us{ratio:>7.2f}x"
        )
    for text, label, over, _ in BREAKDOWN:
        results, below = runs.get("rps", label), runs.get("rps", over)
        if not results or not below:
            continue
        cpu = _median([r.cpu_us for r in results])
        adds = _median([r.cpu_us - b.cpu_us for r, b in zip(results, below, strict=True)])
        ratio = _median([r.rps / b.rps for r, b in zip(results, below, strict=True)])
        print(f"  {text:<34}{over:>10}{cpu:>8.0f}us{adds:>+8.0f}us{ratio:>7.2f}x")

    print()
    print("latency (10 connections), Redis rate limiter, 5 MB download")
    lat_base = _per_round(runs.get("latency", "baseline"))
    lat_all = _per_round(runs.get("latency", "C miss"))
    if lat_base and lat_all:
        p99 = _median([g["p99"] / b["p99"] for g, b in zip(lat_all, lat_base, strict=True)])
        ok = p99 <= AIM_P99
        all_ok &= ok
        print(
            f"  {'p99, every plugin on (cache miss)':<52}"
            f"{_median([r['p99'] for r in lat_all]):>7.2f} ms vs "
            f"{_median([r['p99'] for r in lat_base]):.2f} ms  {p99:.2f}x"
            f"  <= {AIM_P99}x {_verdict(ok)}"
        )
    mem = _per_round(runs.get("latency", "B"))
    red = _per_round(runs.get("latency", "B/rl-redis"))
    if mem and red:
        delta = _median([r["p50"] - m["p50"] for r, m in zip(red, mem, strict=True)])
        cpu = _median([r["cpu"] - m["cpu"] for r, m in zip(red, mem, strict=True)])
        ok = delta <= AIM_RL_REDIS_P50_MS
        all_ok &= ok
        print(
            f"  {'Redis rate limiter over memory, p50 (B vs B/rl-redis)':<52}"
            f"{delta:>+7.3f} ms (CPU {cpu:+.0f} us/request)"
            f"  <= {AIM_RL_REDIS_P50_MS} ms {_verdict(ok)}"
        )
    exact = _per_round(runs.get("latency", "B/rl-redis0"))
    if mem and exact:  # for information: leases off, one Redis round trip a request
        delta = _median([r["p50"] - m["p50"] for r, m in zip(exact, mem, strict=True)])
        cpu = _median([r["cpu"] - m["cpu"] for r, m in zip(exact, mem, strict=True)])
        print(
            f"  {'  the same with lease = 0 (B vs B/rl-redis0)':<52}"
            f"{delta:>+7.3f} ms (CPU {cpu:+.0f} us/request)  (information)"
        )
    down_base, down = runs.get("download", "baseline"), runs.get("download", "C")
    if down_base and down:
        ratio = _median([g.mb_per_s / b.mb_per_s for g, b in zip(down, down_base, strict=True)])
        ok = ratio >= AIM_DOWNLOAD
        all_ok &= ok
        print(
            f"  {'5 MB download, every plugin on, MB/s':<52}"
            f"{_median([r.mb_per_s for r in down]):>7.1f} vs "
            f"{_median([r.mb_per_s for r in down_base]):.1f}  {ratio:.2f}x"
            f"  >= {AIM_DOWNLOAD}x {_verdict(ok)}"
        )
        growth = max((after - before) / 1024 for before, after, _ in runs.rss)
        peak = max((peak - before) / 1024 for before, _, peak in runs.rss)
        ok = growth < AIM_RSS_MB
        all_ok &= ok
        print(
            f"  {'gateway RSS growth over a download run':<52}{growth:>+7.1f} MB "
            f"(peak {peak:+.1f} MB)  < {AIM_RSS_MB:g} MB {_verdict(ok)}"
        )
    busy = max(r.other_cpu for results in runs.by.values() for r in results)
    if busy > hb.BUSY_MACHINE_PCT:
        print(
            f"  WARNING  other processes used up to {busy:.0f}% of a core during a run: the "
            "req/s ratios are noisy; the CPU/request columns are the steadier numbers"
        )
    return all_ok


def _parser() -> argparse.ArgumentParser:
    parser = hb.load_parser(__doc__, "about 1 minute", 50, "connections, throughput runs")
    parser.add_argument("--latency-conns", type=int, default=10, help="connections, p99 runs")
    parser.add_argument("--strict", action="store_true", help="exit 1 when an aim is missed")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [hb.CHILD_FLAG]:
        return _child_main(argv[1], json.loads(argv[2]))
    args = hb.load_args(_parser(), argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
