"""What rewriting file URLs costs: per answer, and in a running gateway's throughput.

Run from the repository root (about 40 seconds; ``--quick`` for a short smoke run)::

    .venv/bin/python bench/file_urls_bench.py
    .venv/bin/python bench/file_urls_bench.py --only answers     # part (a) alone, ~5 s

**(a) Per answer**, in this process: the ``file_urls`` plugin's ``gateway_response_body`` on
answers shaped like Stripe's (two-space indented JSON): a file retrieve, a succeeded report
run with its ``result``, a list of 100 files, and a customer (no files host in it: only the
byte search before any parsing). Each figure is CPU time per answer (``time.process_time``),
the best of several rounds, beside the time ``orjson.loads`` alone takes on the same bytes.

**(b) Throughput**: two gateways with the same plugins (``auth``, ``file_urls``; every other
plugin in ``[plugins] disable``), one with ``public_base_url`` set, measured one after the
other under the same load: ``GET /v1/files/file_…`` (the harness's upstream answers a file
object whose url is on ``files.stripe.com``), 50 connections, by ``wrk`` or the harness's
Python load generator. Rounds alternate the order; the ratio is the median of per-round
ratios (on/off), and the CPU ratio (gateway CPU per request, off/on) is steadier on a busy
machine. File contents are never read whole: ``bench/proxy_bench.py``'s download run
measures them.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import requests

from gateway.config import parse_config
from gateway.context import RequestContext
from plugins.file_urls import FileUrlsPlugin, FileUrlsSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb

BASE = "https://stripe-gateway.internal:8080"


def _indented(obj: Any) -> bytes:
    return json.dumps(obj, indent=2).encode()


def _file(i: int) -> dict[str, Any]:
    return {**hb.FILE_OBJECT, "id": f"file_Bench{i:08d}", "url": hb.FILE_OBJECT["url"]}


def answers() -> list[tuple[str, bytes]]:
    report_run = {
        "id": "frr_Bench00000001",
        "object": "reporting.report_run",
        "created": 1717243200,
        "error": None,
        "livemode": False,
        "parameters": {"interval_start": 1714564800, "interval_end": 1717243200},
        "report_type": "balance.summary.1",
        "result": _file(1),
        "status": "succeeded",
        "succeeded_at": 1717243260,
    }
    listed = {
        "object": "list",
        "data": [_file(i) for i in range(100)],
        "has_more": True,
        "url": "/v1/files",
    }
    return [
        ("file retrieve", _indented(hb.FILE_OBJECT)),
        ("report run", _indented(report_run)),
        ("list of 100 files", _indented(listed)),
        ("customer (no files host)", _indented(hb._CUSTOMER)),
    ]


def cpu_us(fn: Callable[[], object], rounds: int, number: int = 500) -> float:
    """CPU microseconds per call of ``fn``: the best of ``rounds`` rounds."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(number):
            fn()
        best = min(best, time.process_time() - start)
    return best / number * 1e6


def per_answer(rounds: int) -> None:
    plugin = FileUrlsPlugin()
    settings = FileUrlsSettings(public_base_url=BASE)
    plugin.gateway_configure(parse_config({}), settings)
    ctx: Any = RequestContext.__new__(RequestContext)  # the hook reads ctx.state, ctx.audit
    ctx.state, ctx.audit = {"file_urls": True}, {}
    print("(a) per answer: CPU µs (best of rounds)")
    print(f"  {'answer':26s} {'bytes':>7s} {'rewrite':>9s} {'loads':>9s} {'rewrite/loads':>14s}")
    for name, body in answers():
        rewrite = cpu_us(lambda b=body: plugin.gateway_response_body(ctx, None, b), rounds)  # type: ignore[arg-type]
        loads = cpu_us(lambda b=body: orjson.loads(b), rounds)
        print(f"  {name:26s} {len(body):7d} {rewrite:9.1f} {loads:9.1f} {rewrite / loads:14.2f}")
    print("  rewrite: the plugin's gateway_response_body (search, parse, rewrite, write);")
    print("  loads: orjson.loads of the same bytes, the floor of any parse")
    print(flush=True)


