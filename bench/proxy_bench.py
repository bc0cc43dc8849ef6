"""Gateway vs. bare pass-through proxy: throughput, latency, 5 MB downloads, memory.

Run from the repository root (about two minutes; ``--quick`` for a short smoke run)::

    .venv/bin/python bench/proxy_bench.py

Every part runs in its own process, on 127.0.0.1 only:

* ``upstream``  a minimal Stripe stand-in: ``GET /v1/customers/{id}`` answers a small JSON
  object, ``GET /v1/files/{id}/contents`` streams a 5 MB CSV in 64 KiB chunks;
* ``gateway``   ``gateway.app.create_app(parse_config(...))`` served by
  ``gateway.serve.server.serve`` (a :class:`~gateway.serve.server.GatewayRunner`), with only the
  ``auth`` and ``audit`` plugins on (every other plugin, the built-in ``cache`` included,
  is listed in ``[plugins] disable``; ``--plugins`` changes the list), the audit log
  written to a file in a temp dir and the team's upstream key read from an environment
  variable passed to ``parse_config``;
* ``baseline``  a minimal aiohttp pass-through proxy: one pooled ``ClientSession``,
  hop-by-hop headers dropped, the response streamed back; no plugins;
* the load generator, ``wrk`` when it is installed (``apt-get install wrk``), otherwise a
  small aiohttp client in its own process.

The gateway and the baseline run on the same event loop (uvloop when installed) and are
pinned to the same core; they are measured one after the other, never at the same time.
The upstream and the load generator share the other core (on a 2-core machine).

Each measurement is a warm-up then a timed closed-loop run; by default three rounds, the
order of gateway and baseline alternating, and each ratio is the median of the per-round
ratios (the two runs of a round are back to back, so slow drifts of a shared machine cancel
out). Besides req/s and latency, every line shows the proxy's CPU time per request (the
steadiest number on a noisy machine) and the CPU that other processes used meanwhile; the
summary warns when that was high. The gateway's RSS is read from /proc before and after
each download run (and sampled during it).

It stops every process it started when it exits (also on Ctrl-C or SIGTERM; children also
stop by themselves if this process dies). Exit status: 0, or 1 when a run failed (and, with
``--strict``, when a target is missed). ``--cprofile FILE`` runs the gateway under cProfile
and prints its hottest functions (its own numbers are then not representative).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import cProfile
import hashlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

HOST = "127.0.0.1"
GATEWAY_KEY = "gw_bench_key_00000000000000000001"
UPSTREAM_KEY_ENV = "BENCH_STRIPE_KEY"
UPSTREAM_KEY = "sk_test_bench_upstream_0000000001"
CUSTOMER_PATH = "/v1/customers/cus_Bench00000001"
DOWNLOAD_PATH = "/v1/files/file_Bench00000001/contents"
DOWNLOAD_BYTES = 5 * 1024 * 1024
DOWNLOAD_CHUNK = 64 * 1024
CHILD_FLAG = "_child"
#: a child process stops by itself after this many seconds, whatever happens to the parent
CHILD_MAX_LIFETIME = 900.0

TARGET_RPS_RATIO = 0.75
TARGET_P99_RATIO = 1.5
TARGET_DOWNLOAD_RATIO = 0.9
TARGET_RSS_GROWTH_MB = 20.0
#: CPU (% of one core) used by other processes during a run above which results are suspect
BUSY_MACHINE_PCT = 25.0

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "proxy-authenticate",
        "proxy-authorization",
    }
)

_CUSTOMER: dict[str, Any] = {
    "id": "cus_Bench00000001",
    "object": "customer",
    "address": None,
    "balance": 0,
    "created": 1718000000,
    "currency": "usd",
    "default_source": None,
    "delinquent": False,
    "description": "Benchmark customer",
    "discount": None,
    "email": "bench@example.com",
    "invoice_prefix": "BENCH001",
    "invoice_settings": {
        "custom_fields": None,
        "default_payment_method": None,
        "footer": None,
        "rendering_options": None,
    },
    "livemode": False,
    "metadata": {"order_id": "6735"},
    "name": "Jenny Rosen",
    "next_invoice_sequence": 1,
    "phone": None,
    "preferred_locales": [],
    "shipping": None,
    "tax_exempt": "none",
    "test_clock": None,
}

_WRK_SCRIPT = r"""
done = function(summary, latency, requests)
  io.write(string.format(
    "WRKJSON {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d,\"connect_errors\":%d," ..
    "\"read_errors\":%d,\"write_errors\":%d,\"status_errors\":%d,\"timeout_errors\":%d," ..
    "\"p50_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f}\n",
    summary.requests, summary.duration, summary.bytes, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50.0), latency:percentile(99.0), latency.max))
