"""The ``stripe-gateway`` command, run as a real subprocess against real sockets."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import gateway
from gateway.host import DEFAULT_PLUGINS as _DEFAULT_PLUGINS
from tests.cli_helpers import (
    REPO,
    STARTUP_TIMEOUT,
    assert_one_line_config_error,
    http_get,
    run_cli,
    serving,
    subprocess_env,
    wait_until,
)
from tests.fake_stripe import FakeStripe
from tests.helpers import (
    BILLING_KEY,
    BILLING_UPSTREAM_KEY,
    PASSTHROUGH_KEY,
    Served,
    digest,
)

BUILTINS = [name for name, _ in _DEFAULT_PLUGINS]
BUILTIN_LIST = ", ".join(BUILTINS)

DRAIN_TIMEOUT = 10.0


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(textwrap.dedent(text))
    return path


def good_config(tmp_path: Path, *, api: str = "http://127.0.0.1:9", port: int = 0) -> Path:
    audit = tmp_path / "audit.jsonl"
    return write_config(
        tmp_path,
        f"""\
        [server]
        host = "127.0.0.1"
        port = {port}
        drain_timeout = {DRAIN_TIMEOUT}

        [upstream]
        api = "{api}"
        connect_timeout = 2.0
        read_timeout = 10.0

        [plugins.audit]
        path = "{audit}"

        [[teams]]
        name = "billing"
        key_sha256 = ["{digest(BILLING_KEY)}"]
        upstream_key_env = "BILLING_STRIPE_KEY"
        allow = ["GET /v1/**"]

        [[teams]]
        name = "direct"
        key_sha256 = ["{digest(PASSTHROUGH_KEY)}"]
        """,
    )


BAD_CONFIGS: list[tuple[str, str, tuple[str, ...]]] = [
    ("invalid-toml", "[server\nport = 1\n", ("gateway.toml", "invalid TOML")),
    ("unknown-server-key", "[server]\nprot = 8080\n", ("server.prot: unknown key",)),
    (
        "unknown-team-key",
        f'[[teams]]\nname = "b"\nkey_sha256 = ["{digest(BILLING_KEY)}"]\nalow = []\n',
        ("teams[0].alow: unknown key",),
    ),
    (
        "missing-env-var",
        f'[[teams]]\nname = "b"\nkey_sha256 = ["{digest(BILLING_KEY)}"]\n'
        'upstream_key_env = "BILLING_STRIPE_KEY"\n',
        ("teams[0].upstream_key_env:", "BILLING_STRIPE_KEY", "not set"),
    ),
    ("bad-port", "[server]\nport = 70000\n", ("server.port:", "65535")),
    ("unknown-plugin", "[plugins.nosuch]\nx = 1\n", ("plugins.nosuch:", "'nosuch'")),
    ("plugin-unknown-key", "[plugins.audit]\nbogus = 1\n", ("plugins.audit.bogus: unknown key",)),
]


# --------------------------------------------------------------------------- one-shot commands


def test_version_prints_the_package_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"stripe-gateway {gateway.__version__}"


def test_module_entry_point_runs_the_same_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--version"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
        timeout=STARTUP_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"stripe-gateway {gateway.__version__}"


@pytest.mark.parametrize("stdin", ["KEY\n", "KEY", "  KEY  \n"], ids=["newline", "bare", "spaces"])
def test_hash_key_prints_sha256_hex_of_the_key_on_stdin(stdin: str) -> None:
    result = run_cli("hash-key", input=stdin.replace("KEY", BILLING_KEY))
    assert result.returncode == 0, result.stderr
    assert result.stdout == hashlib.sha256(BILLING_KEY.encode()).hexdigest() + "\n"
    assert result.stdout.strip() == digest(BILLING_KEY)


def test_hash_key_with_empty_stdin_exits_2() -> None:
    result = run_cli("hash-key", input="")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "no key" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    path = good_config(tmp_path)
    result = run_cli("check-config", str(path), env=subprocess_env(BILLING_STRIPE_KEY="sk_test_x"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: OK (2 teams; plugins: {BUILTIN_LIST})"
    assert BILLING_UPSTREAM_KEY not in result.stdout + result.stderr


def test_check_config_accepts_the_example_config() -> None:
    env = subprocess_env(STRIPE_SECRET_KEY="sk_test_example0000000000000001")
    result = run_cli("check-config", "config.example.toml", env=env)
    assert result.returncode == 0, result.stderr
    assert "OK (2 teams" in result.stdout
    assert "sk_test_example" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("text", "parts"), [(t, p) for _, t, p in BAD_CONFIGS], ids=[i for i, _, _ in BAD_CONFIGS]
)
def test_check_config_reports_a_bad_file_in_one_line_with_exit_2(
    tmp_path: Path, text: str, parts: tuple[str, ...]
) -> None:
    result = run_cli("check-config", str(write_config(tmp_path, text)))
    assert_one_line_config_error(result, *parts)
    assert result.stdout == ""


def test_check_config_reports_a_missing_file_with_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = run_cli("check-config", str(missing))
    assert_one_line_config_error(result, str(missing), "cannot read config file")


@pytest.mark.parametrize(
    ("text", "parts"), [(t, p) for _, t, p in BAD_CONFIGS], ids=[i for i, _, _ in BAD_CONFIGS]
)
def test_serve_with_a_bad_config_exits_2_with_one_line(
    tmp_path: Path, text: str, parts: tuple[str, ...]
) -> None:
    result = run_cli("serve", "--config", str(write_config(tmp_path, text)))
    assert_one_line_config_error(result, *parts)


def test_serve_with_a_bad_port_override_exits_2(tmp_path: Path) -> None:
    path = good_config(tmp_path)
    env = subprocess_env(BILLING_STRIPE_KEY=BILLING_UPSTREAM_KEY, STRIPE_GATEWAY_PORT="eighty")
    result = run_cli("serve", "--config", str(path), env=env)
    assert_one_line_config_error(result, "server.port:", "must be a whole number")


def test_serve_on_a_port_in_use_exits_1_without_traceback(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = subprocess_env(BILLING_STRIPE_KEY=BILLING_UPSTREAM_KEY)
        result = run_cli("serve", "--config", str(good_config(tmp_path, port=port)), env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    # it never started: gateway_started was logged before the listener failed to bind
    assert "gateway_started" not in result.stderr
    assert "listening on" not in result.stderr


def test_serve_logs_gateway_started_once_it_listens(tmp_path: Path) -> None:
    env = subprocess_env(BILLING_STRIPE_KEY=BILLING_UPSTREAM_KEY)
    with serving(good_config(tmp_path), env=env) as gw:
        status, _, _ = http_get(gw.host_port, "/healthz")
        assert status == 200
        gw.proc.send_signal(signal.SIGINT)
        assert gw.proc.wait(DRAIN_TIMEOUT + 2) == 0
    output = gw.output()
    lines = output.splitlines()
    listening = next(i for i, line in enumerate(lines) if " listening on http://" in line)
    started = [i for i, line in enumerate(lines) if '"gateway_started"' in line]
    assert len(started) == 1 and started[0] > listening, output
    record = json.loads(lines[started[0]])
    assert record["teams"] == ["billing", "direct"]
    assert "audit" in record["plugins"]


def test_a_plugin_failing_at_start_up_exits_1_with_one_line(tmp_path: Path) -> None:
    path = good_config(tmp_path)
    text = path.read_text().replace(
        "[plugins.audit]",
        '[plugins]\nload = ["tests.gateway.serve.test_reload:Recorder"]\n\n'
        '[plugins.recorder]\ntag = "t"\nfail_startup = true\n\n[plugins.audit]',
    )
    path.write_text(text)
    env = subprocess_env(BILLING_STRIPE_KEY=BILLING_UPSTREAM_KEY, PYTHONPATH=str(REPO))
    result = run_cli("serve", "--config", str(path), env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert (
        "stripe-gateway: plugin 'recorder' failed at start-up: RuntimeError: refusing to start"
        in result.stderr
    )


# --------------------------------------------------------------------------- a running gateway


def test_healthz_answers_200_json_without_authorization_and_sigint_stops(tmp_path: Path) -> None:
    env = subprocess_env(BILLING_STRIPE_KEY=BILLING_UPSTREAM_KEY)
    # the --port flag overrides [server] port
    with serving(good_config(tmp_path, port=1), "--port", "0", env=env) as gw:
        assert gw.host_port[1] not in (0, 1)
        status, headers, body = http_get(gw.host_port, "/healthz")
        assert status == 200
        assert headers["Content-Type"].startswith("application/json")
        assert json.loads(body) == {"status": "ok", "version": gateway.__version__}
        gw.proc.send_signal(signal.SIGINT)
        assert gw.proc.wait(DRAIN_TIMEOUT + 2) == 0
    assert "Traceback" not in gw.output()
    assert BILLING_UPSTREAM_KEY not in gw.output()


def test_sigterm_drains_in_flight_request_refuses_new_ones_and_exits_0(
    tmp_path: Path, fake_api: tuple[FakeStripe, Served]
) -> None:
    fake, upstream = fake_api
    config = good_config(tmp_path, api=upstream.url)
    env = subprocess_env(BILLING_STRIPE_KEY=BILLING_UPSTREAM_KEY)
    with serving(config, env=env) as gw:
        result: dict[str, Any] = {}

        def slow_request() -> None:
            try:
                result["response"] = http_get(
                    gw.host_port,
                    "/v1/test_faults/slow?seconds=3",
                    {"Authorization": f"Bearer {BILLING_KEY}"},
                )
            except BaseException as exc:  # reported by the main thread
                result["error"] = exc

        client = threading.Thread(target=slow_request)
        client.start()
        try:
            wait_until(lambda: fake.received, 10, "the slow request never reached the upstream")
            signalled = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)

            # the listener closes at once, while the slow request is still in flight
            refused = False
            while not refused and time.monotonic() - signalled < 2.5:
                try:
                    probe = socket.create_connection(gw.host_port, timeout=1)
                except ConnectionRefusedError:
                    refused = True
                else:
                    probe.close()
                    time.sleep(0.02)
            assert refused, "new connections were still accepted 2.5 s after SIGTERM"
            assert client.is_alive(), "the slow request finished before the refusal was seen"
            assert gw.proc.poll() is None, "the gateway exited without draining"
        finally:
            client.join(15)

        assert "error" not in result, result.get("error")
        status, headers, body = result["response"]
        assert status == 200
        assert json.loads(body)["id"] == "slow"
        assert headers["Request-Id"].startswith("req_fake")

        assert gw.proc.wait(DRAIN_TIMEOUT + 2) == 0
        assert time.monotonic() - signalled < DRAIN_TIMEOUT

    assert "Traceback" not in gw.output()
    assert BILLING_UPSTREAM_KEY not in gw.output()
    # the key swap happened on the way up
    assert fake.received[0].headers["Authorization"] == f"Bearer {BILLING_UPSTREAM_KEY}"
    # and the drained request was written to the audit log before exit
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    slow = [line for line in lines if line["path"] == "/v1/test_faults/slow"]
    assert len(slow) == 1, lines
    assert slow[0]["status"] == 200
    assert slow[0]["team"] == "billing"
    assert slow[0]["method"] == "GET"
    assert slow[0]["upstream_request_id"] == headers["Request-Id"]
    audit_text = (tmp_path / "audit.jsonl").read_text()
    assert BILLING_KEY not in audit_text
    assert BILLING_UPSTREAM_KEY not in audit_text
    assert "seconds=1.5" not in audit_text


# --------------------------------------------------------------------------- demo keys


def test_serve_refuses_the_example_config_naming_the_team_and_the_fixes() -> None:
    env = subprocess_env(STRIPE_SECRET_KEY="sk_test_example0000000000000001")
    result = run_cli("serve", "--config", "config.example.toml", "--port", "0", env=env)
    assert_one_line_config_error(
        result,
        "teams[0].key_sha256[0]",
        "'billing'",
        "publicly known demo key",
        "stripe-gateway new-key --team billing",
        "--allow-demo-keys",
    )
    assert "listening" not in result.stderr
    # check-config accepts the file, and says serve will not
    result = run_cli("check-config", "config.example.toml", env=env)
    assert result.returncode == 0
    assert "OK (2 teams" in result.stdout
    assert "warning: serve refuses this file" in result.stderr
    assert "sk_test_example" not in result.stdout + result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_allow_demo_keys_serves_the_example_config_with_its_demo_key(
    fake_api: tuple[FakeStripe, Served], workers: str
) -> None:
    env = subprocess_env(
        STRIPE_SECRET_KEY=BILLING_UPSTREAM_KEY, STRIPE_GATEWAY_API_UPSTREAM=fake_api[1].url
    )
    with serving(
        REPO / "config.example.toml",
        "--allow-demo-keys",
        "--port",
        "0",
        "--workers",
        workers,
        env=env,
    ) as gw:
        for i in range(4):  # fresh connections: each worker is reached in time
            status, _, _ = http_get(
                gw.host_port,
                f"/v1/tax/calculations/taxcalc_{i}",
                {"Authorization": "Bearer gw_demo_billing_key"},
            )
            assert status == 200
        assert "gw_demo_billing_key" not in gw.output()


def test_new_key_prints_a_key_once_and_the_line_that_lets_it_in(
    tmp_path: Path, fake_api: tuple[FakeStripe, Served]
) -> None:
    result = run_cli("new-key", "--team", "billing")
    assert result.returncode == 0, result.stderr
    key, line = result.stdout.splitlines()
    assert key.startswith("gw_live_") and line == f'key_sha256 = ["{digest(key)}"]'
    assert "shown only now" in result.stderr and 'name = "billing"' in result.stderr
    assert key not in result.stderr
    again = run_cli("new-key", "--team", "billing").stdout.splitlines()[0]
    assert again != key

    config = write_config(
        tmp_path,
        f"""\
        [server]
        port = 0

        [upstream]
        api = "{fake_api[1].url}"

        [plugins.audit]
        path = "{tmp_path / "audit.jsonl"}"

        [[teams]]
        name = "billing"
        {line}
        upstream_key_env = "BILLING_STRIPE_KEY"
        """,
    )
    env = subprocess_env(BILLING_STRIPE_KEY=BILLING_UPSTREAM_KEY)
    with serving(config, env=env) as gw:
        path = "/v1/customers/cus_1"
        assert http_get(gw.host_port, path, {"Authorization": f"Bearer {key}"})[0] == 200
        assert http_get(gw.host_port, path, {"Authorization": f"Bearer {again}"})[0] == 401
        wait_until(lambda: (tmp_path / "audit.jsonl").exists(), 10, "no audit line")
    assert key not in gw.output() and key not in (tmp_path / "audit.jsonl").read_text()


def test_new_key_needs_a_team_name() -> None:
    result = run_cli("new-key")
    assert result.returncode == 2 and "--team" in result.stderr and result.stdout == ""
    result = run_cli("new-key", "--team", "a b\x1b[2J")
    assert result.returncode == 2 and "letters, digits" in result.stderr and result.stdout == ""
