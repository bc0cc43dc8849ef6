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
import atexit
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# bench/ is not a package: import the shared harness from this directory
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    _CUSTOMER,
    BUSY_MACHINE_PCT,
    CUSTOMER_PATH,
    DOWNLOAD_BYTES,
    DOWNLOAD_PATH,
    GATEWAY_KEY,
    Bench,
    Child,
    Result,
    _get,
    _rss_kb,
    _rss_sampler,
    load_args,
    load_parser,
)

TARGET_RPS_RATIO = 0.75
TARGET_P99_RATIO = 1.5
TARGET_DOWNLOAD_RATIO = 0.9
TARGET_RSS_GROWTH_MB = 20.0


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
    parser = load_parser(__doc__, "about 20 s", 50, "connections, throughput run")
    parser.add_argument("--latency-conns", type=int, default=10, help="connections, p99 run")
    parser.add_argument("--download-conns", type=int, default=8, help="connections, 5 MB run")
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
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--cprofile",
        metavar="FILE",
        help="run the gateway under cProfile, write stats to FILE and print the top entries",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = load_args(_parser(), argv)
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
