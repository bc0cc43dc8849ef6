"""Stripe's bracket-nested form encoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.forms import FormError, decode


def test_nested_dicts_lists_and_blank_values() -> None:
    got = decode(
        "a[b][c]=1&expand[]=x&expand[]=y&items[0][price]=p&items[1][qty]=2&e=&metadata[k]=v%20w"
    )
    assert got == {
        "a": {"b": {"c": "1"}},
        "expand": ["x", "y"],
        "items": [{"price": "p"}, {"qty": "2"}],
        "e": "",
        "metadata": {"k": "v w"},
    }


def test_indexed_and_url_encoded_brackets_are_the_same() -> None:
    assert decode("expand[0]=a&expand[1]=b") == {"expand": ["a", "b"]}
    assert decode("expand%5B0%5D=a&expand%5B1%5D=b") == {"expand": ["a", "b"]}
    assert decode(b"expand%5B%5D=a&expand%5B%5D=b") == {"expand": ["a", "b"]}


def test_deep_lists_of_dicts() -> None:
    got = decode("line_items[0][amount]=1000&line_items[0][reference]=L1&line_items[1][amount]=5")
    assert got == {"line_items": [{"amount": "1000", "reference": "L1"}, {"amount": "5"}]}


@pytest.mark.parametrize("bad", ["[x]=1", "a[b=1", "a[b]c=1", "a[0]=1&a[b]=2"])
def test_malformed_names_are_refused(bad: str) -> None:
    with pytest.raises(FormError):
        decode(bad)


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), st.text(max_size=20)))
def test_flat_round_trip(params: dict[str, str]) -> None:
    from urllib.parse import urlencode

    assert decode(urlencode(params)) == params
