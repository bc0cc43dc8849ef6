"""`stripe-gateway demo` and `stripe-gateway sandbox` as real processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
import requests
import stripe

from tests.cli_helpers import GATEWAY

#: the installed script when it matches this tree's entry point, else `python -m gateway`
CLI = GATEWAY


def _start(*args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [*CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stderr is not None
    banner = ""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        banner += line
        if "Ctrl-C stops" in line:
            return process, banner
    process.kill()
    process.communicate()
    pytest.fail(f"no banner from {args}: {banner}")


def _stop(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=15)
    return process.returncode, out, err


@pytest.fixture
def demo() -> Iterator[tuple[subprocess.Popen[str], str]]:
    process, banner = _start("demo", "--port", "0", "--sandbox-port", "0", "--control-port", "0")
    yield process, banner
    if process.poll() is None:
        process.kill()
        process.communicate()


def test_demo_serves_the_sdk_through_the_gateway_and_stops_cleanly(
    demo: tuple[subprocess.Popen[str], str],
) -> None:
    process, banner = demo
    url = re.search(r"the gateway on (http://[\d.]+:\d+)", banner)
    assert url, banner
    gateway = url[1]
    assert "gw_demo_readonly_key" in banner and "gw_demo_full_key" in banner
    assert "curl" in banner and "import stripe" in banner

    full = stripe.StripeClient(
        "gw_demo_full_key",
        base_addresses={"api": gateway, "files": gateway},
        max_network_retries=0,
    )
    hook = full.v1.webhook_endpoints.create(
        {"url": "https://example.com/hook", "enabled_events": ["*"]}
    )
    assert hook.id.startswith("we_")
    readonly = stripe.StripeClient(
        "gw_demo_readonly_key", base_addresses={"api": gateway}, max_network_retries=0
    )
    assert [w.id for w in readonly.v1.webhook_endpoints.list().data] == [hook.id]
    with pytest.raises(stripe.PermissionError):
        readonly.v1.webhook_endpoints.create({"url": "https://x.example", "enabled_events": ["*"]})
    assert requests.get(f"{gateway}/healthz", timeout=5).status_code == 200

    code, out, err = _stop(process)
    assert code == 0, err
    assert "stopped" in err and "Traceback" not in err
    audit = [line for line in out.splitlines() if '"event":"request"' in line]
    assert len(audit) == 3  # create, list, refused create (healthz is not audited)
    assert all("gw_demo" not in line and "sk_test" not in line for line in audit)


def test_sandbox_alone_with_fault_flags() -> None:
    process, banner = _start("sandbox", "--port", "0", "--control-port", "0", "--error-rate", "1")
    try:
        match = re.search(
            r"API and files on (http://[\d.]+:\d+), fault control on (http://\S+)", banner
        )
        assert match, banner
        api, control = match[1], match[2]
        response = requests.get(
            f"{api}/v1/webhook_endpoints", auth=("sk_test_x1234567890", ""), timeout=5
        )
        assert response.status_code == 500
        assert response.headers["Stripe-Should-Retry"] == "true"
        requests.delete(f"{control}/faults", timeout=5)
        response = requests.get(
            f"{api}/v1/webhook_endpoints", auth=("sk_test_x1234567890", ""), timeout=5
        )
        assert response.status_code == 200
    finally:
        code, _, err = _stop(process)
    assert code == 0, err


def test_bad_fault_flag_is_a_usage_error() -> None:
    result = subprocess.run(
        [*CLI, "sandbox", "--error-rate", "3"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "between 0 and 1" in result.stderr and "Traceback" not in result.stderr


def test_two_sandboxes_on_ephemeral_ports_get_their_own_fault_control() -> None:
    """Without --control-port, the control port follows the API port (ephemeral with 0)."""
    first, first_banner = _start("sandbox", "--port", "0")
    try:
        second, second_banner = _start("sandbox", "--port", "0")
        try:
            controls = []
            for banner in (first_banner, second_banner):
                match = re.search(r"fault control on (http://\S+)", banner)
                assert match, banner
                controls.append(match[1])
                assert requests.get(f"{match[1]}/faults", timeout=5).status_code == 200
            assert controls[0] != controls[1]
            assert not controls[0].endswith(":12112")
        finally:
            code, _, err = _stop(second)
        assert code == 0, err
    finally:
        code, _, err = _stop(first)
    assert code == 0, err