def throughput(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="file-urls-bench-"))
    bench = hb.Bench(args, tmp)
    atexit.register(bench.stop_all)
    try:
        layout = bench.layout
        upstream = bench.start("upstream", layout.upstream)
        plugins = ["auth", "file_urls"]
        gateways = {
            "on": bench.start(
                "gateway",
                layout.server,
                upstream=upstream.url,
                plugins=plugins,
                settings={"file_urls": {"public_base_url": BASE}},
            ),
            "off": bench.start("gateway", layout.server, upstream=upstream.url, plugins=plugins),
        }
        for mode, child in gateways.items():  # one request each, checked
            got = requests.get(
                child.url + hb.FILE_PATH,
                headers={"Authorization": f"Bearer {hb.GATEWAY_KEY}"},
                timeout=10,
            ).json()
            assert got["url"].startswith(BASE if mode == "on" else "https://files.stripe.com"), got
        loadgen = f"wrk ({bench.wrk}, 1 thread)" if bench.wrk else "python aiohttp loadgen"
        print("(b) gateway throughput, file URLs rewritten (on) vs not (off)")
        print(f"  load           : {loadgen}; GET {hb.FILE_PATH}, {args.conns} connections,")
        print(f"                   warm-up {args.warmup:g} s + {args.duration:g} s per run, ")
        print(f"                   {args.rounds} round(s)")
        print(f"  cores          : {layout.describe()}")
        print(flush=True)
        results: dict[str, list[hb.Result]] = {"on": [], "off": []}
        for round_no in range(args.rounds):
            print(f"  round {round_no + 1}/{args.rounds}", flush=True)
            for mode in ["off", "on"] if round_no % 2 == 0 else ["on", "off"]:
                result = bench.measure(
                    gateways[mode], f"file_urls {mode}", hb.FILE_PATH, args.conns, upstream
                )
                results[mode].append(result)
        pairs = list(zip(results["on"], results["off"], strict=True))
        ratio = statistics.median(on.rps / off.rps for on, off in pairs)
        cpu_ratio = statistics.median(off.cpu_us / on.cpu_us for on, off in pairs)
        print()
        print("  summary (medians over rounds)")
        for mode in ("on", "off"):
            rps = statistics.median(r.rps for r in results[mode])
            cpu = statistics.median(r.cpu_us for r in results[mode])
            print(f"    {mode:<3}  req/s {rps:9.1f}   gateway CPU/req {cpu:7.1f} µs")
        print(f"    throughput on/off   {ratio:.3f}   (cost {(1 - ratio) * 100:.1f}%)")
        print(f"    CPU/request off/on  {cpu_ratio:.3f}   (cost {(1 - cpu_ratio) * 100:.1f}%)")
        busy = max(r.other_cpu for runs in results.values() for r in runs)
        if busy > hb.BUSY_MACHINE_PCT:
            print(
                f"  WARNING  other processes used up to {busy:.0f}% of a core during a run: "
                "the machine was not quiet; trust the CPU ratio more than req/s"
            )
        errors = sum(r.errors for runs in results.values() for r in runs)
        if errors:
            print(f"  WARNING  {errors} failed or non-200 responses: the numbers are suspect")
            return 1
        return 0
    finally:
        bench.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--only", choices=("answers", "throughput"), help="run one part")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per run")
    parser.add_argument("--conns", type=int, default=50, help="connections")
    parser.add_argument(
        "--loadgen", choices=("auto", "wrk", "python"), default="auto", help="load generator"
    )
    parser.add_argument("--asyncio", action="store_true", help="use asyncio even with uvloop")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2.0
    if args.only != "throughput":
        per_answer(3 if args.quick else 7)
    if args.only != "answers":
        return throughput(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
