"""Webhook ingress: how fast the gateway acknowledges Stripe's events, how late at a steady
rate, how fast it delivers them, and that a ``kill -9`` loses none it acknowledged.

Run from the repository root (about 80 seconds a backend; ``--quick`` for a short smoke run)::

    .venv/bin/python bench/webhook_bench.py
    .venv/bin/python bench/webhook_bench.py --quick
    .venv/bin/python bench/webhook_bench.py --backend redis     # the shared-queue backend
    .venv/bin/python bench/webhook_bench.py --backend both      # sqlite, then redis
    .venv/bin/python bench/webhook_bench.py --quick --profile   # where the gateway's CPU goes

Processes, all on 127.0.0.1, nothing pinned:

* ``gateway``     ``stripe-gateway serve --config FILE`` (workers_bench's launcher) with the
  ``webhooks`` plugin: one source (``POST /webhooks/stripe``), one subscription to the
  subscriber below (``max_concurrency`` from ``--max-concurrency``, ``timeout = 2``), the
  store ``sqlite`` (a file in a temp dir) or ``redis`` (a redis-server this script starts on
  a free port, cache_bench's helper, without persistence); the default plugins otherwise,
  audit to a file (every event and attempt is an audit line). With ``--profile`` it runs
  under ``cProfile`` (slower) and the top functions are printed at the end;
* ``subscriber``  a child of this script: an aiohttp endpoint that checks each delivery's
  ``Stripe-Signature`` (the subscription's secret) and records its event id and time;
* ``poster``      a child of this script posting unique events (~700 bytes, like an
  ``invoice.paid``), signed with the source's secret as Stripe signs them, and timing each
  acknowledgement: a closed loop of ``--conns`` clients (each sends its next event when the
  last is answered), or an open loop at ``--rate`` events/s.

Phases:

1. **Most events/s** (closed loop): the posters run ``--duration`` seconds. Printed: events
   acknowledged per second, p50/p99/max acknowledgement latency, errors, the gateway's CPU
   per event and the CPU of processes not started here (``other``; over 25 % of a core the
   figures are suspect). A closed loop's latency is ``conns / throughput`` (Little's law),
   so its p99 says how deep the queue was, not how late an event is at a given rate.
2. **Delivery**: from the start of phase 1 until the subscriber has every acknowledged
   event: events delivered per second, and how long after the load the last one arrived.
3. **Latency at a rate** (open loop): event ``i`` is sent at ``start + i / --rate`` whatever
   the earlier ones got, and its latency counts from then (so a stall is not hidden by the
   load slowing down: no coordinated omission). Printed as phase 1, with the rate achieved.
4. **kill -9**: the closed-loop posters run again; ``--kill-after`` seconds in, the gateway
   gets SIGKILL while acknowledging; it is started again on the same store, and the script
   waits (up to ``--deadline`` seconds: a delivery cut off mid-attempt waits for its lease,
   the subscription's ``timeout`` + 10 s) until the subscriber has every event acknowledged
   before the kill. Printed: acknowledged, delivered, **lost** (acknowledged, never
   delivered), and the at-least-once extras (events posted but not acknowledged that were
   stored before the kill, and repeated deliveries).

Aims (from the issue): >= 500 events/s acknowledged (phase 1), p99 <= 50 ms at 500 events/s
(phase 3, which must also reach 95 % of ``--rate``), no loss (phase 4). Exit status 0, or 1
when an event was lost, a delivery had a bad signature or the gateway failed; with
``--strict`` also when an aim is missed; 2 when the gateway refuses the config (the
``redis`` backend on a tree without it). Every process it started is stopped when it
exits.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

# bench/ is not a package: import the sibling scripts' helpers from this directory
sys.path.insert(0, str(Path(__file__).resolve().parent))
import cache_bench as cb
import harness as hb
import workers_bench as wb

REPO = Path(__file__).resolve().parents[1]
SOURCE_PATH = "/webhooks/stripe"
SOURCE_SECRET = "whsec_bench_source_000000000000000001"
TEAM_SECRET = "whsec_bench_team_0000000000000000001"
AIM_RATE = 500.0
AIM_P99_MS = 50.0


# =============================================================================== children


def _sign(body: bytes, secret: str, timestamp: int) -> str:
    signed = str(timestamp).encode() + b"." + body
    return f"t={timestamp},v1={hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}"


def _verified(body: bytes, header: str, secret: str) -> bool:
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    if "t" not in parts or "v1" not in parts:
        return False
    expected = _sign(body, secret, int(parts["t"])).split("v1=")[1]
    return hmac.compare_digest(expected, parts["v1"])


def _event(event_id: str) -> bytes:
    """An ``invoice.paid`` event as Stripe formats it (about 700 bytes)."""
    event = {
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "data": {
            "object": {
                "id": "in_" + event_id.removeprefix("evt_")[-24:],
                "object": "invoice",
                "amount_due": 2000,
                "amount_paid": 2000,
                "currency": "usd",
                "customer": "cus_Bench00000001",
                "status": "paid",
                "lines": {"object": "list", "data": [], "has_more": False},
                "metadata": {"order_id": "6735"},
            }
        },
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": "invoice.paid",
    }
    return json.dumps(event, indent=2).encode()


async def _subscriber(params: dict[str, Any]) -> None:
    from aiohttp import web

    secret: str = params["secret"]
    seen: dict[str, float] = {}
    counts = {"deliveries": 0, "bad_signatures": 0}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        counts["deliveries"] += 1
        if not _verified(body, request.headers.get("Stripe-Signature", ""), secret):
            counts["bad_signatures"] += 1
            return web.Response(status=400)
        event_id = json.loads(body)["id"]
        seen.setdefault(event_id, time.time())
        return web.Response(text="ok")

    async def stats(request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "")
        times = sorted(t for i, t in seen.items() if i.startswith(prefix))
        data = {
            **counts,
            "distinct": len(times),
            "first": times[0] if times else None,
            "last": times[-1] if times else None,
        }
        if request.query.get("ids"):
            data["ids"] = [i for i in seen if i.startswith(prefix)]
        return web.json_response(data)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/stats", stats)
    await hb._serve_plain(app, 0, os.getppid(), {})


def _signed_post(body: bytes, secret: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": _sign(body, secret, int(time.time())),
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
    }


async def _poster(params: dict[str, Any]) -> dict[str, Any]:
    """Closed loop (``rate`` 0): ``conns`` clients, each posting one unique signed event at a
    time. Open loop (``rate`` > 0): event ``i`` is due at ``start + i / rate`` and is sent
    then whatever the earlier ones got (on up to ``conns`` connections; a post waiting for
    a free one is still late), its latency counted from when it was due, so a stalled
    gateway shows in the percentiles instead of slowing the load (coordinated omission)."""
    import aiohttp

    url: str = params["url"]
    secret: str = params["secret"]
    prefix: str = params["prefix"]
    rate = float(params.get("rate", 0.0))
    acked: list[str] = []
    latencies: list[float] = []
    counts = {"errors": 0, "status_errors": 0, "sent": 0}
    connector = aiohttp.TCPConnector(limit=params["conns"], limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(event_id: str, since: float) -> bool:
            """Post one event; ``since`` is when it was due (its latency's start)."""
            body = _event(event_id)
            counts["sent"] += 1
            try:
                async with session.post(url, data=body, headers=_signed_post(body, secret)) as r:
                    await r.read()
                    if r.status != 200:
                        counts["status_errors"] += 1
                        return False
            except (aiohttp.ClientError, OSError, TimeoutError):
                counts["errors"] += 1
                return False
            latency = time.perf_counter() - since
            latencies.append(latency)
            acked.append(event_id)
            if latency > slow[0]:
                slow[:] = [latency, since - started]
            return True

        started = time.perf_counter()
        deadline = started + float(params["duration"])
        slow = [0.0, 0.0]  # the slowest acknowledgement, and when (s into the load) it was due
        if rate > 0:
            tasks: set[asyncio.Task[bool]] = set()
            n = 0
            while True:
                due = started + n / rate
                if due >= deadline:
                    break
                now = time.perf_counter()
                if due > now:
                    await asyncio.sleep(due - now)
                task = asyncio.ensure_future(send(f"{prefix}{n:08d}", due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
            if tasks:
                await asyncio.wait(tasks)
        else:

            async def client(n: int) -> None:
                sent = 0
                while time.perf_counter() < deadline:
                    event_id = f"{prefix}{n:03d}_{sent:07d}"
                    sent += 1
                    if not await send(event_id, time.perf_counter()):
                        await asyncio.sleep(0.01)

            await asyncio.gather(*(client(n) for n in range(params["conns"])))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "acked": len(acked),
        "ids": acked,
        "seconds": elapsed,
        **counts,
        "p50_ms": hb._percentile(latencies, 50) * 1000.0,
        "p99_ms": hb._percentile(latencies, 99) * 1000.0,
        "max_ms": (latencies[-1] if latencies else 0.0) * 1000.0,
        "max_at": slow[1],
        "slow_100ms": sum(1 for latency in latencies if latency > 0.1),
    }


def _child_main(role: str, params: dict[str, Any]) -> int:
    loop = hb._new_loop(params["loop"])
    asyncio.set_event_loop(loop)
    try:
        if role == "subscriber":
            loop.run_until_complete(_subscriber(params))
        elif role == "poster":
            hb._announce(loop.run_until_complete(_poster(params)))
        else:
            raise SystemExit(f"unknown role {role!r}")
    finally:
        loop.close()
    return 0


# =============================================================================== parent


class WebhookBench(cb.CacheBench):
    """The harness's process helpers (and cache_bench's redis-server), children from here."""

    def start(self, role: str, cores: list[int] | None, **params: Any) -> hb.Child:
        log = self.tmp / f"{role}.log"
        payload = {"loop": self.loop_kind, **params}
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
        child.info = self._ready_line(child, timeout=30.0)
        return child

    def post(
        self, url: str, prefix: str, seconds: float, rate: float = 0.0
    ) -> subprocess.Popen[bytes]:
        """Start the posters (a child that prints its result when done): closed loop, or
        open at ``rate`` events/s."""
        payload = {
            "loop": self.loop_kind,
            "url": url + SOURCE_PATH,
            "secret": SOURCE_SECRET,
            "prefix": prefix,
            "conns": self.args.conns,
            "duration": seconds,
            "rate": rate,
        }
        cmd = [sys.executable, str(Path(__file__).resolve()), hb.CHILD_FLAG, "poster"]
        with open(self.tmp / f"poster-{prefix}.log", "wb") as err:
            return subprocess.Popen(
                [*cmd, json.dumps(payload)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )


def _posted(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the poster failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _stats(subscriber: hb.Child, prefix: str, ids: bool = False) -> dict[str, Any]:
    url = f"{subscriber.url}/stats?prefix={prefix}" + ("&ids=1" if ids else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        data: dict[str, Any] = json.loads(response.read())
    return data


def _wait_delivered(
    subscriber: hb.Child, prefix: str, acked: set[str], deadline: float
) -> tuple[set[str], dict[str, Any]]:
    """Poll the subscriber until it has every id in ``acked`` (or the deadline passes)."""
    end = time.monotonic() + deadline
    while True:
        stats = _stats(subscriber, prefix)
        if stats["distinct"] >= len(acked) or time.monotonic() > end:
            stats = _stats(subscriber, prefix, ids=True)
            got = set(stats["ids"])
            if acked <= got or time.monotonic() > end:
                return got, stats
        time.sleep(0.1)


def _config(
    tmp: Path, args: argparse.Namespace, backend: str, subscriber: str, redis_port: int | None
) -> Path:
    source = tmp / "source.secret"
    source.write_text(SOURCE_SECRET + "\n")
    team = tmp / "team.secret"
    team.write_text(TEAM_SECRET + "\n")
    if backend == "redis":
        store = f'backend = "redis"\nredis_url = "redis://{hb.HOST}:{redis_port}/0"'
    else:
        store = f'backend = "sqlite"\nsqlite_path = "{tmp / "webhooks.sqlite3"}"'
    text = f"""
[server]
host = "{hb.HOST}"
port = 0
drain_timeout = 2.0

[upstream]
api = "http://{hb.HOST}:9"

[plugins.audit]
path = "{tmp / "audit.jsonl"}"

[[teams]]
name = "bench"
key_sha256 = ["{hashlib.sha256(hb.GATEWAY_KEY.encode()).hexdigest()}"]
upstream_key_env = "{hb.UPSTREAM_KEY_ENV}"

[plugins.webhooks]
{store}
poll_seconds = 0.2

[[plugins.webhooks.sources]]
name = "stripe"
path = "{SOURCE_PATH}"
secret_file = ["{source}"]

[[plugins.webhooks.subscriptions]]
name = "bench"
team = "bench"
url = "{subscriber}/hook"
secret_file = "{team}"
max_concurrency = {args.max_concurrency}
timeout = 2.0
retry_delays = [0.5, 1.0, 2.0, 5.0, 10.0]
jitter = 0.1
"""
    path = tmp / "gateway.toml"
    path.write_text(text)
    return path


def _check_config(path: Path) -> str | None:
    """``stripe-gateway check-config``'s complaint, or ``None`` when the config is valid."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_GATEWAY_")}
    env[hb.UPSTREAM_KEY_ENV] = hb.UPSTREAM_KEY
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
        check=False,
    )
    return None if done.returncode == 0 else (done.stderr.strip() or done.stdout.strip())


def _start_gateway(config: Path, tmp: Path, profile: Path | None = None) -> wb.Gateway:
    python = None if profile is None else [sys.executable, "-m", "cProfile", "-o", str(profile)]
    environ = {hb.UPSTREAM_KEY_ENV: hb.UPSTREAM_KEY}
    return wb.start_serve(config, tmp / "audit.jsonl", 1, environ, python=python)


def _verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


class _Load:
    """One run of the posters with the CPU each process used meanwhile."""

    def __init__(self, bench: WebhookBench, gateway: wb.Gateway, subscriber: hb.Child) -> None:
        self.bench, self.gateway, self.subscriber = bench, gateway, subscriber

    def run(self, prefix: str, seconds: float, rate: float) -> dict[str, Any]:
        gw_pid, sub_pid = self.gateway.proc.pid, self.subscriber.info["pid"]
        gw_cpu, sub_cpu = hb._cpu_seconds(gw_pid), hb._cpu_seconds(sub_pid)
        machine, mine = hb._machine_cpu_seconds(), hb._children_cpu_seconds()
        started = time.time()
        wall = time.monotonic()
        result = _posted(self.bench.post(self.gateway.url, prefix, seconds, rate), seconds + 60)
        wall = time.monotonic() - wall
        gw_used = hb._cpu_seconds(gw_pid) - gw_cpu
        sub_used = hb._cpu_seconds(sub_pid) - sub_cpu
        load_used = hb._children_cpu_seconds() - mine
        other = max(0.0, hb._machine_cpu_seconds() - machine - gw_used - sub_used - load_used)
        result.update(
            started=started,
            ended=time.time(),
            rate=result["acked"] / result["seconds"],
            errors_total=result["errors"] + result["status_errors"],
            cpu_us=gw_used / max(1, result["acked"]) * 1e6,
            gateway_pct=gw_used / wall * 100,
            subscriber_pct=sub_used / wall * 100,
            posters_pct=load_used / wall * 100,
            other_pct=other / wall * 100,
        )
        return result


def _print_load(result: dict[str, Any]) -> None:
    print(
        f"  acknowledged {result['acked']} of {result['sent']} events in "
        f"{result['seconds']:.1f} s: {result['rate']:7.1f} events/s  p50 "
        f"{result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  max "
        f"{result['max_ms']:6.1f} ms (sent {result['max_at']:.1f} s in; "
        f"{result['slow_100ms']} over 100 ms)  errors {result['errors_total']}",
        flush=True,
    )
    cpu_us = result["cpu_us"]
    print(
        f"  gateway cpu/event {cpu_us:5.0f} us (ingest, delivery and audit lines; one core: "
        f"~{1e6 / max(1.0, cpu_us):.0f} events/s) | cpu% gateway {result['gateway_pct']:3.0f}"
        f" subscriber {result['subscriber_pct']:3.0f} posters {result['posters_pct']:3.0f}"
        f" other {result['other_pct']:3.0f}",
        flush=True,
    )


def _print_delivery(
    subscriber: hb.Child, prefix: str, result: dict[str, Any], deadline: float
) -> tuple[int, float]:
    """Wait until the subscriber has every event ``result`` acknowledged; print the rate.
    Returns (undelivered, delivered events/s)."""
    acked = set(result["ids"])
    got, stats = _wait_delivered(subscriber, prefix, acked, deadline)
    undelivered = len(acked - got)
    last = stats["last"] or result["started"]
    rate = len(got) / max(1e-9, last - result["started"])
    print(
        f"  delivered {len(got)} of {len(acked)} acknowledged in {last - result['started']:.1f}"
        f" s from the start of the load: {rate:7.1f} events/s; the last "
        f"{max(0.0, last - result['ended']):.1f} s after the load ended"
        + (f"  NOT DELIVERED within {deadline:g} s: {undelivered}" if undelivered else ""),
        flush=True,
    )
    return undelivered, rate


def _print_profile(path: Path, top: int = 30) -> None:
    import pstats

    if not path.exists():
        print(f"  (no profile: {path} was not written)")
        return
    print(f"\ngateway profile ({path}: start, warm-up, phases 1-3, stop), by own time:")
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(top)
    print("by cumulative time:")
    stats.sort_stats("cumulative").print_stats(top)
    print("what the webhooks plugin's ingest and delivery call:")
    stats.print_callees(r"webhooks.py:\d+\((_receive|_ingest|_verified|_attempt|_dispatch)\)")


def run(args: argparse.Namespace, backend: str) -> tuple[int, dict[str, Any]]:
    """Every phase against ``backend``: (exit status, the summary's figures)."""
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    bench = WebhookBench(args, tmp)
    gateways: list[wb.Gateway] = []
    summary: dict[str, Any] = {"backend": backend}

    def stop_all() -> None:
        for gateway in gateways:
            gateway.stop()
        gateways.clear()
        bench.stop_all()

    atexit.register(stop_all)
    try:
        subscriber = bench.start("subscriber", None, secret=TEAM_SECRET)
        redis = bench.start_redis(None) if backend == "redis" else None
        port = redis.info["port"] if redis else None
        config = _config(tmp, args, backend, subscriber.url, port)
        refused = _check_config(config)
        if refused is not None:
            print(f"webhook_bench: the gateway refuses the config for --backend {backend}:")
            print(f"  {refused}")
            if backend == "redis":
                print("  (this tree's webhooks plugin has no redis backend yet)")
            return 2, summary
        profile = tmp / "gateway.prof" if args.profile else None
        gateway = _start_gateway(config, tmp, profile)
        gateways.append(gateway)
        print(f"stripe-gateway webhook benchmark, backend {backend}")
        print(f"  python      : {sys.version.split()[0]}; event loop {bench.loop_kind}")
        print(f"  cores       : {len(os.sched_getaffinity(0))}; nothing pinned")
        store = (
            f"redis {redis.info['version']} (no persistence)"
            if redis
            else "sqlite (WAL, synchronous=FULL)"
        )
        print(f"  store       : {backend}: {store}")
        print(
            f"  gateway     : pid {gateway.proc.pid}, default plugins + webhooks, audit to a "
            f"file; subscription max_concurrency {args.max_concurrency}"
            + (" (UNDER cProfile: slower)" if profile else "")
        )
        print(
            f"  posters     : {args.conns} connections, unique signed events of ~700 bytes; "
            f"open loop at {args.rate:g} events/s"
        )
        print(f"  temp dir    : {tmp}", flush=True)
        load = _Load(bench, gateway, subscriber)

        # ------------------------------------------------------------ warm-up
        warm = bench.post(gateway.url, "evt_warm_", 1.0)
        acked_warm = set(_posted(warm, 60)["ids"])
        _wait_delivered(subscriber, "evt_warm_", acked_warm, args.deadline)

        # ------------------------------------------------------------ 1 + 2
        print(f"phase 1: most events/s, closed loop ({args.duration:g} s of load)", flush=True)
        closed = load.run("evt_load_", args.duration, 0.0)
        _print_load(closed)
        print("phase 2: delivery to the subscriber", flush=True)
        undelivered, delivery_rate = _print_delivery(subscriber, "evt_load_", closed, args.deadline)

        # ------------------------------------------------------------ open loop
        print(
            f"phase 3: latency at {args.rate:g} events/s, open loop ({args.duration:g} s; "
            "latency from each event's scheduled time)",
            flush=True,
        )
        opened = load.run("evt_rate_", args.duration, args.rate)
        _print_load(opened)
        more, _ = _print_delivery(subscriber, "evt_rate_", opened, args.deadline)
        undelivered += more

        if profile is not None:  # a killed process writes no profile: stop this one
            gateway.stop()
            gateways.remove(gateway)
            gateway = _start_gateway(config, tmp, tmp / "gateway-after.prof")
            gateways.append(gateway)

        # ------------------------------------------------------------ kill -9
        print(
            f"phase 4: kill -9 {args.kill_after:g} s into {args.kill_duration:g} s of load",
            flush=True,
        )
        posters = bench.post(gateway.url, "evt_kill_", args.kill_duration)
        # the kill counts from the first event through (the posters' start-up is not load)
        first_by = time.monotonic() + 60
        while _stats(subscriber, "evt_kill_")["distinct"] == 0 and time.monotonic() < first_by:
            time.sleep(0.02)
        time.sleep(args.kill_after)
        still_posting = posters.poll() is None
        gateway.proc.send_signal(signal.SIGKILL)
        gateway.proc.wait(10)
        gateways.remove(gateway)
        killed = _posted(posters, args.kill_duration + 60)
        restart = time.monotonic()
        gateway = _start_gateway(config, tmp, profile and tmp / "gateway-after.prof")
        gateways.append(gateway)
        acked_kill = set(killed["ids"])
        got_kill, stats_kill = _wait_delivered(subscriber, "evt_kill_", acked_kill, args.deadline)
        lost = len(acked_kill - got_kill)
        extra = len(got_kill - acked_kill)
        print(
            f"  {killed['acked']} events acknowledged before the kill"
            f"{'' if still_posting else ' (WARNING: the posters had stopped already)'}; "
            f"after the restart all were delivered within {time.monotonic() - restart:.1f} s"
            if not lost
            else f"  {killed['acked']} acknowledged; after {args.deadline:g} s, "
            f"{lost} NOT DELIVERED",
            flush=True,
        )
        print(
            f"  lost {lost}; at least once: {extra} events stored but not acknowledged "
            f"(cut off by the kill) delivered too, {stats_kill['deliveries']} deliveries in the "
            f"run for {stats_kill['distinct']} distinct events of the phase",
            flush=True,
        )
        bad = stats_kill["bad_signatures"]
        code = gateway.stop()
        gateways.clear()

        # ------------------------------------------------------------ summary
        print()
        print(f"summary, backend {backend} (aims from the issue)")
        rate_ok = closed["rate"] >= AIM_RATE
        p99_ok = opened["p99_ms"] <= AIM_P99_MS and opened["rate"] >= 0.95 * args.rate
        print(
            f"  acknowledged   {closed['rate']:7.1f} events/s (closed loop, {args.conns} "
            f"connections)  aim >= {AIM_RATE:g}: {_verdict(rate_ok)}"
        )
        print(
            f"  ack latency    p99 {opened['p99_ms']:6.2f} ms at {opened['rate']:.1f} events/s "
            f"(open loop, {args.rate:g} asked)  aim <= {AIM_P99_MS:g} ms: {_verdict(p99_ok)}"
        )
        print(f"  delivered      {delivery_rate:7.1f} events/s to one subscriber (no aim)")
        print(f"  kill -9        lost {lost} of {killed['acked']}  aim 0: {_verdict(lost == 0)}")
        if undelivered:
            print(f"  WARNING  {undelivered} events of phases 1-3 were not delivered in time")
        if bad:
            print(f"  WARNING  {bad} deliveries had a bad signature")
        errors = closed["errors_total"] + opened["errors_total"]
        if errors:
            print(f"  WARNING  {errors} posts failed or were refused in phases 1 and 3")
        busy = max(closed["other_pct"], opened["other_pct"])
        if busy > hb.BUSY_MACHINE_PCT:
            print(
                f"  WARNING  other processes used up to {busy:.0f}% of a core during the load: "
                "the machine was not quiet, the figures are indicative"
            )
        print(f"  gateway stopped with exit code {code}")
        if profile is not None:
            _print_profile(profile)
        print(f"\ntotal time {time.monotonic() - started:.0f} s", flush=True)
        summary.update(
            closed=closed, opened=opened, delivery_rate=delivery_rate, lost=lost,
            acked_kill=killed["acked"], busy=busy,
        )  # fmt: skip
        failed = bool(lost or undelivered or bad or code)
        missed = not (rate_ok and p99_ok)
        return (1 if failed or (args.strict and missed) else 0), summary
    finally:
        stop_all()
        atexit.unregister(stop_all)
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--backend", choices=("sqlite", "redis", "both"), default="sqlite")
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds of load, phases 1 and 3"
    )
    parser.add_argument(
        "--conns", type=int, default=32, help="connections (closed loop: concurrent posters)"
    )
    parser.add_argument(
        "--rate", type=float, default=AIM_RATE, help="events/s of the open loop, phase 3"
    )
    parser.add_argument(
        "--max-concurrency", type=int, default=16, help="the subscription's max_concurrency"
    )
    parser.add_argument(
        "--kill-duration", type=float, default=6.0, help="seconds of load in phase 4"
    )
    parser.add_argument(
        "--kill-after", type=float, default=2.0, help="seconds into phase 4 the gateway is killed"
    )
    parser.add_argument(
        "--deadline", type=float, default=90.0, help="seconds to wait for every delivery"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when an aim is missed")
    parser.add_argument("--asyncio", action="store_true", help="use asyncio even with uvloop")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the gateway under cProfile and print where its time went (slower)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [hb.CHILD_FLAG]:
        return _child_main(argv[1], json.loads(argv[2]))
    args = _parser().parse_args(argv)
    args.loadgen = "python"  # the posters are this script's own; wrk is not used
    if args.quick:
        args.duration, args.kill_duration, args.kill_after = 3.0, 3.0, 1.0
    if not 0 < args.duration <= 60 or not 0 < args.kill_after < args.kill_duration <= 60:
        raise SystemExit("--duration in (0, 60]; 0 < --kill-after < --kill-duration <= 60")
    if not 1 <= args.conns <= 512:
        raise SystemExit("--conns in [1, 512]")
    if not 0 < args.rate <= 20000:
        raise SystemExit("--rate in (0, 20000]")

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    backends = ["sqlite", "redis"] if args.backend == "both" else [args.backend]
    codes, summaries = [], []
    for i, backend in enumerate(backends):
        if i:
            print("\n" + "=" * 78 + "\n")
        code, summary = run(args, backend)
        codes.append(code)
        summaries.append(summary)
    if len(backends) > 1:
        print("\nboth backends")
        print(
            f"  {'backend':8} {'closed ev/s':>11} {'open ev/s':>9} {'p50 ms':>7} {'p99 ms':>7}"
            f" {'max ms':>7} {'cpu us/ev':>9} {'delivered/s':>11} {'lost':>5}"
        )
        for s in summaries:
            if "closed" not in s:
                print(f"  {s['backend']:8} (did not run)")
                continue
            c, o = s["closed"], s["opened"]
            print(
                f"  {s['backend']:8} {c['rate']:11.1f} {o['rate']:9.1f} {o['p50_ms']:7.2f}"
                f" {o['p99_ms']:7.2f} {o['max_ms']:7.1f} {c['cpu_us']:9.0f}"
                f" {s['delivery_rate']:11.1f} {s['lost']:5d}"
            )
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
