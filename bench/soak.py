"""Soak: mixed traffic through a gateway with every built-in plugin, in front of the sandbox.

Run from the repository root (10 minutes; ``--quick`` for one minute)::

    .venv/bin/python bench/soak.py [--minutes 10] [--quick] [--workers 1] [--strict]

The sandbox, a redis-server (killed and restarted midway) and ``stripe-gateway serve``
run as subprocesses on 127.0.0.1; the traffic (retrieves, lists, creates with keys,
Forwarding, bursts, trickled bodies, clients that leave) comes from this process while the
sandbox injects faults. Reports RSS, open fds, audit coverage, the error log by event and a
verdict table: see bench/README.md. Exit status 0, or 1 with ``--strict`` and an aim missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cache_bench as cb
import harness as hb
import workers_bench as wb

HOST = hb.HOST
UPSTREAM_KEY = "sk_test_soak_upstream_000000000001"
ADMIN_TOKEN = "adm_soak_token_0000000000000001"
AUTH = {"Authorization": f"Bearer {hb.GATEWAY_KEY}"}
BURST_PATH = "/v1/climate/products"  # rate-limited route: 5/s (burst 5)
FAULTS: list[tuple[str, dict[str, float]]] = [("500", {"error_rate": 0.3})]
FAULTS += [("429", {"rate_limit_rate": 0.3}), ("reset", {"reset_rate": 0.2})]
FAULTS += [("truncate", {"truncate_rate": 0.3})]
FAULTS += [("latency", {"latency_ms": 200, "latency_max_ms": 1500})]
#: (kind, weight) of what each client loop does next
MIX = {"retrieve": 30, "list": 10, "create": 10, "forwarding": 8, "bad_key": 2, "trickle": 3}
MIX |= {"left_mid_request": 3, "left_waiting": 3, "left_mid_response": 3}
#: warnings and errors the injected faults and the Redis restart explain
EXPECTED_EVENTS = {
    "upstream_error": "sandbox resets (502) and latency (504)",
    "upstream_broken_body": "sandbox truncation",
    "cache_backend_unavailable": "Redis restart",
    "rate_limit_backend_unavailable": "Redis restart",
}


@dataclass
class Tally:
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: X-Gateway-Request-Id -> kind, of every answer whose head was read
    answered: dict[str, str] = field(default_factory=dict)
    #: probe object id -> kind, for clients that left before any answer
    probes: dict[str, str] = field(default_factory=dict)
    #: sent, then the connection failed before an answer: may or may not have an audit line
    uncertain: int = 0
    #: connection refused: the gateway never saw these
    not_sent: int = 0
    sent: int = 0

    def add(self, kind: str, outcome: str, rid: str | None = None, probe: str = "") -> None:
        self.outcomes[(kind, outcome)] += 1
        if rid:
            self.answered[rid] = kind
        if probe:
            self.probes[probe] = kind


class Soak:
    def __init__(self, args: argparse.Namespace, gw: wb.Gateway, control: str, admin: str):
        self.args, self.gw, self.control, self.admin = args, gw, control, admin
        self.tally = Tally()
        self.rng = random.Random(args.seed)
        self.go = asyncio.Event()
        self.in_flight = self.probe_no = 0
        self.ids: list[str] = []
        self.files: list[str] = []
        self.fault = "none"
        self.redis: dict[str, Any] = {}
        self.session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ one request

    async def call(
        self, kind: str, method: str, path: str, *, data: Any = None, **headers: str
    ) -> Any:
        """One request; the decoded JSON answer when it was a whole 200, else None."""
        assert self.session is not None
        self.tally.sent += 1
        try:
            async with self.session.request(
                method, self.gw.url + path, data=data, headers={**AUTH, **headers}
            ) as r:
                rid = r.headers.get("X-Gateway-Request-Id")
                outcome, body = str(r.status), b""
                try:
                    body = await r.read()
                except (aiohttp.ClientError, TimeoutError):
                    outcome += " broken body"
                if kind in ("retrieve", "burst"):
                    outcome += f" {r.headers.get('X-Cache', '-')}"
                self.tally.add(kind, outcome + ("" if rid else " (no request id)"), rid)
                return json.loads(body) if outcome == "200" else None
        except aiohttp.ClientConnectorError:
            self.tally.not_sent += 1
            self.tally.add(kind, "connection refused")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.tally.uncertain += 1
            self.tally.add(kind, f"no answer: {type(exc).__name__}")
        return None

    async def raw(self, kind: str, method: str, path: str, body: bytes, leave: str) -> None:
        """Over a bare socket: trickle the body (~3 s), and read the answer or leave
        (``leave``: ``mid_request``, ``waiting``, ``mid_response`` or ``no``)."""
        self.tally.sent += 1
        try:
            reader, writer = await asyncio.open_connection(HOST, int(self.gw.url.rsplit(":", 1)[1]))
        except OSError:
            self.tally.not_sent += 1
            self.tally.add(kind, "connection refused")
            return
        head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
        head += f"Authorization: {AUTH['Authorization']}\r\n"
        if body:
            head += "Content-Type: application/x-www-form-urlencoded\r\n"
            head += f"Content-Length: {len(body)}\r\n"
        probe = path.rsplit("/", 1)[1]
        try:
            writer.write((head + "\r\n").encode())
            if leave == "mid_request":
                writer.write(body[: len(body) // 2])
                await writer.drain()
                await asyncio.sleep(0.3)
                return self.tally.add(kind, "left mid-request", probe=probe)
            step = max(1, len(body) // 10)
            for start in range(0, len(body), step):
                writer.write(body[start : start + step])
                await writer.drain()
                await asyncio.sleep(0.3)
            if leave == "waiting":
                await asyncio.sleep(0.02)
                return self.tally.add(kind, "left waiting", probe=probe)
            status = (await asyncio.wait_for(reader.readline(), 30)).split(b" ")[1].decode()
            headers = {}
            while (line := await asyncio.wait_for(reader.readline(), 30)) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            rid = headers.get("x-gateway-request-id")
            if leave == "mid_response":
                await reader.read(1024)
                writer.transport.abort()
                status += ", left mid-response"
            else:
                await asyncio.wait_for(reader.read(), 30)
            self.tally.uncertain += rid is None
            self.tally.add(kind, status, rid)
        except (OSError, TimeoutError, IndexError) as exc:
            self.tally.uncertain += 1
            self.tally.add(kind, f"no answer: {type(exc).__name__}")
        finally:
            writer.close()

    # ------------------------------------------------------------------ the mix

    async def one(self, kind: str) -> None:
        n = self.rng.randrange(1 << 30)
        self.probe_no += 1
        probe = f"/v1/webhook_endpoints/we_soakprobe{self.probe_no:08d}"
        if kind == "retrieve":
            path = f"/v1/sigma/scheduled_query_runs/{self.rng.choice(self.ids)}"
            await self.call(
                kind, "GET", path, **({"Cache-Control": "no-cache"} if n % 10 == 0 else {})
            )
        elif kind == "list":
            path = ["/v1/webhook_endpoints", "/v1/sigma/scheduled_query_runs"][n % 2] + "?limit=3"
            await self.call(kind, "GET", path)
        elif kind == "create":  # a third reuse one of 50 keys: replays
            key = f"soak-{n % 50 if n % 3 == 0 else n}"
            form = {"url": f"https://example.com/{key}", "enabled_events[]": "charge.succeeded"}
            made = await self.call(
                kind, "POST", "/v1/webhook_endpoints", data=form, **{"Idempotency-Key": key}
            )
            if made is not None and n % 2 == 0:
                await self.call("delete", "DELETE", f"/v1/webhook_endpoints/{made['id']}")
        elif kind == "forwarding":  # no Idempotency-Key: the idempotency plugin adds one
            form = {"payment_method": "pm_card_visa", "url": "https://example.com/forward"}
            form |= {"replacements[]": "card_number", "request[body]": '{"card": ""}'}
            form |= {"request[headers][0][name]": "Authorization"}
            form |= {"request[headers][0][value]": "Bearer partner_secret_0001"}
            await self.call(kind, "POST", "/v1/forwarding/requests", data=form)
        elif kind == "bad_key":
            await self.call(kind, "GET", "/v1/webhook_endpoints", Authorization="Bearer gw_nokey")
        elif kind == "trickle":
            body = f"url=https://example.com/t{n}&enabled_events[]=charge.succeeded".encode()
            await self.raw(kind, "POST", "/v1/webhook_endpoints", body, "no")
        elif kind == "left_mid_request":
            await self.raw(kind, "POST", probe, b"metadata[soak]=" + b"x" * 600, "mid_request")
        elif kind == "left_waiting":
            await self.raw(kind, "GET", probe, b"", "waiting")
        elif kind == "left_mid_response":
            path = f"/v1/files/{self.rng.choice(self.files)}/contents"
            await self.raw(kind, "GET", path, b"", "mid_response")

    async def client(self, deadline: float, burst: bool = False) -> None:
        while time.monotonic() < deadline:
            await self.go.wait()
            self.in_flight += 1
            kind = "burst" if burst else self.rng.choices(list(MIX), list(MIX.values()))[0]
            try:
                if burst:
                    await asyncio.gather(*(self.call(kind, "GET", BURST_PATH) for _ in range(25)))
                else:
                    await self.one(kind)
            except Exception as exc:  # a bug here: counted and shown, the soak goes on
                self.tally.add(kind, f"SOAK SCRIPT ERROR {type(exc).__name__}: {exc}"[:80])
            finally:
                self.in_flight -= 1
            await asyncio.sleep(2.0 if burst else 0)

    # ------------------------------------------------------------------ faults and Redis

    async def faults(self, deadline: float, slot: float, outage: tuple[float, float]) -> None:
        """Fault slots alternate with clean ones; none near the Redis outage or the end."""
        assert self.session is not None
        index = 0
        while (now := time.monotonic()) + 2 * slot < deadline:
            near = outage[0] - slot <= now <= outage[1] + slot
            self.fault, settings = FAULTS[index // 2 % len(FAULTS)] if index % 2 else ("none", {})
            self.fault, index = ("none", index) if near else (self.fault, index + 1)
            method = "POST" if settings and not near else "DELETE"
            async with self.session.request(method, self.control + "/faults", json=settings) as r:
                r.raise_for_status()
            await asyncio.sleep(slot)
        self.fault = "none"
        async with self.session.delete(self.control + "/faults") as r:
            r.raise_for_status()

    async def ready(self) -> int:
        assert self.session is not None
        async with self.session.get(self.admin + "/readyz") as r:
            return r.status

    async def redis_restart(
        self, bench: cb.CacheBench, child: hb.Child, at: float, down: float
    ) -> None:
        """Kill redis-server at ``at``, start it again on its port ``down`` seconds later."""
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        child.proc.kill()
        child.proc.wait(5)
        bench.children.remove(child)
        self.redis["killed"] = time.time()
        await asyncio.sleep(down / 2)
        self.redis["readyz_down"] = await self.ready()
        await asyncio.sleep(down / 2)
        await asyncio.to_thread(bench.start_redis, None, child.info["port"])
        self.redis["restarted"] = time.time()
        for _ in range(120):  # bounded: /readyz is 200 again once the plugins reach Redis
            if await self.ready() == 200:
                self.redis["ready_after"] = time.time() - self.redis["restarted"]
                break
            await asyncio.sleep(0.25)

    # ------------------------------------------------------------------ measuring

    def sample(self) -> tuple[float, int]:
        """RSS in MB and open fds, summed over the gateway's processes."""
        pids = [self.gw.proc.pid] + (self.gw.pids() if self.gw.workers > 1 else [])
        rss = sum(hb._rss_kb(p) for p in pids) / 1024
        return rss, sum(len(os.listdir(f"/proc/{p}/fd")) for p in pids)

    async def quiet_sample(self) -> tuple[float, int]:
        """Pause the traffic, let in-flight requests finish, then sample."""
        self.go.clear()
        for _ in range(1200):
            if self.in_flight == 0:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        return self.sample()


