"""What the redaction processor costs per log record.

Run from the repository root (about 20 seconds)::

    .venv/bin/python bench/redaction_bench.py
    .venv/bin/python bench/redaction_bench.py --quick

It times :class:`gateway.redact.RedactingProcessor` alone, in this process, on records
shaped like the gateway's: the audit line (about 20 fields: ids, path, team, status,
latencies, byte counts, idempotency key, cache status, client address, timestamp, level),
the same line carrying the request's parameters as a Stripe form body of about 1, 2 and
4 KB (card, billing and shipping details, metadata, expand, line items) or as a 2 KB JSON
body, and an error line with a formatted traceback. Each figure is CPU time per record
(``time.process_time``, so other work on a shared machine counts less), the best of
several rounds, with a fresh copy of the event dict each time, as structlog passes it;
the cost of copying is subtracted.
Both masks are timed: the fixed marker (default) and the keyed hash.

The gateway's throughput with redaction on and off belongs in ``proxy_bench.py`` once the
processor is wired into the log pipelines.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from gateway.redact import RedactingProcessor, Redactor


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


def per_record(
    make: Callable[[], dict[str, Any]], processor: RedactingProcessor, rounds: int
) -> float:
    """CPU microseconds per record: best round, the event's copy subtracted."""
    template = make()
    processor(None, "info", dict(template))  # warm the field name caches
    number = 2000

    def timed(fn: Callable[[], object]) -> float:
        best = float("inf")
        for _ in range(rounds):
            start = time.process_time()
            for _ in range(number):
                fn()
            best = min(best, time.process_time() - start)
        return best / number * 1e6

    return timed(lambda: processor(None, "info", dict(template))) - timed(lambda: dict(template))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    rounds = 3 if args.quick else 9
    processors = {
        "marker": RedactingProcessor(Redactor()),
        "hmac": RedactingProcessor(Redactor(hmac_key=b"bench-key-0123456789abcdef")),
    }
    cases: list[tuple[str, int, Callable[[], dict[str, Any]]]] = [
        ("audit line, no body", 0, audit_line)
    ]
    for size in (1024, 2048, 4096):
        body = urlencode(params(size))
        cases.append(
            (f"+ form body {len(body)} B", len(body), lambda b=body: {**audit_line(), "params": b})
        )
    body = json_body(2048)
    cases.append(
        (f"+ JSON body {len(body)} B", len(body), lambda b=body: {**audit_line(), "body": b})
    )
    cases.append(("error line with traceback", 0, error_line))

    print(f"{'record':32s} {'marker µs':>10s} {'hmac µs':>10s} {'µs/KB body':>11s}")
    base: dict[str, float] = {}
    for name, size, make in cases:
        row = {mode: per_record(make, p, rounds) for mode, p in processors.items()}
        if size == 0 and "traceback" not in name:
            base = row
        per_kb = (row["marker"] - base.get("marker", 0.0)) / (size / 1024) if size else 0.0
        extra = f"{per_kb:11.1f}" if size else f"{'':11s}"
        print(f"{name:32s} {row['marker']:10.1f} {row['hmac']:10.1f} {extra}")


if __name__ == "__main__":
    main()
