"""The public surface a plugin author imports from: ``gateway`` itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

import gateway


@pytest.mark.parametrize("name", gateway.__all__)
def test_every_public_name_is_importable_and_documented(name: str) -> None:
    exec(f"from gateway import {name}", {})  # the way a plugin imports it
    assert getattr(gateway, name) is not None
    assert name in dir(gateway)
    assert f"``{name}``" in (gateway.__doc__ or ""), f"{name} is not in gateway's docstring"


def test_every_documented_name_is_public() -> None:
    import re

    documented = set(re.findall(r"^\* ``(\w+)``", gateway.__doc__ or "", re.M))
    assert documented == set(gateway.__all__)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        gateway.no_such_name  # noqa: B018


def test_importing_gateway_loads_no_submodule() -> None:
    # `python -m gateway` and the CLI start cheap; the public names load on first use
    code = "import sys, gateway; print(sorted(m for m in sys.modules if m.startswith('gateway.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plugins_import_neither_the_app_factory_nor_the_admin_app() -> None:
    names = ("audit", "auth", "cache", "idempotency", "metrics", "rate_limit", "redaction")
    imports = "; ".join(f"import plugins.{name}" for name in names)
    code = f"import sys; {imports}; print('gateway.app' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