async def _drive(
    args: argparse.Namespace, soak: Soak, bench: cb.CacheBench, redis: hb.Child | None
) -> list[tuple[float, int]]:
    connector = aiohttp.TCPConnector(force_close=True, limit=0)  # one connection per request
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        soak.session = session
        answer = await soak.call("setup", "GET", "/v1/sigma/scheduled_query_runs?limit=100")
        runs = answer["data"] if answer else []
        soak.ids = [run["id"] for run in runs] + ["sqr_soakmissing00000001"]
        soak.files = [run["file"]["id"] for run in runs if run.get("file")]
        if not soak.files:
            raise RuntimeError(f"sandbox has no scheduled query run files: {runs!r:.300}")
        start = time.monotonic()
        deadline = start + args.minutes * 60
        warmup = min(60.0, args.minutes * 10)
        soak.go.set()
        tasks = [asyncio.create_task(soak.client(deadline)) for _ in range(args.clients)]
        tasks.append(asyncio.create_task(soak.client(deadline, burst=True)))
        await asyncio.sleep(warmup)
        samples = [await soak.quiet_sample()]
        print(
            f"after {warmup:.0f} s of warm-up: RSS {samples[0][0]:.1f} MB, {samples[0][1]} fds",
            flush=True,
        )
        soak.go.set()
        rest = deadline - time.monotonic()
        slot = max(3.0, min(20.0, rest / 16))
        at = time.monotonic() + rest * 0.45
        tasks.append(asyncio.create_task(soak.faults(deadline, slot, (at, at + slot * 1.5))))
        if redis is not None:
            tasks.append(asyncio.create_task(soak.redis_restart(bench, redis, at, slot * 1.5)))
        every = max(10.0, args.minutes * 3)
        while not all(t.done() for t in tasks) and time.monotonic() < deadline + 120:
            await asyncio.wait(tasks, timeout=every)
            rss, fds = soak.sample()
            print(
                f"  t={time.monotonic() - start:4.0f} s  sent {soak.tally.sent:6d}  RSS "
                f"{rss:6.1f} MB  fds {fds:4d}  faults: {soak.fault}",
                flush=True,
            )
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks)  # raises what a task raised
        samples.append(await soak.quiet_sample())
    return samples


