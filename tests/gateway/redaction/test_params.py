"""Form parameters decoded the way Stripe reads bracket notation, for the audit line."""

from __future__ import annotations

from urllib.parse import quote, quote_plus, unquote_plus

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.redaction.params import (
    MAX_DEPTH,
    LoggedParams,
    decode_component,
    decode_form,
    split_name,
)
from gateway.redaction.redact import Redactor


def test_names_split_into_bracket_segments() -> None:
    assert split_name("amount") == ["amount"]
    assert split_name("card[number]") == ["card", "number"]
    assert split_name("items[0][price_data][unit_amount]") == [
        "items",
        "0",
        "price_data",
        "unit_amount",
    ]
    assert split_name("expand[]") == ["expand", ""]
    for malformed in ("a[b", "[a]", "a]b[", "a[b]c]", "a[[b]]"):
        assert split_name(malformed) == [malformed]


def test_stripe_form_bodies_nest_and_index_into_lists() -> None:
    assert decode_form(
        "amount=2000&card[number]=4242&card[exp_month]=12&expand[0]=a&expand[1]=b"
        "&items[0][price]=p&items[1][price]=q&metadata[0]=zero&metadata[2]=two"
    ) == {
        "amount": "2000",
        "card": {"number": "4242", "exp_month": "12"},
        "expand": ["a", "b"],
        "items": [{"price": "p"}, {"price": "q"}],
        "metadata": {"0": "zero", "2": "two"},  # not 0..n-1: an object
    }


def test_empty_brackets_append_and_start_a_new_object_when_a_key_repeats() -> None:
    form = (
        "expand[]=a&expand[]=b&request[headers][][name]=Authorization"
        "&request[headers][][value]=Bearer+x&request[headers][][name]=X-Id"
        "&request[headers][][value]=1"
    )
    assert decode_form(form) == {
        "expand": ["a", "b"],
        "request": {
            "headers": [
                {"name": "Authorization", "value": "Bearer x"},
                {"name": "X-Id", "value": "1"},
            ]
        },
    }


def test_percent_and_plus_are_decoded_and_bad_utf8_replaced() -> None:
    assert decode_form("q=a+b%2Bc&card%5Bnumber%5D=4242&e=%FF&flag") == {
        "q": "a b+c",
        "card": {"number": "4242"},
        "e": "\ufffd",
        "flag": "",
    }


def test_what_stripe_would_refuse_is_kept_never_dropped() -> None:
    assert decode_form("a=1&a=2") == {"a": ["1", "2"]}
    assert decode_form("a=1&a[b]=2") == {"a": ["1", {"b": "2"}]}
    assert decode_form("a[b]=2&a=1") == {"a": [{"b": "2"}, "1"]}
    assert decode_form("x[y=1&[z]=2") == {"x[y": "1", "[z]": "2"}


def test_names_nested_too_deep_keep_only_a_placeholder() -> None:
    name = "a" + "[b]" * MAX_DEPTH
    assert decode_form(f"{name}=4242424242424242") == {name: "[unparsed 16 bytes]"}
    shallower = "a" + "[b]" * (MAX_DEPTH - 1)
    assert decode_form(f"{shallower}=v") != {shallower: "v"}


def test_query_then_body_into_one_result() -> None:
    params = decode_form("expand[]=customer")
    assert decode_form("amount=5&expand[]=charge", params) is params
    assert params == {"expand": ["customer", "charge"], "amount": "5"}


def test_the_redactor_sees_each_value_below_its_field_names() -> None:
    params = decode_form(
        "card[number]=4242424242424242&card[cvc]=123&invoice[number]=INV-1"
        "&request[headers][0][name]=X-Key&request[headers][0][value]=abc"
        "&request[body]=%7B%22pan%22%3A1%7D&customer_details[tax_ids][0][value]=DE1"
    )
    assert Redactor().value(params, "params") == {
        "card": {"number": "…4242", "cvc": "[redacted]"},
        "invoice": {"number": "INV-1"},
        "request": {"headers": [{"name": "X-Key", "value": "[redacted]"}], "body": "[redacted]"},
        "customer_details": {"tax_ids": [{"value": "[redacted]"}]},
    }


@given(st.text(alphabet="ab[]=&%+0123456789xyzé", max_size=80))
def test_any_text_decodes_without_error(text: str) -> None:
    assert isinstance(decode_form(text), dict)


@given(st.text(alphabet="ab%+=_2F0é€ \t\r\n\x00", max_size=40))
def test_components_decode_as_unquote_plus_does(raw: str) -> None:
    assert decode_component(raw) == unquote_plus(raw, errors="replace")


# ------------------------------------------------------------ redaction in the same pass

_NAMES = [
    "amount", "currency", "card", "number", "cvc", "exp_month", "name", "value", "email",
    "invoice", "request", "headers", "body", "metadata", "expand", "items", "0", "1", "",
    "client_secret", "address", "line1", "tax_ids", "sk_live_abcdefghijklmnop1234",
    "payment_method_data", "billing_details", "dob", "day", "destination", "Authorization",
]  # fmt: skip
_VALUES = st.one_of(
    st.sampled_from(
        [
            "usd", "2000", "4242424242424242", "4242 4242 4242 4242", "Jenny Rosen",
            "jenny@example.com", "sk_live_abcdefghijklmnop1234", "pi_123_secret_abcdefgh",
            "Bearer rk_test_abcdefghijklmnop", "https://example.com/x?a=b", "a=b&card=4242",
            '{"number": "4242424242424242"}', "--x", " lead", "whsec_abcdefghijklmnop",
            "Basic dXNlcjpwYXNz", "INV-0001", "a,b", "1:2", "",
        ]
    ),
    st.text(max_size=30),
)  # fmt: skip


@st.composite
def _forms(draw: st.DrawFn) -> str:
    pairs = []
    for _ in range(draw(st.integers(0, 12))):
        segments = draw(st.lists(st.sampled_from(_NAMES), min_size=1, max_size=4))
        name = segments[0] + "".join(f"[{s}]" for s in segments[1:])
        encode = draw(st.sampled_from([quote, quote_plus, lambda s: s]))
        pairs.append(f"{encode(name)}={quote_plus(draw(_VALUES))}")
    return "&".join(pairs)


@settings(max_examples=300, deadline=None)
@given(_forms(), st.sampled_from([None, b"k" * 32]))
def test_one_pass_redaction_is_the_walk_of_the_decoded_form(form: str, key: bytes | None) -> None:
    """Redacting a form while it is decoded (LoggedParams) writes exactly what decoding
    it and then walking the result writes."""
    redactor = Redactor(hmac_key=key)
    walked = redactor.event({"params": decode_form(form)})
    one_pass = redactor.event({"params": LoggedParams([form])})
    assert one_pass == walked


def test_logged_params_render_decoded_without_redaction_and_never_repr_values() -> None:
    params = LoggedParams(["a=1&card[number]=4242424242424242"], {"b": 2})
    assert params.to_log() == {"a": "1", "card": {"number": "4242424242424242"}, "b": 2}
    assert "4242" not in repr(params)
    from gateway.logs import json_default

    assert json_default(params) == params.to_log()
