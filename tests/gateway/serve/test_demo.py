"""`stripe-gateway demo` and `stripe-gateway sandbox` as real processes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import textwrap
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe

from tests.cli_helpers import GATEWAY
from tests.helpers import free_port

#: the installed script when it matches this tree's entry point, else `python -m gateway`
CLI = GATEWAY


def _start(
    *args: str, stdout: Any = subprocess.PIPE, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [*CLI, *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
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
    # beside it, the demo's own: the gateway's webhook ingress, registered in the sandbox
    ingress = re.search(r"webhook endpoint (we_\w+)", banner)
    assert ingress, banner
    listed = readonly.v1.webhook_endpoints.list().data
    assert sorted(w.id for w in listed) == sorted([hook.id, ingress[1]])
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


EPHEMERAL = ("--port", "0", "--sandbox-port", "0", "--control-port", "0")


def _snippets(banner: str) -> tuple[str, str]:
    """The banner's first curl line and its Python snippet (the heredoc), as printed."""
    lines = banner.splitlines()
    curl = next(
        line.strip() for line in lines if line.strip().startswith("curl -s ") and " -u " in line
    )
    first = next(i for i, line in enumerate(lines) if line.rstrip().endswith("- <<'PY'"))
    last = next(i for i in range(first + 1, len(lines)) if lines[i] == "PY")
    python = "\n".join([lines[first].strip(), *lines[first + 1 : last + 1]])
    return curl, python


def _shell(command: str) -> subprocess.CompletedProcess[str]:
    """``command`` in bash with failglob, which (like zsh) refuses a word with an unquoted
    ``?`` that matches no file, in a directory where ``?limit=2`` could match nothing."""
    return subprocess.run(
        ["bash", "-O", "failglob", "-c", command],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env=os.environ.copy(),
    )


def _stopped_cleanly(process: subprocess.Popen[str]) -> None:
    code, _, err = _stop(process)
    assert code == 0, err
    assert "Traceback" not in err


def test_the_printed_curl_line_and_python_snippet_run_as_printed(tmp_path: Path) -> None:
    with (tmp_path / "audit.out").open("w") as out:
        process, banner = _start("demo", *EPHEMERAL, stdout=out)
        try:
            curl, python = _snippets(banner)
            assert "'http://" in curl  # the URL is quoted: ?limit=2 is no glob
            result = _shell(curl)
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["object"] == "list"
            result = _shell(python)
            assert result.returncode == 0, result.stderr
            assert '"object": "identity.verification_session"' in result.stdout
        finally:
            _stopped_cleanly(process)
    lines = (tmp_path / "audit.out").read_text().splitlines()
    audit = [a for a in map(json.loads, lines) if a["event"] == "request"]  # (not webhooks')
    assert [(a["team"], a["status"]) for a in audit] == [("readonly", 200), ("full", 200)]
    assert audit[1]["sdk"] == "python" and audit[1]["stripe_version"] == stripe.api_version


def test_the_admin_listener_answers_with_the_printed_token_and_rate_limits_apply(
    tmp_path: Path,
) -> None:
    with (tmp_path / "audit.out").open("w") as out:
        process, banner = _start("demo", *EPHEMERAL, stdout=out)
        try:
            admin = re.search(r"admin listener \([^)]*\): (http://\S+)", banner)
            token = re.search(r"admin token: (\S+)", banner)
            gateway = re.search(r"the gateway on (http://[\d.]+:\d+)", banner)
            assert admin and token and gateway, banner
            assert requests.get(f"{admin[1]}/readyz", timeout=10).json()["status"] == "ready"
            teams = requests.get(
                f"{admin[1]}/admin/teams",
                headers={"Authorization": f"Bearer {token[1]}"},
                timeout=10,
            )
            assert teams.status_code == 200, teams.text
            assert {t["name"] for t in teams.json()["data"]} == {"readonly", "full"}
            refused = requests.get(f"{admin[1]}/admin/teams", timeout=10)
            assert refused.status_code == 401
            # the readonly team's sample limit (burst 5, 1/s) is reached in a quick loop
            statuses = []
            with requests.Session() as session:
                for _ in range(200):
                    response = session.get(
                        f"{gateway[1]}/v1/webhook_endpoints",
                        auth=("gw_demo_readonly_key", ""),
                        timeout=10,
                    )
                    statuses.append(response.status_code)
                    if response.status_code == 429:
                        assert response.json()["error"]["code"] == "rate_limit"
                        break
            assert statuses[-1] == 429 and set(statuses[:-1]) == {200}
            metrics = requests.get(f"{admin[1]}/metrics", timeout=10).text
            assert "stripe_gateway_requests_total" in metrics
        finally:
            _stopped_cleanly(process)


def _busy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "demo", *args], capture_output=True, text=True, timeout=60)


