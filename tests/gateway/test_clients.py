"""What a client says about itself (gateway.clients): the SDK and API version it names, in
shapes no hostile header can smuggle anything through."""

from __future__ import annotations

import json
import re

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.clients import INVALID, api_version, client_fields, sdk

SECRET = "gw_live_SECRETsecret0123456789abcdef"
_SHAPE = re.compile(r"[A-Za-z0-9.+\-]*")


def _xua(**fields: object) -> str:
    return json.dumps(fields)


def test_the_official_sdks_are_named_by_language_and_version() -> None:
    assert sdk(_xua(lang="python", bindings_version="12.0.0"), None) == ("python", "12.0.0")
    assert sdk(_xua(lang="node", bindings_version="17.7.0"), None) == ("node", "17.7.0")
    assert sdk(_xua(lang="go", bindings_version="v82.1.0"), None) == ("go", "v82.1.0")
    assert sdk(_xua(lang=".net", bindings_version="47.4.0"), None) == (".net", "47.4.0")
    # without X-Stripe-Client-User-Agent, the SDK's User-Agent
    assert sdk(None, "Stripe/v1 RubyBindings/13.5.0") == ("ruby", "13.5.0")
    assert sdk(None, "Stripe/v1 JavaBindings/28.2.0") == ("java", "28.2.0")
    assert sdk(None, "Stripe/v1 PythonBindings/12.0.0b1") == ("python", "12.0.0b1")


def test_no_sdk_an_unknown_one_and_a_hostile_one() -> None:
    assert sdk(None, None) == (None, None)
    assert sdk(None, "curl/8.5.0") == (None, None)
    assert sdk("not json", "curl/8.5.0") == ("other", None)
    assert sdk(_xua(lang="cobol", bindings_version="1.0"), None) == ("other", "1.0")
    assert sdk(_xua(lang=SECRET, bindings_version=SECRET), None) == ("other", None)
    assert sdk(_xua(lang="python", bindings_version=f"1.0-{SECRET}"), None) == ("python", None)
    assert sdk(None, f"Stripe/v1 PythonBindings/{SECRET}") == ("python", None)
    assert sdk(_xua(lang=["python"]), None) == ("other", None)


def test_api_versions_are_kept_only_in_their_shape() -> None:
    assert api_version(None) is None
    assert api_version("2024-06-20") == "2024-06-20"
    assert api_version("2025-03-31.basil") == "2025-03-31.basil"
    assert api_version(SECRET) == INVALID
    assert api_version("2024-06-20\n{") == INVALID
    assert api_version("2024-06-20." + "a" * 200) == INVALID


_HEADER = st.one_of(
    st.none(),
    st.text(max_size=300),
    st.builds(lambda lang, v: _xua(lang=lang, bindings_version=v), st.text(), st.text()),
    st.builds(lambda a, b: f"Stripe/v1 {a}Bindings/{b}", st.text(max_size=20), st.text()),
    st.sampled_from([SECRET, f'{{"lang": "{SECRET}"}}', f"Stripe/v1 {SECRET}Bindings/1"]),
)


@settings(max_examples=500)
@given(version=_HEADER, xua=_HEADER, ua=_HEADER, padding=st.text(max_size=5000))
def test_any_headers_give_short_shaped_values_and_never_their_content(
    version: str | None, xua: str | None, ua: str | None, padding: str
) -> None:
    headers = {
        name: value + padding if value is not None and padding.startswith("x") else value
        for name, value in (
            ("Stripe-Version", version),
            ("X-Stripe-Client-User-Agent", xua),
            ("User-Agent", ua),
        )
    }
    fields = client_fields({k: v for k, v in headers.items() if v is not None})
    assert list(fields) == ["stripe_version", "sdk", "sdk_version"]
    for value in fields.values():
        assert value is None or (len(value) <= 30 and _SHAPE.fullmatch(value.strip("[]")))
        assert value is None or "SECRET" not in value
    line = orjson.dumps(fields)
    assert b"\n" not in line and orjson.loads(line) == fields
