"""``stripe-gateway serve --workers N`` (gateway/serve/workers.py), run as real processes."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cli_helpers import assert_one_line_config_error, run_cli, wait_until
from tests.fake_stripe import FakeStripe
from tests.helpers import BILLING_KEY, BILLING_UPSTREAM_KEY, Served
from tests.serving import (
    GatewayConfigFile,
    events,
    gateway_env,
    get,
    serve_gateway,
    wait_for_events,
)

CUSTOMER = "/v1/customers/cus_Workers000001"


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _served_by(config: GatewayConfigFile, at_least: int) -> dict[int, set[int]]:
    """worker index -> pids, from the audit lines."""
    out: dict[int, set[int]] = {}
    for line in config.audit_lines(at_least):
        out.setdefault(line["worker"], set()).add(line["pid"])
    return out


def _spread(gw: Any, n: int, tag: str) -> None:
    """``n`` requests, each on a fresh connection; all must succeed."""
    for i in range(n):
        status, _, body = get(gw, f"{CUSTOMER}?{tag}={i}", BILLING_KEY)
        assert status == 200, body


def test_two_workers_share_the_port_and_both_serve(
    tmp_path: Path, fake_api: tuple[FakeStripe, Served]
) -> None:
    config = GatewayConfigFile(tmp_path, api=fake_api[1].url)
    config.write(workers=2)  # from the config file: no flag needed
    with serve_gateway(config.path) as gw:
        assert "(2 workers)" in "".join(gw.stderr)
        _spread(gw, 40, "n")
        served = _served_by(config, 40)
        assert sorted(served) == [0, 1]  # the kernel spread the connections over both
        pids = {pid for pids in served.values() for pid in pids}
        assert len(pids) == 2
        assert {_parent(pid) for pid in pids} == {gw.proc.pid}
        started = events(gw, "gateway_started")
        assert sorted(s["worker"] for s in started) == [0, 1]
        assert {s["pid"] for s in started} == pids
        (supervisor,) = events(gw, "supervisor_started")
        assert supervisor["workers"] == 2
        metrics_dir = supervisor["metrics_dir"]
        assert Path(metrics_dir).is_dir()
        for index, (pid,) in served.items():
            env = _environ(pid)
            assert env["STRIPE_GATEWAY_WORKER"] == str(index)
            assert env["STRIPE_GATEWAY_REUSE_PORT"] == "1"
            assert env["PROMETHEUS_MULTIPROC_DIR"] == metrics_dir
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(10) == 0
    assert not Path(metrics_dir).exists()  # removed at exit
    assert events(gw, "supervisor_stopped")[0]["exit_code"] == 0
    assert "Traceback" not in gw.output()
    assert BILLING_UPSTREAM_KEY not in gw.output()


def test_a_killed_worker_is_restarted_and_requests_keep_succeeding(
    tmp_path: Path, fake_api: tuple[FakeStripe, Served]
) -> None:
    config = GatewayConfigFile(tmp_path, api=fake_api[1].url)
    config.write()
    with serve_gateway(config.path, "--workers", "2") as gw:
        _spread(gw, 20, "a")
        # every line written before the kill (each is written just after its answer): a
        # line lost with the victim would leave the counts below one short
        config.audit_lines(20)
        victim = next(s for s in events(gw, "gateway_started") if s["worker"] == 1)["pid"]
        os.kill(victim, signal.SIGKILL)
        (exited,) = wait_for_events(gw, "worker_exited", 1)
        assert (exited["worker"], exited["worker_pid"], exited["signal"]) == (1, victim, "SIGKILL")
        assert exited["restart_in_s"] == pytest.approx(0.2)
        assert exited["level"] == "warning"
        # the other worker serves meanwhile
        _spread(gw, 10, "b")
        (restarted,) = wait_for_events(gw, "worker_restarted", 1)
        assert restarted["worker"] == 1 and restarted["previous_pid"] == victim
        new_pid = restarted["worker_pid"]
        assert new_pid != victim and _parent(new_pid) == gw.proc.pid
        wait_for_events(gw, "gateway_started", 3)
        # the new worker takes its share of fresh connections
        sent = 30
        for _ in range(10):
            _spread(gw, 20, f"c{sent}")
            sent += 20
            if new_pid in _served_by(config, sent).get(1, set()):
                break
        assert new_pid in _served_by(config, sent)[1]
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(10) == 0
    assert "Traceback" not in gw.output()


def test_sigterm_drains_slow_requests_on_every_worker_and_exits_0(
    tmp_path: Path, fake_api: tuple[FakeStripe, Served]
) -> None:
    fake, upstream = fake_api
    config = GatewayConfigFile(tmp_path, api=upstream.url, drain_timeout=15.0)
    config.write()
    mine = tmp_path / "metrics"
    mine.mkdir()
    env = gateway_env(PROMETHEUS_MULTIPROC_DIR=str(mine))
    with serve_gateway(config.path, "--workers", "2", env=env) as gw:
        results: list[int] = []
        slow = 16

        def request(i: int) -> None:
            results.append(get(gw, f"{CUSTOMER}?delay=3&s={i}", BILLING_KEY)[0])

        clients = [threading.Thread(target=request, args=(i,)) for i in range(slow)]
        for client in clients:
            client.start()
        wait_until(lambda: len(fake.received) >= slow, 10, "the slow requests never arrived")
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        refused = False
        while not refused and time.monotonic() - signalled < 2.5:
            try:
                socket.create_connection(gw.host_port, timeout=1).close()
                time.sleep(0.02)
            except ConnectionRefusedError:
                refused = True
        assert refused, "new connections were still accepted after SIGTERM"
        for client in clients:
            client.join(10)
        assert results == [200] * slow
        assert gw.proc.wait(20) == 0
    lines = config.audit_lines(slow)
    assert len(lines) == slow
    assert {line["worker"] for line in lines} == {0, 1}  # both drained theirs
    assert mine.is_dir()  # the user's own directory is passed on and kept
    assert events(gw, "supervisor_started")[0]["metrics_dir"] == str(mine)
    assert "Traceback" not in gw.output()


def test_bad_config_with_workers_exits_2_and_starts_no_worker(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.toml"
    bad.write_text("[server]\nworkers = 2\nprot = 1\n")
    result = run_cli("serve", "--config", str(bad), "--workers", "2")
    assert_one_line_config_error(result, "server.prot: unknown key")


@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "server.workers: must be a whole number between 1 and 256"), ("true", "number")],
)
def test_workers_setting_is_validated(tmp_path: Path, value: str, message: str) -> None:
    bad = tmp_path / "gateway.toml"
    bad.write_text(f"[server]\nworkers = {value}\n")
    assert_one_line_config_error(run_cli("check-config", str(bad)), message)


def test_workers_flag_must_be_positive(tmp_path: Path) -> None:
    result = run_cli("serve", "--config", str(tmp_path / "x.toml"), "--workers", "0")
    assert result.returncode == 2
    assert "--workers: must be >= 1" in result.stderr


def test_the_flag_wins_over_the_config_and_one_worker_is_the_single_process_gateway(
    tmp_path: Path, fake_api: tuple[FakeStripe, Served]
) -> None:
    config = GatewayConfigFile(tmp_path, api=fake_api[1].url)
    config.write(workers=3)
    with serve_gateway(config.path, "--workers", "1") as gw:
        _spread(gw, 3, "n")
        assert events(gw, "supervisor_started") == []
        assert "workers)" not in "".join(gw.stderr)
        assert all("worker" not in line for line in config.audit_lines(3))
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(10) == 0


def test_a_busy_port_stops_the_supervisor_before_any_worker(
    tmp_path: Path, fake_api: tuple[FakeStripe, Served]
) -> None:
    config = GatewayConfigFile(tmp_path, api=fake_api[1].url)
    config.write()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            "serve",
            "--config",
            str(config.path),
            "--workers",
            "2",
            "--port",
            str(port),
            env=gateway_env(),
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "gateway_started" not in result.stderr
    assert "Traceback" not in result.stderr


def test_an_admin_purge_reaches_every_workers_memory_cache(
    tmp_path: Path, fake_api: tuple[FakeStripe, Served]
) -> None:
    """The memory cache is per worker; a purge sent to whichever worker the kernel picks
    reaches the others through their private admin sockets."""
    import requests

    from tests.helpers import digest, free_port

    token = "adm_test_token_workers000000001"
    admin_port = free_port()
    admin = f'[admin]\nport = {admin_port}\ntoken_sha256 = "{digest(token)}"\n'
    config = GatewayConfigFile(tmp_path, api=fake_api[1].url)
    config.write(extra=admin)
    object_id = CUSTOMER.rsplit("/", 1)[1]
    with serve_gateway(config.path, "--workers", "2") as gw:
        # fresh connections until each worker has cached the customer
        sent = 0
        for _ in range(100):
            assert get(gw, CUSTOMER, BILLING_KEY)[0] == 200
            sent += 1
            lines = config.audit_lines(at_least=sent)
            cached = {line["worker"] for line in lines if line["cache"]}
            if cached == {0, 1}:
                break
        assert cached == {0, 1}
        before = len(config.audit_lines(at_least=sent))  # every line of those requests
        assert before == sent
        answer = requests.post(
            f"http://127.0.0.1:{admin_port}/admin/cache/purge",
            data={"object_id": object_id},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["purged"], body["workers"]) == (2, 2)
        # after the purge, each worker's first answer comes from Stripe again
        first: dict[int, str] = {}
        for _ in range(100):
            assert get(gw, CUSTOMER, BILLING_KEY)[0] == 200
            sent += 1
            for line in config.audit_lines(sent)[before:]:
                first.setdefault(line["worker"], line["cache"])
            if len(first) == 2:
                break
        assert first == {0: "MISS", 1: "MISS"}
        run_dir = Path(events(gw, "supervisor_started")[0]["run_dir"])
        assert len(list(run_dir.glob("admin-*.sock"))) == 2
        # a killed worker's socket goes with it; its successor is reached
        victim = int(next(iter(run_dir.glob("admin-*.sock"))).stem.split("-")[1])
        os.kill(victim, signal.SIGKILL)
        wait_for_events(gw, "worker_restarted", 1)
        deadline = time.monotonic() + 10
        while len(list(run_dir.glob("admin-*.sock"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not (run_dir / f"admin-{victim}.sock").exists()
        again = requests.post(
            f"http://127.0.0.1:{admin_port}/admin/cache/purge",
            data={"object_id": object_id},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        ).json()
        assert again["workers"] == 2
        # a worker that cannot be reached makes the purge a failure, not a success
        (run_dir / "admin-999999.sock").write_text("")
        incomplete = requests.post(
            f"http://127.0.0.1:{admin_port}/admin/cache/purge",
            data={"object_id": object_id},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert incomplete.status_code == 502
        error = incomplete.json()["error"]
        assert error["code"] == "purge_incomplete" and "admin-999999.sock" in error["message"]
        (run_dir / "admin-999999.sock").unlink()
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(10) == 0
    assert not run_dir.exists()