def _toml(value: Any) -> str:
    """A value as TOML: tables and arrays inline, strings JSON-quoted (TOML basic strings)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else json.dumps(value)


def _config(tmp: Path, sandbox: str, redis_url: str | None, args: argparse.Namespace) -> Path:
    def redis(name: str) -> dict[str, Any]:
        use = getattr(args, name) == "redis" and redis_url
        return {"backend": "redis", "redis_url": redis_url, "redis_timeout": 0.5} if use else {}

    def digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    limits = {"read": {"rate": 500, "burst": 500}, "write": {"rate": 200, "burst": 200}}
    config = {
        "server": {"host": HOST, "port": 0, "drain_timeout": 5.0},
        "upstream": {"api": sandbox, "files": sandbox, "read_timeout": 10.0},
        "admin": {"host": HOST, "port": args.admin_port, "token_sha256": digest(ADMIN_TOKEN)},
        "plugins": {
            "audit": {"path": str(tmp / "audit.jsonl")},
            "cache": {**redis("cache"), "default_ttl": 3.0, "final_ttl": 3.0},
            "idempotency": {"all_writes": True, "backoff": 0.1},
            "rate_limit": {
                **redis("rate_limit"),
                "default": {**limits, "routes": [{"route": f"GET {BURST_PATH}", "rate": 5}]},
            },
        },
        "teams": [
            {"name": "soak", "key_sha256": [digest(hb.GATEWAY_KEY)], "upstream_key_env": "SOAK_KEY"}
        ],
    }
    path = tmp / "gateway.toml"
    path.write_text("".join(f"{key} = {_toml(value)}\n" for key, value in config.items()))
    return path


def _audit(path: Path, tally: Tally, redis: dict[str, Any]) -> dict[str, Any]:
    """Match audit lines to requests; what happened while Redis was down and after."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rids = {ln["request_id"] for ln in lines}
    objects = {ln.get("object_id") for ln in lines}

    def kind(ln: dict[str, Any]) -> str:
        return tally.answered.get(ln["request_id"]) or tally.probes.get(ln["object_id"] or "", "?")

    report: dict[str, Any] = {
        "lines": len(lines),
        "missing": Counter(k for rid, k in tally.answered.items() if rid not in rids)
        + Counter(k for probe, k in tally.probes.items() if probe not in objects),
        "extra": Counter(kind(ln) for ln in lines if kind(ln) == "?"),
        "status_0": Counter(kind(ln) for ln in lines if ln.get("status") == 0),
        "errors": Counter(ln.get("error") for ln in lines if ln.get("error")),
    }
    if "restarted" in redis:
        up = redis["restarted"] + redis.get("ready_after", 0.0) + 2.0  # + 2 s: the breakers
        window: dict[str, Counter[str]] = {"down": Counter(), "after": Counter()}
        for ln in lines:
            at = datetime.fromisoformat(ln["timestamp"]).timestamp()
            phase = "down" if redis["killed"] <= at <= redis["restarted"] else "after"
            if phase == "down" or at > up:
                window[phase][f"cache={ln.get('cache')}"] += 1
                window[phase][f"rate_limit={ln.get('rate_limit')}"] += 1
                window[phase][f"{ln['status'] // 100}xx"] += 1
        report["redis"] = window
    return report