def test_a_second_demo_or_a_busy_port_names_the_port_and_the_flag_and_starts_nothing() -> None:
    process, banner = _start("demo", *EPHEMERAL)
    try:
        gateway = re.search(r"the gateway on http://[\d.]+:(\d+)", banner)
        sandbox = re.search(r"sandbox on http://[\d.]+:(\d+)", banner)
        admin = re.search(r"admin endpoints\): http://[\d.]+:(\d+)", banner)
        control = re.search(r"fault control \([^)]*\): http://[\d.]+:(\d+)", banner)
        receiver = re.search(r"demo's receiver on http://[\d.]+:(\d+)", banner)
        assert gateway and sandbox and admin and control and receiver, banner
        cases = [
            (("--port", gateway[1]), gateway[1], "the gateway", "--port"),
            (("--port", "0", "--admin-port", admin[1]), admin[1], "admin", "--admin-port"),
            (
                ("--port", "0", "--sandbox-port", sandbox[1]),
                sandbox[1],
                "sandbox",
                "--sandbox-port",
            ),
            (
                ("--port", "0", "--sandbox-port", "0", "--control-port", control[1]),
                control[1],
                "fault control",
                "--control-port",
            ),
            (
                (*EPHEMERAL, "--receiver-port", receiver[1]),
                receiver[1],
                "webhook receiver",
                "--receiver-port",
            ),
        ]
        for args, port, what, flag in cases:
            result = _busy(*args)
            assert result.returncode == 1, result
            (line,) = result.stderr.splitlines()
            assert f"port {port} " in line and what in line and f"{flag} PORT" in line, line
            assert "in use" in line
            assert result.stdout == ""
    finally:
        _stopped_cleanly(process)


def test_a_default_port_past_the_last_one_names_the_flag_not_a_traceback() -> None:
    """``--port 65534``: the receiver's default (the port + 2) is no port at all."""
    free = str(free_port())
    result = _busy("--port", "65534", "--admin-port", free, "--sandbox-port", "0")
    assert result.returncode == 1, result
    (line,) = result.stderr.splitlines()
    assert "port 65536 " in line and "not a port" in line and "--receiver-port PORT" in line
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_demo_config_runs_ones_own_config_in_front_of_the_sandbox(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "STRIPE_SECRET_KEY"}
    with (tmp_path / "audit.out").open("w") as out:
        process, banner = _start(
            "demo", "--config", "config.example.toml", *EPHEMERAL, stdout=out, env=env
        )
        try:
            assert "config: config.example.toml" in banner
            assert "gw_demo_billing_key" in banner and "analytics" in banner
            curl, python = _snippets(banner)
            result = _shell(curl)
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["object"] == "list"
            result = _shell(python)
            assert result.returncode == 0, result.stderr
            assert "'object': 'list'" in result.stdout or '"object": "list"' in result.stdout
            # the example's allow rules hold: billing may not create webhook endpoints
            gateway = re.search(r"the gateway on (http://[\d.]+:\d+)", banner)
            assert gateway, banner
            refused = requests.post(
                f"{gateway[1]}/v1/webhook_endpoints",
                auth=("gw_demo_billing_key", ""),
                data={"url": "https://example.com/h"},
                timeout=10,
            )
            assert refused.status_code == 403
        finally:
            _stopped_cleanly(process)
    audit = [json.loads(line) for line in (tmp_path / "audit.out").read_text().splitlines()]
    assert {a["team"] for a in audit} == {"billing"} and len(audit) == 3


def test_demo_config_with_its_own_admin_listener(tmp_path: Path) -> None:
    config = tmp_path / "own.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            [admin]
            port = {free_port()}

            [[teams]]
            name = "mine"
            key_sha256 = ["{hashlib.sha256(b"gw_test_mine_0000001").hexdigest()}"]
            upstream_key_env = "MY_UNSET_STRIPE_KEY"
            """
        )
    )
    process, banner = _start("demo", "--config", str(config), *EPHEMERAL)
    try:
        admin = re.search(r"admin endpoints\): (http://\S+)", banner)
        gateway = re.search(r"the gateway on (http://[\d.]+:\d+)", banner)
        assert admin and gateway, banner
        assert admin[1].endswith(f":{tomllib.loads(config.read_text())['admin']['port']}")
        assert "YOUR_TEAM_KEY" in banner and "(your key)" in banner
        assert requests.get(f"{admin[1]}/readyz", timeout=10).status_code == 200
        response = requests.get(
            f"{gateway[1]}/v1/webhook_endpoints", auth=("gw_test_mine_0000001", ""), timeout=10
        )
        assert response.status_code == 200
    finally:
        _stopped_cleanly(process)


def test_demo_config_reports_a_bad_file_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[plugins.audit]\nparams = 'yes'\n")
    result = _busy("--config", str(config), *EPHEMERAL)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("stripe-gateway: config error: plugins.audit.params")


def test_the_readmes_first_command_installs_what_the_printed_snippet_imports() -> None:
    """scripts/demo.sh (the README's first command) bootstraps the "demo" extra, which has
    the stripe SDK; the snippet runs with that venv's python (as the tests above run it)."""
    repo = Path(__file__).resolve().parents[3]
    assert "bash scripts/demo.sh" in (repo / "README.md").read_text().split("\n```", 2)[1]
    script = (repo / "scripts" / "demo.sh").read_text()
    assert "bootstrap.sh demo" in script and ".venv/bin/stripe-gateway demo" in script
    extras = tomllib.loads((repo / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(req.startswith("stripe") for req in extras["demo"])
