"""Generated CSV files: contents made on the fly, deterministically, a block of rows at a time.

A :class:`CsvSpec` (columns, row count, seed, time span) stands for a result file that other
resources produce (Sigma scheduled query runs, report runs; see
:func:`sandbox.resources.files.register_generated_file`). Its contents are never held
whole in memory. Every generated column has a fixed width or cycles through a fixed list of
values, so a file's ``size`` (and its download's ``Content-Length``) is known without
generating it.

Not a resource module (its name starts with ``_``): :mod:`.files` imports it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["CsvSpec", "csv_spec_for_size"]


class _Block:
    """A block of rows being generated: their timestamps, formatted once per offset."""

    def __init__(self, first: int, times: list[int]) -> None:
        self.first = first
        self.times = times
        self._formatted: dict[int, list[str]] = {}

    def formatted(self, offset: int) -> list[str]:
        done = self._formatted.get(offset)
        if done is None:
            done = self._formatted[offset] = [_format_time(at + offset) for at in self.times]
        return done


#: a column's values for a block of rows
_Maker = Callable[[random.Random, _Block], list[str]]


@dataclass(frozen=True)
class _Column:
    """One generated column: fixed-width values drawn per row, or a cycle of values."""

    width: int = 0
    make: _Maker | None = None
    cycle: tuple[str, ...] = ()

    def values(self, rng: random.Random, block: _Block) -> list[str]:
        if self.make is not None:
            return self.make(rng, block)
        cycle = self.cycle
        size = len(cycle)
        return [cycle[row % size] for row in range(block.first, block.first + len(block.times))]

    def total(self, rows: int) -> int:
        if self.make is not None:
            return self.width * rows
        full, rest = divmod(rows, len(self.cycle))
        return full * sum(map(len, self.cycle)) + sum(map(len, self.cycle[:rest]))


_ID_PREFIXES = {
    "automatic_payout_id": "po",
    "balance_transaction_id": "txn",
    "charge_id": "ch",
    "connected_account": "acct",
    "customer_id": "cus",
    "destination_id": "ba",
    "dispute_id": "dp",
    "invoice_id": "in",
    "payment_intent_id": "pi",
    "payout_id": "po",
    "payout_destination_id": "ba",
    "refund_id": "re",
    "source_id": "ch",
    "subscription_id": "sub",
    "transfer_id": "tr",
}
_TIME_COLUMNS = frozenset(
    {
        "available_on",
        "available_on_utc",
        "created",
        "created_utc",
        "effective_at",
        "effective_at_utc",
        "automatic_payout_effective_at",
        "automatic_payout_effective_at_utc",
        "payout_expected_arrival_date",
    }
)
_DECIMAL_COLUMNS = frozenset(
    {"gross", "net", "net_amount", "customer_facing_amount", "starting_balance"}
)
_CYCLES: dict[str, tuple[str, ...]] = {
    "currency": ("usd", "usd", "eur", "gbp"),
    "customer_facing_currency": ("usd", "usd", "eur", "gbp"),
    "category": ("charge", "refund", "fee", "payout", "adjustment", "charge"),
    "reporting_category": ("charge", "charge", "refund", "fee", "payout", "transfer"),
    "description": (
        "Payment for order",
        "Subscription update",
        "Refund for order",
        "Stripe processing fees",
        "STRIPE PAYOUT",
    ),
    "payout_description": ("STRIPE PAYOUT", "Weekly payout"),
    "status": ("succeeded", "succeeded", "succeeded", "failed", "pending"),
    "payout_status": ("paid", "paid", "in_transit"),
    "payout_type": ("bank_account", "bank_account", "card"),
    "payment_method_type": ("card", "card", "us_bank_account", "sepa_debit"),
    "reason": ("requested_by_customer", "duplicate", "fraudulent"),
}


def _ids(prefix: str) -> _Maker:
    def make(rng: random.Random, block: _Block) -> list[str]:
        bits = rng.getrandbits
        return [f"{prefix}_{bits(96):024x}" for _ in block.times]

    return make


def _amounts(low: int, high: int, decimal: bool) -> _Maker:
    """Integers in [low, high] (as cents with ``decimal``): all of the same width."""
    span = high - low + 1

    def make(rng: random.Random, block: _Block) -> list[str]:
        draw = rng.random
        drawn = [low + int(draw() * span) for _ in block.times]
        if decimal:
            return [f"{c // 100}.{c % 100:02d}" for c in drawn]
        return [str(c) for c in drawn]

    return make


def _format_time(at: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


def _times(offset: int) -> _Maker:
    return lambda rng, block: block.formatted(offset)


def _emails(rng: random.Random, block: _Block) -> list[str]:
    bits = rng.getrandbits
    return [f"user{bits(32):08x}@example.com" for _ in block.times]


@lru_cache(maxsize=256)
def _column(name: str) -> _Column:
    if name in _ID_PREFIXES or name.endswith("_id"):
        prefix = _ID_PREFIXES.get(name, "obj")
        return _Column(len(prefix) + 25, _ids(prefix))
    if name in _TIME_COLUMNS or name.endswith(("_at", "_utc")):
        later = name.startswith("available_on") or name == "payout_expected_arrival_date"
        return _Column(19, _times(2 * 86400 if later else 0))
    if name == "fee":  # 1.00 - 9.99
        return _Column(4, _amounts(100, 999, decimal=True))
    if name in _DECIMAL_COLUMNS:  # 100.00 - 999.99
        return _Column(6, _amounts(10000, 99999, decimal=True))
    if name == "amount":  # in cents
        return _Column(6, _amounts(100000, 999999, decimal=False))
    if name == "count":
        return _Column(2, _amounts(10, 99, decimal=False))
    if name == "email":
        return _Column(24, _emails)
    return _Column(cycle=_CYCLES.get(name, ("",)))


#: rows generated at a time (fixed, so the contents never depend on how they are read)
_BLOCK = 512


@dataclass(frozen=True)
class CsvSpec:
    """A generated CSV: a header row, then ``rows`` rows spread over [start, end)."""

    columns: tuple[str, ...]
    rows: int
    seed: int
    start: int
    end: int

    def header(self) -> bytes:
        return (",".join(_quote(c) for c in self.columns) + "\n").encode()

    def size(self) -> int:
        body = sum(_column(c).total(self.rows) for c in self.columns)
        return len(self.header()) + body + self.rows * len(self.columns)

    def chunks(self) -> Iterator[bytes]:
        """The file's bytes, a block of rows at a time, the same on every call."""
        yield self.header()
        columns = [_column(c) for c in self.columns]
        rng = random.Random(self.seed)
        span = max(0, self.end - self.start)
        rows, start = self.rows, self.start
        for first in range(0, rows, _BLOCK):
            times = [start + span * row // rows for row in range(first, min(rows, first + _BLOCK))]
            block = _Block(first, times)
            values = [c.values(rng, block) for c in columns]
            yield ("\n".join(map(",".join, zip(*values, strict=True))) + "\n").encode()


def _quote(value: str) -> str:
    if any(ch in value for ch in ',"\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def csv_spec_for_size(
    columns: tuple[str, ...], target: int, seed: int, start: int, end: int
) -> CsvSpec:
    """The smallest CsvSpec with these columns that is at least ``target`` bytes long."""
    probe = CsvSpec(columns, 1000, seed, start, end)
    per_row = (probe.size() - len(probe.header())) / 1000
    rows = max(1, math.ceil((target - len(probe.header())) / per_row))
    spec = CsvSpec(columns, rows, seed, start, end)
    while spec.size() < target:
        spec = CsvSpec(columns, spec.rows + 1, seed, start, end)
    while spec.rows > 1 and CsvSpec(columns, spec.rows - 1, seed, start, end).size() >= target:
        spec = CsvSpec(columns, spec.rows - 1, seed, start, end)
    return spec