def _error_log(stderr: list[str]) -> dict[str, Counter[str]]:
    """The gateway's error log, warning and error lines counted by event (and exception)."""
    found: dict[str, Counter[str]] = {"error": Counter(), "warning": Counter()}
    for raw in stderr:
        try:
            line = json.loads(raw)
        except ValueError:
            if raw.strip() and "listening on" not in raw:
                found["error"]["(not JSON) " + raw.strip()[:60]] += 1
            continue
        level = "error" if line.get("level") in ("error", "critical", "exception") else "warning"
        exc = str(line.get("exception", "")).strip().rsplit("\n", 1)[-1].split(":")[0]
        if line.get("level") in ("error", "critical", "exception", "warning"):
            found[level][str(line.get("event"))[:70] + (f" [{exc}]" if exc else "")] += 1
    return found


def _report(
    args: argparse.Namespace,
    soak: Soak,
    samples: list[tuple[float, int]],
    audit: dict[str, Any],
    log: dict[str, Counter[str]],
    code: int,
) -> bool:
    tally = soak.tally
    print("\nrequests sent, by kind and outcome")
    for (kind, outcome), n in sorted(tally.outcomes.items()):
        print(f"  {kind:<18} {outcome:<34} {n:7d}")
    seen = len(tally.answered) + len(tally.probes)
    print(
        f"  {tally.sent} sent: {len(tally.answered)} answered (head read, request id known), "
        f"{len(tally.probes)} left before an answer (probe ids), {tally.uncertain} failed "
        f"after sending, {tally.not_sent} never reached the gateway (connection refused)"
    )
    missing = sum(audit["missing"].values())
    print(
        f"\naudit: {audit['lines']} lines; {seen} requests the gateway surely saw, "
        f"{missing} of them without a line {dict(audit['missing'])}"
    )
    print(
        f"  lines matching no request sent: {sum(audit['extra'].values())} "
        f"(at most {tally.uncertain} expected); error fields: {dict(audit['errors'])}"
    )
    print(f"  lines with status 0: {dict(audit['status_0'])}")
    unexplained = 0
    for level in ("error", "warning"):
        print(f"\nerror log, {level} lines by event:" + ("" if log[level] else " none"))
        for event, n in log[level].most_common():
            why = EXPECTED_EVENTS.get(event.split(" [")[0])
            unexplained += n if level == "error" and why is None else 0
            print(f"  {n:6d}  {event}  ({why or 'NOT explained by an injected fault'})")
    (rss0, fds0), (rss1, fds1) = samples
    checks = [
        (f"RSS flat after warm-up (within {args.rss_mb:g} MB)", f"{rss0:.1f} -> {rss1:.1f} MB")
    ]
    checks += [("open fds flat (within 10)", f"{fds0} -> {fds1}")]
    checks += [("audit line for every request the gateway saw", f"{missing} missing")]
    checks += [("no unexplained error-level log lines", f"{unexplained} lines")]
    checks += [("gateway stopped with exit code 0", str(code))]
    met = [rss1 - rss0 <= args.rss_mb, fds1 - fds0 <= 10, missing == 0, not unexplained, not code]
    if "redis" in audit:
        down, after = audit["redis"]["down"], audit["redis"]["after"]
        print(
            f"\nRedis killed: /readyz said {soak.redis.get('readyz_down')} while down, 200 again "
            f"{soak.redis.get('ready_after', float('nan')):.1f} s after the restart"
        )
        print(f"  audit lines while down: {dict(sorted(down.items()))}")
        print(f"  audit lines after (+2 s): {dict(sorted(after.items()))}")
        fallback = sum(n for k, n in down.items() if "fallback" in k or "unavailable" in k)
        checks += [
            ("Redis down: no 5xx, rate limits fall back", f"{down['5xx']} 5xx, {fallback} fallback")
        ]
        checks += [
            (
                "Redis back: Redis decisions and cache hits",
                f"{after['rate_limit=allow']} allow, {after['cache=HIT']} HIT",
            )
        ]
        met += [down["5xx"] == 0 and fallback > 0, after["rate_limit=allow"] > 0]
        met[-1] &= args.cache == "memory" or after["cache=HIT"] > 0
    print("\nverdict")
    for (text, value), ok in zip(checks, met, strict=True):
        print(f"  {'MET' if ok else 'MISSED':<7} {text:<48} {value}")
    return all(met)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    bench = cb.CacheBench(argparse.Namespace(asyncio=False, loadgen="python"), tmp)
    uses_redis = "redis" in (args.cache, args.rate_limit)
    redis = bench.start_redis(None) if uses_redis else None
    redis_url = f"redis://{HOST}:{redis.info['port']}/0" if redis else None
    sandbox_port, control_port, args.admin_port = (hb.free_port() for _ in range(3))
    log = (tmp / "sandbox.log").open("wb")
    command = [sys.executable, "-m", "gateway", "sandbox", "--port", str(sandbox_port)]
    command += ["--control-port", str(control_port)]
    sandbox = subprocess.Popen(
        command, cwd=wb.REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log
    )
    gw: wb.Gateway | None = None
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection((HOST, control_port), 1):
                break
            time.sleep(0.05)
        config = _config(tmp, f"http://{HOST}:{sandbox_port}", redis_url, args)
        env = {"SOAK_KEY": UPSTREAM_KEY}
        gw = wb.start_serve(config, tmp / "audit.jsonl", args.workers, env)
        print(
            f"stripe-gateway soak: {args.minutes:g} min, {args.clients} client loops + bursts "
            f"of 25, seed {args.seed}; files in {tmp}"
        )
        print(
            f"  gateway {gw.url} ({args.workers} worker(s)): auth audit redaction "
            f"cache({args.cache}) idempotency rate_limit({args.rate_limit}) metrics (admin "
            f":{args.admin_port}); sandbox :{sandbox_port} (faults :{control_port}); "
            f"redis {redis_url}",
            flush=True,
        )
        soak = Soak(args, gw, f"http://{HOST}:{control_port}", f"http://{HOST}:{args.admin_port}")
        samples = asyncio.run(_drive(args, soak, bench, redis))
        for _ in range(60):  # audit lines are written after the response: wait until none come
            size = gw.audit.stat().st_size
            time.sleep(0.5)
            if gw.audit.stat().st_size == size:
                break
        report = _audit(gw.audit, soak.tally, soak.redis)
        code = gw.stop()
        (tmp / "gateway.log").write_text("".join(gw.stderr))
        ok = _report(args, soak, samples, report, _error_log(gw.stderr), code)
        print(f"\ntotal time {time.monotonic() - started:.0f} s")
        return 1 if args.strict and not ok else 0
    finally:
        if gw is not None:
            gw.stop()
        sandbox.send_signal(signal.SIGTERM)
        sandbox.wait(10)
        log.close()
        bench.stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run (10)")
    parser.add_argument("--quick", action="store_true", help="a one-minute run")
    parser.add_argument("--workers", type=int, default=1, help="serve --workers N (1)")
    parser.add_argument("--cache", choices=("redis", "memory"), default="redis")
    parser.add_argument("--rate-limit", choices=("redis", "memory"), default="redis")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client loops (8)")
    parser.add_argument("--rss-mb", type=float, default=20.0, help="allowed RSS growth, MB (20)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the traffic mix")
    parser.add_argument("--strict", action="store_true", help="exit 1 when an aim is missed")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes = 1.0
    if not 0.5 <= args.minutes <= 120 or not 1 <= args.clients <= 64 or args.workers < 1:
        raise SystemExit("--minutes must be in [0.5, 120], --clients in [1, 64], --workers >= 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
