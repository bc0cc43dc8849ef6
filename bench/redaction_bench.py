"""What redaction costs: per audit record, and in a running gateway's throughput.

Run from the repository root (about 80 seconds; ``--quick`` for a short smoke run)::

    .venv/bin/python bench/redaction_bench.py
    .venv/bin/python bench/redaction_bench.py --quick
    .venv/bin/python bench/redaction_bench.py --only records     # part (a) alone, ~20 s

**(a) Per record**, in this process: :class:`gateway.redaction.redact.RedactingProcessor` on records
shaped like the gateway's: the audit line (about 20 fields: ids, path, team, status,
latencies, byte counts, idempotency key, cache status, client address, timestamp, level),
the same line carrying the request's parameters as the audit plugin logs them (a Stripe
form body of about 1, 2 and 4 KB, with card, billing and shipping details, metadata,
expand and line items, decoded into nested objects by :func:`gateway.redaction.params.decode_form`),
the line with a 2 KB JSON body, and an error line with a formatted traceback. The
``decode`` column is what turning the body into ``params`` costs, the ``marker`` and
``hmac`` columns what redacting the whole record costs with each mask. Each figure is CPU
time per record (``time.process_time``, so other work on a shared machine counts less), the
best of several rounds, with a fresh copy of the event dict each time, as structlog passes
it; the cost of copying is subtracted.

**(b) Throughput**: two gateways with the same config (``auth``, ``audit`` to a file with
its default ``params = true``, every other plugin in ``[plugins] disable``), one of them
with ``redaction`` in ``disable`` too, measured one after the other under the same load:
``POST /v1/payment_intents`` with a ~2 KB form body full of card data and personal data,
50 connections, by ``wrk`` (a Lua script makes the POST) or the harness's Python load
generator. It reuses ``harness.py``'s processes, core pinning, load generators and
CPU accounting (the upstream is the harness's, which answers that POST with a small
payment intent). Rounds alternate the order; the ratio is the median of per-round ratios
(on/off), and the CPU ratio (gateway CPU per request, off/on) is steadier on a busy
machine. The ``other`` column is CPU used by processes this script did not start.
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
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from gateway.redaction.params import LoggedParams
from gateway.redaction.redact import RedactingProcessor, Redactor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb

POST_PATH = "/v1/payment_intents"
FORM = "application/x-www-form-urlencoded"
#: throughput with redaction on, as a share of the same gateway with it off
TARGET_RATIO = 0.90


def audit_line() -> dict[str, Any]:
    return {
        "request_id": "req_gw_8f3a2b1c9d0e4f5a",
        "team": "billing",
        "method": "POST",
        "path": "/v1/payment_intents/pi_3MtwBwLkdIwHu7ix28a3tqPa/confirm",
        "object_id": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
        "stripe_account": "acct_1Nabcdefghij",
        "livemode": False,
        "status": 200,
        "upstream": "api",
        "upstream_request_id": "req_Xy9ZabCdEf0123",
        "duration_ms": 41.532,
        "upstream_ms": 38.2,
        "bytes_in": 1843,
        "bytes_out": 2210,
        "idempotency_key": "6f1c1e8e-2f0b-4b7a-9d55-0c2f3a1b9e77",
        "cache": "BYPASS",
        "rate_limit": None,
        "client": "127.0.0.1",
        "error": None,
        "event": "request",
        "level": "info",
        "timestamp": "2025-05-01T12:00:00.123456Z",
    }


def params(size: int) -> dict[str, str]:
    """Stripe-style parameters whose form encoding is about ``size`` bytes."""
    out = {
        "amount": "2000",
        "currency": "usd",
        "customer": "cus_NffrFeUfNV2Hib",
        "description": "Order #1234 for 3 widgets",
        "payment_method_data[type]": "card",
        "payment_method_data[card][number]": "4242424242424242",
        "payment_method_data[card][exp_month]": "12",
        "payment_method_data[card][exp_year]": "2034",
        "payment_method_data[card][cvc]": "123",
        "payment_method_data[billing_details][name]": "Jenny Rosen",
        "payment_method_data[billing_details][email]": "jenny@example.com",
        "payment_method_data[billing_details][address][line1]": "1234 Main St.",
        "payment_method_data[billing_details][address][city]": "San Francisco",
        "payment_method_data[billing_details][address][postal_code]": "94111",
        "payment_method_data[billing_details][address][country]": "US",
        "shipping[name]": "Jenny Rosen",
        "shipping[address][line1]": "1234 Main St.",
        "shipping[address][city]": "San Francisco",
        "shipping[address][country]": "US",
        "confirm": "true",
        "return_url": "https://example.com/checkout/return",
        "receipt_email": "jenny@example.com",
        "statement_descriptor_suffix": "WIDGETS",
    }
    i = 0
    while len(urlencode(out)) < size:
        out[f"metadata[order_line_{i}]"] = f"sku_{i:04d}-widget-blue-large qty {i % 7 + 1}"
        out[f"expand[{i}]"] = "latest_charge.balance_transaction"
        out[f"line_items[{i}][price]"] = f"price_1Nabc{i:06d}"
        out[f"line_items[{i}][quantity]"] = str(i % 5 + 1)
        i += 1
    return out


def json_body(size: int) -> str:
    body: dict[str, Any] = {
        "amount": 2000,
        "currency": "usd",
        "payment_method_data": {
            "type": "card",
            "card": {"number": "4242424242424242", "cvc": "123", "exp_month": 12},
            "billing_details": {"name": "Jenny Rosen", "email": "jenny@example.com"},
        },
        "metadata": {},
        "line_items": [],
    }
    i = 0
    while len(json.dumps(body)) < size:
        body["metadata"][f"order_line_{i}"] = f"sku_{i:04d}-widget-blue-large qty {i % 7 + 1}"
        body["line_items"].append({"price": f"price_1Nabc{i:06d}", "quantity": i % 5 + 1})
        i += 1
    return json.dumps(body)


def error_line() -> dict[str, Any]:
    try:
        raise ConnectionError(
            "Cannot connect to host api.stripe.com:443 ssl:default [Connection refused]"
        )
    except ConnectionError as exc:
        text = "".join(traceback.format_exception(exc))
    return {
        "event": "upstream_unreachable",
        "level": "error",
        "logger": "gateway",
        "request_id": "req_gw_8f3a2b1c9d0e4f5a",
        "exception": text,
        "timestamp": "2025-05-01T12:00:00.123456Z",
    }


def cpu_us(fn: Callable[[], object], rounds: int, number: int = 2000) -> float:
    """CPU microseconds per call of ``fn``: the best of ``rounds`` rounds."""
    fn()  # warm caches (field names, compiled patterns)
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(number):
            fn()
        best = min(best, time.process_time() - start)
    return best / number * 1e6


def per_record(
    make: Callable[[], dict[str, Any]], processor: RedactingProcessor, rounds: int
) -> float:
    """CPU microseconds per record: best round, the event's copy subtracted.

    The copy is deep for ``params`` (the processor must not see a record it already
    redacted, and it returns a new dict rather than changing the one it is given, but the
    nested objects are rebuilt anyway to be fair to both sides)."""
    template = make()
    return cpu_us(lambda: processor(None, "info", _copy(template)), rounds) - cpu_us(
        lambda: _copy(template), rounds
    )


def _copy(record: dict[str, Any]) -> dict[str, Any]:
    params = record.get("params")
    if isinstance(params, dict):
        return {**record, "params": json.loads(json.dumps(params))}
    return dict(record)


def records(rounds: int) -> None:
    """What the audit plugin logs: ``params`` as :class:`LoggedParams` (query and form
    decoded when the line is written; a JSON body's object as it is). Without redaction
    the renderer decodes the forms; with it, the processor decodes and redacts them in one
    pass, so the cost of redaction is the processor's time minus the decoding."""
    processors = {
        "marker": RedactingProcessor(Redactor()),
        "hmac": RedactingProcessor(Redactor(hmac_key=b"bench-key-0123456789abcdef")),
    }
    cases: list[tuple[str, int, Callable[[], dict[str, Any]], Callable[[], object] | None]] = [
        ("audit line, no params", 0, audit_line, None)
    ]
    for size in (1024, 2048, 4096):
        body = urlencode(params(size))
        cases.append(
            (
                f"+ params, form {len(body)} B",
                len(body),
                lambda b=body: {**audit_line(), "params": LoggedParams([b])},
                lambda b=body: LoggedParams([b]).to_log(),
            )
        )
    body = json_body(2048)
    cases.append(
        (
            f"+ params, JSON {len(body)} B",
            len(body),
            lambda b=body: {**audit_line(), "params": LoggedParams([], json.loads(b))},
            lambda b=body: json.loads(b),
        )
    )
    cases.append(("error line with traceback", 0, error_line, None))

    print("(a) per audit record: CPU µs (best of rounds)")
    print(
        f"  {'record':30s} {'decode':>8s} {'marker':>8s} {'hmac':>8s} {'cost':>8s} "
        f"{'µs/KB body':>11s}"
    )
    base = 0.0
    for name, size, make, decode in cases:
        row = {mode: per_record(make, p, rounds) for mode, p in processors.items()}
        decoded = cpu_us(decode, rounds) if decode is not None else 0.0
        # forms: the processor decodes them itself; JSON: decoded before, as the audit does
        cost = row["marker"] - decoded if "form" in name else row["marker"]
        if size == 0 and "traceback" not in name:
            base = cost
        per_kb = f"{(cost - base) / (size / 1024):11.1f}" if size else f"{'':11s}"
        print(
            f"  {name:30s} {decoded:8.1f} {row['marker']:8.1f} {row['hmac']:8.1f} "
            f"{cost:8.1f} {per_kb}"
        )
    print("  decode: body -> params without redaction (forms: what the renderer does then);")
    print("  marker, hmac: the redaction processor on the whole record (forms decoded and")
    print("  redacted in one pass); cost: what redaction adds per line (marker - decode for")
    print("  forms); µs/KB body: that cost over the bare line's, per KB of body")
    print(flush=True)


# ------------------------------------------------------------------ (b) throughput


def _lua_post(body: str) -> str:
    """A wrk script making every request a POST of ``body`` (a form, so ASCII)."""
    assert "]==]" not in body and body.isascii()
    return f'wrk.method = "POST"\nwrk.body = [==[{body}]==]\n' + hb._WRK_SCRIPT


class PostBench(hb.Bench):
    """The harness's processes and measurements, with a POST of a form body as the load."""

    def __init__(self, args: argparse.Namespace, tmp: Path, body: str) -> None:
        super().__init__(args, tmp)
        self.body = body
        self.wrk_script = tmp / "post.lua"
        self.wrk_script.write_text(_lua_post(body))

    def load(
        self,
        url: str,
        conns: int,
        seconds: float,
        *,
        timeout_s: float = 10.0,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        headers = {
            "Authorization": f"Bearer {hb.GATEWAY_KEY}",
            "Content-Type": FORM,
            **(headers or {}),
        }
        if self.wrk is not None:
            return self._wrk(url, conns, seconds, headers, timeout_s)
        return self._python_load(url, conns, seconds, headers, method="POST", body=self.body)


def _check_line(audit: Path, redacted: bool, card: bool = True) -> dict[str, Any]:
    """The gateway's last audit line: it has params, redacted or not as expected."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (audit.exists() and audit.stat().st_size):
        time.sleep(0.05)
    with audit.open("rb") as f:
        f.seek(max(0, audit.stat().st_size - 65536))
        last: dict[str, Any] = json.loads(f.read().splitlines()[-1])
    assert last.get("status") == 200 and "params" in last, last
    if card:
        number = last["params"].get("payment_method_data", {}).get("card", {}).get("number")
        assert number is not None, last
        assert (number == "…4242") == redacted, f"card number logged as {number!r}"
    return last


GET_PATH = (
    hb.CUSTOMER_PATH + "?expand[]=default_source&expand[]=invoice_settings.default_payment_method"
)


def throughput(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="redaction-bench-"))
    body = urlencode(params(2048))
    bench: hb.Bench = PostBench(args, tmp, body) if args.load == "post" else hb.Bench(args, tmp)
    path = POST_PATH if args.load == "post" else GET_PATH
    atexit.register(bench.stop_all)
    try:
        layout = bench.layout
        upstream = bench.start("upstream", layout.upstream)
        gateways = {}
        for mode, plugins in (("on", ["auth", "audit", "redaction"]), ("off", ["auth", "audit"])):
            audit = tmp / f"audit-{mode}.jsonl"
            gateways[mode] = (
                bench.start(
                    "gateway",
                    layout.server,
                    upstream=upstream.url,
                    audit_path=str(audit),
                    plugins=plugins,
                ),
                audit,
            )
        loadgen = f"wrk ({bench.wrk}, 1 thread)" if bench.wrk else "python aiohttp loadgen"
        print("(b) gateway throughput, redaction on vs off")
        what = (
            f"POST {POST_PATH}, {len(body)} B form body" if args.load == "post" else f"GET {path}"
        )
        print(f"  load           : {loadgen}; {what}, ")
        print(f"                   {args.conns} connections, warm-up {args.warmup:g} s + ")
        print(f"                   {args.duration:g} s per run, {args.rounds} round(s)")
        print(f"  cores          : {layout.describe()}")
        for mode, (child, _) in gateways.items():
            print(
                f"  gateway {mode:<3}    : pid {child.info['pid']}, plugins {child.info['plugins']}"
            )
        print(flush=True)
        for mode, (child, audit) in gateways.items():  # one request each, checked
            bench.load(child.url + path, 1, 1)
            _check_line(audit, redacted=mode == "on", card=args.load == "post")
        results: dict[str, list[hb.Result]] = {"on": [], "off": []}
        for round_no in range(args.rounds):
            print(f"  round {round_no + 1}/{args.rounds}", flush=True)
            order = ["off", "on"] if round_no % 2 == 0 else ["on", "off"]
            for mode in order:
                child, _ = gateways[mode]
                result = bench.measure(child, f"redact {mode}", path, args.conns, upstream)
                results[mode].append(result)
        line = _check_line(gateways["on"][1], redacted=True, card=args.load == "post")
        ratios = [on.rps / off.rps for on, off in zip(results["on"], results["off"], strict=True)]
        cpu = [
            off.cpu_us / on.cpu_us for on, off in zip(results["on"], results["off"], strict=True)
        ]
        ratio, cpu_ratio = statistics.median(ratios), statistics.median(cpu)
        on_med = statistics.median(r.rps for r in results["on"])
        off_med = statistics.median(r.rps for r in results["off"])
        cpu_on = statistics.median(r.cpu_us for r in results["on"])
        cpu_off = statistics.median(r.cpu_us for r in results["off"])
        errors = sum(r.errors for runs in results.values() for r in runs)
        busy = max(r.other_cpu for runs in results.values() for r in runs)
        print()
        print("  summary (medians over rounds)")
        print(f"    req/s            on {on_med:9.1f}   off {off_med:9.1f}")
        print(f"    gateway CPU/req  on {cpu_on:9.1f}   off {cpu_off:9.1f} µs")
        per_round = " ".join(f"{r:.3f}" for r in ratios)
        print(f"    throughput on/off       {ratio:.3f}  (per round: {per_round})")
        print(f"    CPU/request off/on      {cpu_ratio:.3f}")
        cost, cpu_cost = (1 - ratio) * 100, (1 - cpu_ratio) * 100
        print(f"    throughput cost         {cost:.1f}%  (CPU: {cpu_cost:.1f}%)")
        verdict = "MET" if ratio >= TARGET_RATIO else "NOT MET"
        print(f"    target: cost under {(1 - TARGET_RATIO) * 100:.0f}%   {verdict}")
        print(f"    audit line (on) params keys: {sorted(line['params'])[:8]} ...")
        if busy > hb.BUSY_MACHINE_PCT:
            print(
                f"  WARNING  other processes used up to {busy:.0f}% of a core during a run: "
                "the machine was not quiet; trust the CPU ratio more than req/s"
            )
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
    parser.add_argument(
        "--only", choices=("records", "throughput"), help="run one part (default: both)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds")
    parser.add_argument(
        "--load",
        choices=("post", "get"),
        default="post",
        help="throughput load: POST of a 2 KB form full of card and personal data, or a "
        "GET retrieve with expand[] (what most traffic is)",
    )
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
        records(3 if args.quick else 9)
    if args.only != "records":
        return throughput(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