end
"""


# =============================================================================== children


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return f"{type(loop).__module__}.{type(loop).__qualname__}"


def _announce(info: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()


async def _watch_parent(stop: asyncio.Event, parent: int) -> None:
    """Stop when the parent goes away or the child has lived too long (bounded loop)."""
    deadline = time.monotonic() + CHILD_MAX_LIFETIME
    while not stop.is_set() and time.monotonic() < deadline:
        if os.getppid() != parent:
            break
        await asyncio.sleep(0.5)
    stop.set()


def _stop_event_with_signals() -> asyncio.Event:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _serve_plain(app: web.Application, port: int, parent: int, extra: dict[str, Any]) -> None:
    stop = _stop_event_with_signals()
    watcher = asyncio.create_task(_watch_parent(stop, parent))
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, port, backlog=1024, reuse_address=True)
        await site.start()
        bound = next(a for a in runner.addresses if isinstance(a, tuple))
        loop = asyncio.get_running_loop()
        _announce({"port": bound[1], "pid": os.getpid(), "loop": _loop_name(loop), **extra})
        await stop.wait()
    finally:
        watcher.cancel()
        await runner.cleanup()


def _upstream_app() -> web.Application:
    body = json.dumps(_CUSTOMER, indent=2).encode()
    line = b"ch_Bench0000000000000001,2000,usd,succeeded,2024-06-01T12:00:00Z\n"
    chunk = memoryview((line * (DOWNLOAD_CHUNK // len(line) + 1))[:DOWNLOAD_CHUNK])
    counter = iter(range(1 << 62))

    def stripe_headers() -> dict[str, str]:
        return {
            "Request-Id": f"req_bench{next(counter):012d}",
            "Stripe-Version": "2024-06-20",
            "Cache-Control": "no-cache, no-store",
        }

    async def customer(request: web.Request) -> web.Response:
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.json_response({"error": {"type": "invalid_request_error"}}, status=401)
        return web.Response(body=body, content_type="application/json", headers=stripe_headers())

    async def contents(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers=stripe_headers())
        response.content_type = "text/csv"
        response.content_length = DOWNLOAD_BYTES
        await response.prepare(request)
        sent = 0
        while sent < DOWNLOAD_BYTES:
            part = chunk[: min(DOWNLOAD_CHUNK, DOWNLOAD_BYTES - sent)]
            await response.write(part)
            sent += len(part)
        await response.write_eof()
        return response

    intent = json.dumps(
        {
            "id": "pi_Bench00000001",
            "object": "payment_intent",
            "amount": 2000,
            "currency": "usd",
            "status": "requires_confirmation",
            "client_secret": "pi_Bench00000001_secret_Bench0000000001",
            "livemode": False,
        },
        indent=2,
    ).encode()

    async def create_intent(request: web.Request) -> web.Response:
        await request.read()
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.json_response({"error": {"type": "invalid_request_error"}}, status=401)
        return web.Response(body=intent, content_type="application/json", headers=stripe_headers())

    app = web.Application()
    app.router.add_get("/v1/customers/{id}", customer)
    app.router.add_get("/v1/files/{id}/contents", contents)
    app.router.add_post("/v1/payment_intents", create_intent)  # for redaction_bench.py
    return app


def _baseline_app(upstream: str) -> web.Application:
    """The bare pass-through: what any aiohttp reverse proxy has to do, and nothing more."""
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=100, limit_per_host=0, ttl_dns_cache=300)
        app[session_key] = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",),
        )
        yield
        await app[session_key].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP
        )
        async with request.app[session_key].request(
            request.method,
            URL(upstream + request.raw_path, encoded=True),
            headers=headers,
            data=request.content if request.body_exists else None,
            allow_redirects=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        ) as up:
            response = web.StreamResponse(status=up.status, reason=up.reason)
            for k, v in up.headers.items():
                if k.lower() not in _HOP_BY_HOP:
                    response.headers.add(k, v)
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    app.cleanup_ctx.append(session_ctx)
    return app


async def _serve_gateway(params: dict[str, Any], parent: int) -> None:
    from importlib.metadata import entry_points

    from gateway.app import create_app
    from gateway.config import parse_config
    from gateway.host import DEFAULT_PLUGINS, ENTRY_POINT_GROUP
    from gateway.keys import GENERATIONS
    from gateway.serve.server import serve

    keep = set(params["plugins"])
    known = {name for name, _ in DEFAULT_PLUGINS} | {
        ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)
    }
    # every other plugin is off: the built-in cache in particular (on by default) would
    # answer the repeated retrieve itself and measure the cache, not the proxy
    disabled = sorted(known - keep)
    upstream = params["upstream"]
    data: dict[str, Any] = {
        "server": {"host": HOST, "port": 0, "drain_timeout": 2.0},
        "upstream": {name: upstream for name in ("api", "files", "connect", "meter_events")},
        "plugins": {"disable": disabled},
        "teams": [
            {
                "name": "bench",
                "key_sha256": [hashlib.sha256(GATEWAY_KEY.encode()).hexdigest()],
                "upstream_key_env": UPSTREAM_KEY_ENV,
            }
        ],
    }
    if "audit" in keep:
        data["plugins"]["audit"] = {"path": params["audit_path"]}
    if "metrics" in keep:  # metrics count only when the admin listener that shows them is on
        import socket

        with socket.socket() as probe:
            probe.bind((HOST, 0))
            data["admin"] = {"host": HOST, "port": probe.getsockname()[1]}
    config = parse_config(data, source="bench", environ={UPSTREAM_KEY_ENV: UPSTREAM_KEY})
    app = create_app(config)
    plugins = app[GENERATIONS].current.host.plugin_names()
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch_parent(stop, parent))
    loop = asyncio.get_running_loop()

    def listening(urls: list[str]) -> None:
        port = int(urls[0].rsplit(":", 1)[1])
        _announce(
            {
                "port": port,
                "pid": os.getpid(),
                "loop": _loop_name(loop),
                "plugins": plugins,
                "disabled": disabled,
            }
        )

    try:
        await serve(app, HOST, 0, drain_timeout=2.0, on_listening=listening, stop=stop)
    finally:
        watcher.cancel()


async def _loadgen(params: dict[str, Any]) -> dict[str, Any]:
    """A closed-loop HTTP load generator: ``conns`` workers, each one request at a time."""
    conns: int = params["conns"]
    headers: dict[str, str] = params["headers"]
    url: str = params["url"]
    method: str = params.get("method", "GET")
    body: bytes | None = params["body"].encode() if params.get("body") is not None else None
    latencies: list[float] = []
    counts = {"bytes": 0, "errors": 0, "status_errors": 0}
    connector = aiohttp.TCPConnector(limit=conns, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        connector=connector, auto_decompress=False, timeout=timeout
    ) as session:
        started = time.perf_counter()
        deadline = started + float(params["duration"])

        async def worker() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    async with session.request(method, url, headers=headers, data=body) as response:
                        async for chunk in response.content.iter_any():
                            counts["bytes"] += len(chunk)
                        if response.status != 200:
                            counts["status_errors"] += 1
                except (aiohttp.ClientError, OSError, TimeoutError):
                    counts["errors"] += 1
                    await asyncio.sleep(0.01)
                    continue
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(conns)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "bytes": counts["bytes"],
        "errors": counts["errors"],
        "status_errors": counts["status_errors"],
        "p50_ms": _percentile(latencies, 50) * 1000.0,
        "p99_ms": _percentile(latencies, 99) * 1000.0,
    }


def _child_main(role: str, params: dict[str, Any]) -> int:
    cores = params.get("cores")
    if cores:
        os.sched_setaffinity(0, set(cores))
    loop = _new_loop(params["loop"])
    asyncio.set_event_loop(loop)
    parent = os.getppid()
    profiler = cProfile.Profile() if params.get("cprofile") else None
    try:
        if profiler is not None:
            profiler.enable()
        if role == "upstream":
            loop.run_until_complete(_serve_plain(_upstream_app(), 0, parent, {}))
        elif role == "baseline":
            app = _baseline_app(params["upstream"])
            loop.run_until_complete(_serve_plain(app, 0, parent, {}))
        elif role == "gateway":
            loop.run_until_complete(_serve_gateway(params, parent))
        elif role == "loadgen":
            result = loop.run_until_complete(_loadgen(params))
            _announce({**result, "loop": _loop_name(loop)})
        else:
            raise SystemExit(f"unknown role {role!r}")
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(params["cprofile"])
        loop.close()
    return 0


# =============================================================================== parent


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(pct / 100.0 * len(sorted_values)) - 1))
    return sorted_values[index]


@dataclass
class Child:
    role: str
    proc: subprocess.Popen[bytes]
    info: dict[str, Any] = field(default_factory=dict)
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.info['port']}"


@dataclass
class Result:
    target: str
    scenario: str
    rps: float
    p50_ms: float
    p99_ms: float
    mb_per_s: float
    errors: int
    requests: int
    #: CPU time of the proxy process per request, in microseconds
    cpu_us: float = float("nan")
    #: CPU used meanwhile by processes not started here, in % of one core
    other_cpu: float = 0.0


@dataclass
class Layout:
    server: list[int] | None
    upstream: list[int] | None
    load: list[int] | None

    def describe(self) -> str:
        if self.server is None:
            return "not pinned (fewer than 2 cores available)"
        return (
            f"gateway/baseline on core {self.server}, upstream on core {self.upstream}, "
            f"load generator on core {self.load}"
        )


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.children: list[Child] = []
        self.loop_kind = "asyncio" if args.asyncio else _uvloop_or_asyncio()
        self.layout = _layout()
        self.wrk = None if args.loadgen == "python" else shutil.which("wrk")
        if args.loadgen == "wrk" and self.wrk is None:
            raise SystemExit("wrk is not installed (apt-get install -y wrk)")
        self.wrk_script = tmp / "report.lua"
        self.wrk_script.write_text(_WRK_SCRIPT)

    # ------------------------------------------------------------------ processes

    def start(self, role: str, cores: list[int] | None, **params: Any) -> Child:
        log = self.tmp / f"{role}.log"
        payload = {"loop": self.loop_kind, "cores": cores, **params}
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    CHILD_FLAG,
                    role,
                    json.dumps(payload),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        child = Child(role=role, proc=proc, log=log)
        self.children.append(child)
        child.info = self._ready_line(child, timeout=30.0)
        return child

    def _ready_line(self, child: Child, timeout: float) -> dict[str, Any]:
        assert child.proc.stdout is not None
        box: list[bytes] = []
        reader = threading.Thread(
            target=lambda: box.append(child.proc.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(timeout)
        if not box or not box[0].strip():
            tail = child.log.read_text(errors="replace")[-3000:] if child.log else ""
            raise RuntimeError(f"{child.role} did not start; its stderr:\n{tail}")
        info: dict[str, Any] = json.loads(box[0])
        return info

    def stop_all(self) -> None:
        for child in reversed(self.children):
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
        for child in reversed(self.children):
            try:
                child.proc.wait(timeout=6)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(timeout=5)
            if child.proc.stdout is not None:
                child.proc.stdout.close()
        self.children.clear()

    # ------------------------------------------------------------------ load

    def load(
        self, url: str, conns: int, seconds: float, *, timeout_s: float = 10.0
    ) -> dict[str, Any]:
        """One closed-loop run; the dict has requests, seconds, bytes, errors, p50_ms, p99_ms."""
        headers = {"Authorization": f"Bearer {GATEWAY_KEY}"}
        if self.wrk is not None:
            return self._wrk(url, conns, seconds, headers, timeout_s)
        return self._python_load(url, conns, seconds, headers)

    def _wrk(
        self, url: str, conns: int, seconds: float, headers: dict[str, str], timeout_s: float
    ) -> dict[str, Any]:
        assert self.wrk is not None
        cmd = [self.wrk, "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s"]
        cmd += [f"--timeout={round(timeout_s)}s", "-s", str(self.wrk_script)]
        for name, value in headers.items():
            cmd += ["-H", f"{name}: {value}"]
        cmd.append(url)
        if self.layout.load is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", ",".join(map(str, self.layout.load)), *cmd]
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        raw = json.loads(line.removeprefix("WRKJSON "))
        return {
            "requests": raw["requests"],
            "seconds": raw["duration_us"] / 1e6,
            "bytes": raw["bytes"],
            "errors": raw["connect_errors"]
            + raw["read_errors"]
            + raw["write_errors"]
            + raw["timeout_errors"],
            "status_errors": raw["status_errors"],
            "p50_ms": raw["p50_us"] / 1000.0,
            "p99_ms": raw["p99_us"] / 1000.0,
        }

    def _python_load(
        self,
        url: str,
        conns: int,
        seconds: float,
        headers: dict[str, str],
        *,
        method: str = "GET",
        body: str | None = None,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "loop": self.loop_kind,
            "cores": self.layout.load,
            "url": url,
            "conns": conns,
            "duration": seconds,
            "headers": headers,
        }
        if method != "GET" or body is not None:
            payload.update(method=method, body=body)
        cmd = [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, "loadgen"]
        done = subprocess.run(
            [*cmd, json.dumps(payload)],
            capture_output=True,
            text=True,
            timeout=seconds + 90,
            check=False,
        )
        if done.returncode != 0 or not done.stdout.strip():
            raise RuntimeError(f"load generator failed ({done.returncode}):\n{done.stderr}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    def measure(
        self, target: Child, scenario: str, path: str, conns: int, upstream: Child
    ) -> Result:
        url = target.url + path
        if self.args.warmup > 0:
            self.load(url, conns, self.args.warmup)
        pids = (target.info["pid"], upstream.info["pid"])
        cpu_before = [_cpu_seconds(pid) for pid in pids]
        load_before = _children_cpu_seconds()
        machine_before = _machine_cpu_seconds()
        wall = time.monotonic()
        raw = self.load(url, conns, self.args.duration)
        wall = time.monotonic() - wall
        used = [_cpu_seconds(pid) - b for pid, b in zip(pids, cpu_before, strict=True)]
        used.append(_children_cpu_seconds() - load_before)
        other = max(0.0, _machine_cpu_seconds() - machine_before - sum(used)) / wall * 100.0
        cpu = [u / wall * 100.0 for u in used]
        seconds = raw["seconds"] or float("nan")
        result = Result(
            target=target.role,
            scenario=scenario,
            rps=raw["requests"] / seconds,
            p50_ms=raw["p50_ms"],
            p99_ms=raw["p99_ms"],
            mb_per_s=raw["bytes"] / seconds / 1e6,
            errors=raw["errors"] + raw["status_errors"],
            requests=raw["requests"],
            cpu_us=used[0] / raw["requests"] * 1e6 if raw["requests"] else float("nan"),
            other_cpu=other,
        )
        flag = f"  ERRORS: {result.errors}" if result.errors else ""
        if scenario == "download":
            per_mb = used[0] / max(raw["bytes"], 1) * 1e12
            extra = f"{result.mb_per_s:7.1f} MB/s  cpu/MB {per_mb:4.0f} us"
        else:
            extra = f"cpu/req {result.cpu_us:4.0f} us"
        print(
            f"  {scenario:<8} {target.role:<8} c={conns:<3}{result.rps:8.1f} req/s  "
            f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  {extra}  "
            f"| cpu% proxy {cpu[0]:3.0f} upstream {cpu[1]:3.0f} load {cpu[2]:3.0f} "
            f"other {other:3.0f}{flag}",
            flush=True,
        )
        return result


def _uvloop_or_asyncio() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def _layout() -> Layout:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 3:
        return Layout(server=[cores[0]], upstream=[cores[1]], load=[cores[2]])
    if len(cores) == 2:
        return Layout(server=[cores[0]], upstream=[cores[1]], load=[cores[1]])
    return Layout(server=None, upstream=None, load=None)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_cpu_seconds() -> float:
    """User + system CPU seconds of the whole machine (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system = (int(x) for x in fields[1:4])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    """CPU seconds of this process's finished children (the load generator runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@contextlib.contextmanager
def _rss_sampler(pid: int, every: float = 0.05) -> Iterator[list[int]]:
    """Sample VmRSS of ``pid`` in a thread while the block runs; yields the samples list."""
    samples: list[int] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            with contextlib.suppress(OSError, RuntimeError):
                samples.append(_rss_kb(pid))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(2)


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _sanity(gateway: Child, baseline: Child, audit: Path) -> None:
    """Both proxies answer correctly before anything is measured."""
    auth = {"Authorization": f"Bearer {GATEWAY_KEY}"}
    status, body = _get(gateway.url + CUSTOMER_PATH, auth)
    assert status == 200 and json.loads(body)["id"] == _CUSTOMER["id"], (status, body[:200])
    status, _ = _get(gateway.url + CUSTOMER_PATH)
    assert status == 401, f"gateway without a key answered {status}, expected 401"
    status, body = _get(baseline.url + CUSTOMER_PATH, auth)
    assert status == 200 and json.loads(body)["id"] == _CUSTOMER["id"], (status, body[:200])
    for target in (gateway, baseline):
        status, body = _get(target.url + DOWNLOAD_PATH, auth)
        assert status == 200 and len(body) == DOWNLOAD_BYTES, (target.role, status, len(body))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not audit.exists():
        time.sleep(0.05)
    lines = audit.read_text().splitlines() if audit.exists() else []
    assert len(lines) >= 3, f"expected audit lines in {audit}, found {len(lines)}"
    last = json.loads(lines[-1])
    assert last.get("team") == "bench" and last.get("status") == 200, last


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def _median_result(results: list[Result]) -> Result:
    first = results[0]
    return Result(
        target=first.target,
        scenario=first.scenario,
        rps=statistics.median(r.rps for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        mb_per_s=statistics.median(r.mb_per_s for r in results),
        errors=sum(r.errors for r in results),
        requests=sum(r.requests for r in results),
        cpu_us=statistics.median(r.cpu_us for r in results),
        other_cpu=max(r.other_cpu for r in results),
    )


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    bench = Bench(args, tmp)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    atexit.register(bench.stop_all)
    audit = tmp / "audit.jsonl"
    try:
        return _run(args, bench, audit, started)
    finally:
        bench.stop_all()
        if args.cprofile:
            _print_profile(Path(args.cprofile))
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace, bench: Bench, audit: Path, started: float) -> int:
    layout = bench.layout
    upstream = bench.start("upstream", layout.upstream)
    gateway_params: dict[str, Any] = {
        "upstream": upstream.url,
        "audit_path": str(audit),
        "plugins": args.plugins,
    }
    if args.cprofile:
        gateway_params["cprofile"] = str(Path(args.cprofile).resolve())
    gateway = bench.start("gateway", layout.server, **gateway_params)
    baseline = bench.start("baseline", layout.server, upstream=upstream.url)
    loops = {c.role: c.info["loop"] for c in (upstream, gateway, baseline)}
    loadgen = (
        f"wrk ({bench.wrk}, 1 thread; durations rounded to whole seconds)"
        if bench.wrk
        else "python aiohttp load generator in its own process (wrk not used). It shares a\n"
        "                   core with the upstream and can be the bottleneck: check its cpu%;\n"
        "                   `apt-get install -y wrk` gives firmer numbers"
    )

    print("stripe-gateway proxy benchmark")
    print(
        f"  event loop     : {bench.loop_kind} (gateway: {loops['gateway']}, "
        f"baseline: {loops['baseline']}, upstream: {loops['upstream']})"
    )
    print(f"  python         : {sys.version.split()[0]}")
    print(f"  cores          : {len(os.sched_getaffinity(0))}; {layout.describe()}")
    print(f"  load generator : {loadgen}")
    print(
        f"  gateway        : pid {gateway.info['pid']}, plugins {gateway.info['plugins']} on, "
        f"{gateway.info['disabled']} disabled ([plugins] disable), audit -> {audit}"
    )
    print(f"  baseline       : pid {baseline.info['pid']} (aiohttp pass-through, no plugins)")
    print(
        f"  runs           : warm-up {args.warmup:g} s + {args.duration:g} s each, "
        f"{args.rounds} round(s), median over rounds"
    )
    if args.cprofile:
        print("  NOTE: the gateway runs under cProfile: its numbers are NOT representative")
    print(flush=True)

    _sanity(gateway, baseline, audit)

    results: dict[tuple[str, str], list[Result]] = {}
    rss: list[tuple[int, int, int]] = []
    scenarios = [
        (name, path, conns)
        for name, path, conns in (
            ("rps", CUSTOMER_PATH, args.conns),
            ("latency", CUSTOMER_PATH, args.latency_conns),
            ("download", DOWNLOAD_PATH, args.download_conns),
        )
        if name in args.only
    ]
    for round_no in range(args.rounds):
        print(f"round {round_no + 1}/{args.rounds}", flush=True)
        order = [baseline, gateway] if round_no % 2 == 0 else [gateway, baseline]
        for scenario, path, conns in scenarios:
            for target in order:
                if scenario == "download" and target is gateway:
                    before = _rss_kb(gateway.info["pid"])
                    with _rss_sampler(gateway.info["pid"]) as samples:
                        result = bench.measure(target, scenario, path, conns, upstream)
                    after = _rss_kb(gateway.info["pid"])
                    peak = max([before, after, *samples])
                    rss.append((before, after, peak))
                    print(
                        f"            gateway RSS {before / 1024:.1f} MB -> {after / 1024:.1f} MB "
                        f"(peak {peak / 1024:.1f} MB, growth {(after - before) / 1024:+.1f} MB)",
                        flush=True,
                    )
                else:
                    result = bench.measure(target, scenario, path, conns, upstream)
                results.setdefault((target.role, scenario), []).append(result)

    checks = _summary(args, results, rss)
    errors = sum(r.errors for runs in results.values() for r in runs)
    if errors:
        print(f"  WARNING  {errors} failed or non-200 responses: the numbers above are suspect")
    if args.quick:
        print("  (--quick: short runs, for a smoke test only; use the full run for the verdict)")
    print(f"\ntotal time {time.monotonic() - started:.0f} s", flush=True)
    if errors:
        return 1
    if args.strict and not all(ok for _, _, ok in checks):
        return 1
    return 0


def _paired_ratio(
    results: dict[tuple[str, str], list[Result]], scenario: str, metric: str
) -> tuple[float, list[float]]:
    """Median over rounds of gateway/baseline, each round's pair measured back to back.

    Pairing cancels slow drifts of the machine (other tenants, thermal), which move both
    numbers of a round together.
    """
    gateway, baseline = results[("gateway", scenario)], results[("baseline", scenario)]
    ratios = [
        _ratio(getattr(g, metric), getattr(b, metric))
        for g, b in zip(gateway, baseline, strict=True)
    ]
    return statistics.median(ratios), ratios


def _summary(
    args: argparse.Namespace,
    results: dict[tuple[str, str], list[Result]],
    rss: list[tuple[int, int, int]],
) -> list[tuple[str, str, bool]]:
    """Print the summary table and the targets; return (target, value, met) for each."""
    checks: list[tuple[str, str, bool]] = []
    med = {key: _median_result(value) for key, value in results.items()}

    def row(label: str, scenario: str, metric: str, digits: int) -> float:
        g = getattr(med[("gateway", scenario)], metric)
        b = getattr(med[("baseline", scenario)], metric)
        ratio, ratios = _paired_ratio(results, scenario, metric)
        rounds = " ".join(f"{r:.2f}" for r in ratios) if len(ratios) > 1 else ""
        print(f"  {label:<34}{g:>12.{digits}f}{b:>12.{digits}f}{ratio:>9.3f}   {rounds}".rstrip())
        return ratio

    print()
    print("summary: medians over rounds; ratio = gateway/baseline, median of the per-round ratios")
    print(f"  {'':<34}{'gateway':>12}{'baseline':>12}{'ratio':>9}   per round")
    for scenario, conns in (("rps", args.conns), ("latency", args.latency_conns)):
        if ("gateway", scenario) not in med:
            continue
        rps = row(f"req/s @{conns} conns", scenario, "rps", 1)
        row(f"p50 ms @{conns} conns", scenario, "p50_ms", 2)
        p99 = row(f"p99 ms @{conns} conns", scenario, "p99_ms", 2)
        row(f"proxy CPU us/request @{conns} conns", scenario, "cpu_us", 1)
        if scenario == "rps":
            text = f"throughput @{conns} conns >= {TARGET_RPS_RATIO}x baseline"
            checks.append((text, f"{rps:.3f}x", rps >= TARGET_RPS_RATIO))
        else:
            text = f"p99 @{conns} conns <= {TARGET_P99_RATIO}x baseline"
            checks.append((text, f"{p99:.3f}x", p99 <= TARGET_P99_RATIO))
    if ("gateway", "download") in med:
        conns = args.download_conns
        mbps = row(f"5 MB download MB/s @{conns} conns", "download", "mb_per_s", 1)
        row(f"5 MB downloads/s @{conns} conns", "download", "rps", 2)
        growth_mb = max((after - before) / 1024 for before, after, _ in rss)
        peak_mb = max((peak - before) / 1024 for before, _, peak in rss)
        print(
            f"  {'gateway RSS growth, download run':<34}{growth_mb:>+9.1f} MB"
            f"  (largest over rounds; peak during a run {peak_mb:+.1f} MB over its start)"
        )
        text = f"5 MB download throughput >= {TARGET_DOWNLOAD_RATIO}x baseline"
        checks.append((text, f"{mbps:.3f}x", mbps >= TARGET_DOWNLOAD_RATIO))
        text = f"RSS growth during downloads < {TARGET_RSS_GROWTH_MB:g} MB"
        checks.append((text, f"{growth_mb:+.1f} MB", growth_mb < TARGET_RSS_GROWTH_MB))
    print()
    print("targets")
    for text, value, ok in checks:
        print(f"  {_verdict(ok):<8} {text:<48} {value}")
    busy = max(r.other_cpu for runs in results.values() for r in runs)
    if busy > BUSY_MACHINE_PCT:
        print(
            f"  WARNING  other processes used up to {busy:.0f}% of a core during a run: "
            "the machine was not quiet, rerun for firmer numbers"
        )
    return checks


def _print_profile(path: Path) -> None:
    import pstats

    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not path.exists():
        print(f"no profile written to {path}")
        return
    print(f"\ngateway cProfile ({path}), top 30 by own time:")
    pstats.Stats(str(path)).sort_stats("tottime").print_stats(30)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (about 20 s)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (order alternates)")
    parser.add_argument("--conns", type=int, default=50, help="connections, throughput run")
    parser.add_argument("--latency-conns", type=int, default=10, help="connections, p99 run")
    parser.add_argument("--download-conns", type=int, default=8, help="connections, 5 MB run")
    parser.add_argument(
        "--loadgen", choices=("auto", "wrk", "python"), default="auto", help="load generator"
    )
    parser.add_argument(
        "--only",
        type=lambda text: [part for part in text.split(",") if part],
        default=["rps", "latency", "download"],
        metavar="LIST",
        help="comma-separated scenarios to run: rps,latency,download (default: all)",
    )
    parser.add_argument(
        "--plugins",
        type=lambda text: [part for part in text.split(",") if part],
        default=["auth", "audit"],
        metavar="LIST",
        help="comma-separated plugins left on in the gateway; every other one is disabled "
        "(the cache too, unless listed: it would answer the repeated retrieve itself)",
    )
    parser.add_argument("--asyncio", action="store_true", help="use asyncio even with uvloop")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--cprofile",
        metavar="FILE",
        help="run the gateway under cProfile, write stats to FILE and print the top entries",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [CHILD_FLAG]:
        return _child_main(argv[1], json.loads(argv[2]))
    args = _parser().parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds = 2.0, 1.0, 1
    if not 0 < args.duration <= 60 or not 0 <= args.warmup <= 30 or not 1 <= args.rounds <= 5:
        raise SystemExit("--duration must be in (0, 60], --warmup in [0, 30], --rounds in [1, 5]")
    if min(args.conns, args.latency_conns, args.download_conns) < 1:
        raise SystemExit("connection counts must be at least 1")
    if not {"auth", "audit"} <= set(args.plugins):
        raise SystemExit("--plugins must include auth and audit (the sanity checks use them)")
    unknown = set(args.only) - {"rps", "latency", "download"}
    if unknown or not args.only:
        raise SystemExit(f"--only: unknown or no scenario {sorted(unknown)}")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
