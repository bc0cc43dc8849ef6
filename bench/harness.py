"""The harness the bench scripts share: processes, core pinning, load generators, CPU and
memory accounting.

Not a benchmark itself; ``proxy_bench.py``, ``cache_bench.py``, ``rate_limit_bench.py``,
``redaction_bench.py``, ``workers_bench.py``, ``webhook_bench.py`` and ``soak.py`` import it
(bench/ is not a package: each puts its own directory on ``sys.path``). What it holds:

* the parts every scenario runs, each in its own process (``python bench/harness.py
  _child ROLE PARAMS``): ``upstream``, a minimal Stripe stand-in (``GET
  /v1/customers/{id}`` answers a small JSON object, ``GET /v1/files/{id}/contents`` streams
  a 5 MB CSV in 64 KiB chunks, ``POST`` answers a small payment intent); ``gateway``, the
  gateway app served by ``gateway.serve.server.serve`` with only the plugins asked for;
  ``baseline``, a minimal aiohttp pass-through proxy; ``loadgen``, a small closed-loop
  aiohttp client (used when ``wrk`` is not installed);
* :class:`Bench`: starts those children (pinned to cores as ``_layout`` lays them out),
  stops them all on exit, runs closed-loop loads with ``wrk`` or the Python client, and
  measures one run (req/s, latency, CPU per request, other processes' CPU), printing one
  line per run;
* :func:`free_port`, and CPU and RSS readers from ``/proc``.

Children stop by themselves when the parent process dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
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
FILE_PATH = "/v1/files/file_Bench00000001"
#: a file object as Stripe answers a retrieve: its url on Stripe's files host
FILE_OBJECT = {
    "id": "file_Bench00000001",
    "object": "file",
    "created": 1717243200,
    "expires_at": 1719835200,
    "filename": "frr_Bench00000001.csv",
    "links": {"object": "list", "data": [], "has_more": False, "url": "/v1/file_links"},
    "purpose": "finance_report_run",
    "size": 5242880,
    "title": None,
    "type": "csv",
    "url": "https://files.stripe.com/v1/files/file_Bench00000001/contents",
}
DOWNLOAD_BYTES = 5 * 1024 * 1024
DOWNLOAD_CHUNK = 64 * 1024
CHILD_FLAG = "_child"
#: a child process stops by itself after this many seconds, whatever happens to the parent
CHILD_MAX_LIFETIME = 900.0

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

    file_object = json.dumps(FILE_OBJECT, indent=2).encode()

    async def file_retrieve(request: web.Request) -> web.Response:  # for file_urls_bench.py
        return web.Response(
            body=file_object, content_type="application/json", headers=stripe_headers()
        )

    app = web.Application()
    app.router.add_get("/v1/customers/{id}", customer)
    app.router.add_get("/v1/files/{id}", file_retrieve)
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
    for name, table in params.get("settings", {}).items():  # [plugins.<name>] tables
        data["plugins"][name] = table
    if "metrics" in keep:  # metrics count only when the admin listener that shows them is on
        data["admin"] = {"host": HOST, "port": free_port()}
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


def load_parser(
    doc: str | None, quick: str, conns: int, conns_help: str
) -> argparse.ArgumentParser:
    """The options every load bench shares (``--quick`` runs about ``quick``); a bench adds
    its own to the parser returned, and reads them back with :func:`load_args`."""
    parser = argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help=f"short smoke run ({quick})")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (order alternates)")
    parser.add_argument("--conns", type=int, default=conns, help=conns_help)
    parser.add_argument(
        "--loadgen", choices=("auto", "wrk", "python"), default="auto", help="load generator"
    )
    parser.add_argument("--asyncio", action="store_true", help="use asyncio even with uvloop")
    return parser


def load_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by a :func:`load_parser`: ``--quick`` applied (2 s runs, one round)
    and the shared options checked."""
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds = 2.0, 1.0, 1
    if not 0 < args.duration <= 60 or not 0 <= args.warmup <= 30 or not 1 <= args.rounds <= 5:
        raise SystemExit("--duration must be in (0, 60], --warmup in [0, 30], --rounds in [1, 5]")
    if args.conns < 1:
        raise SystemExit("--conns must be at least 1")
    return args


def free_port() -> int:
    """A port free on the loopback address now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


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
        self,
        url: str,
        conns: int,
        seconds: float,
        *,
        timeout_s: float = 10.0,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One closed-loop run; the dict has requests, seconds, bytes, errors, p50_ms, p99_ms.

        ``headers`` are sent with every request besides the team key's ``Authorization``."""
        headers = {"Authorization": f"Bearer {GATEWAY_KEY}", **(headers or {})}
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
        self,
        target: Child,
        scenario: str,
        path: str,
        conns: int,
        upstream: Child,
        *,
        headers: dict[str, str] | None = None,
        label: str | None = None,
        others: tuple[Child, ...] = (),
    ) -> Result:
        """One warm-up and one timed run against ``target``; ``others`` (a redis-server)
        are counted with the upstream, not as other processes'."""
        url = target.url + path
        if self.args.warmup > 0:
            self.load(url, conns, self.args.warmup, headers=headers)
        pids = (target.info["pid"], upstream.info["pid"], *(c.info["pid"] for c in others))
        cpu_before = [_cpu_seconds(pid) for pid in pids]
        load_before = _children_cpu_seconds()
        machine_before = _machine_cpu_seconds()
        wall = time.monotonic()
        raw = self.load(url, conns, self.args.duration, headers=headers)
        wall = time.monotonic() - wall
        used = [_cpu_seconds(pid) - b for pid, b in zip(pids, cpu_before, strict=True)]
        used[1:] = [sum(used[1:])]  # the upstream and the others given
        used.append(_children_cpu_seconds() - load_before)
        other = max(0.0, _machine_cpu_seconds() - machine_before - sum(used)) / wall * 100.0
        cpu = [u / wall * 100.0 for u in used]
        seconds = raw["seconds"] or float("nan")
        result = Result(
            target=label or target.role,
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
            f"  {scenario:<8} {label or target.role:<8} c={conns:<3}{result.rps:8.1f} req/s  "
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


def main(argv: list[str] | None = None) -> int:
    """Run one child role (``_child ROLE PARAMS``): what :meth:`Bench.start` spawns."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if argv[:1] != [CHILD_FLAG] or len(argv) != 3:
        raise SystemExit(
            f"usage: harness.py {CHILD_FLAG} ROLE PARAMS (started by the bench scripts)"
        )
    return _child_main(argv[1], json.loads(argv[2]))


if __name__ == "__main__":
    sys.exit(main())
