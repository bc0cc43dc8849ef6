"""Helpers for tests that run the ``stripe-gateway`` command as a real subprocess: the
command itself, its environment, a one-shot run, a served gateway whose output is collected
by reader threads, and plain HTTP requests on fresh connections."""

from __future__ import annotations

import http.client
import os
import queue
import re
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "GATEWAY",
    "REPO",
    "STARTUP_TIMEOUT",
    "GatewayProcess",
    "assert_one_line_config_error",
    "http_get",
    "run_cli",
    "serving",
    "subprocess_env",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[1]


def _gateway_command() -> list[str]:
    """The installed ``stripe-gateway`` script when it was generated for this tree's entry
    point (``[project.scripts]``); ``python -m gateway`` otherwise (no script, or one left
    from before the entry point moved, until the venv is reinstalled)."""
    script = Path(sys.executable).parent / "stripe-gateway"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    module = pyproject["project"]["scripts"]["stripe-gateway"].split(":")[0]
    if script.exists() and f"from {module} import" in script.read_text():
        return [str(script)]
    return [sys.executable, "-m", "gateway"]


GATEWAY = _gateway_command()

#: how long a subprocess may take to start and answer (imports included)
STARTUP_TIMEOUT = 20.0


def subprocess_env(**extra: str) -> dict[str, str]:
    """The test process environment without gateway overrides, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_GATEWAY_")}
    env.pop("STRIPE_SECRET_KEY", None)
    env.pop("BILLING_STRIPE_KEY", None)
    env.update(extra)
    return env


def run_cli(
    *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GATEWAY, *args],
        input=input,
        capture_output=True,
        text=True,
        env=subprocess_env() if env is None else env,
        cwd=REPO,
        timeout=STARTUP_TIMEOUT,
        check=False,
    )


def assert_one_line_config_error(result: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("stripe-gateway: config error: ")
    for part in parts:
        assert part in lines[0]


@dataclass
class GatewayProcess:
    """``stripe-gateway serve`` in a subprocess, its output collected by reader threads."""

    proc: subprocess.Popen[str]
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    _stderr_lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    _threads: list[threading.Thread] = field(default_factory=list)
    url: str = ""

    def start_readers(self) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, sink, q in (
            (self.proc.stdout, self.stdout, None),
            (self.proc.stderr, self.stderr, self._stderr_lines),
        ):
            thread = threading.Thread(target=self._pump, args=(stream, sink, q), daemon=True)
            thread.start()
            self._threads.append(thread)

    @staticmethod
    def _pump(stream: IO[str], sink: list[str], q: queue.Queue[str | None] | None) -> None:
        for line in stream:
            sink.append(line)
            if q is not None:
                q.put(line)
        if q is not None:
            q.put(None)

    def wait_listening(self) -> str:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"gateway did not start listening: {self.stderr}"
            try:
                line = self._stderr_lines.get(timeout=remaining)
            except queue.Empty:
                continue
            assert line is not None, f"gateway exited before listening: {self.stderr}"
            m = re.search(r"listening on (https?://[\d.]+:\d+)", line)
            if m:
                self.url = m[1]
                return self.url

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.partition("://")[2].rsplit(":", 1)
        return host, int(port)

    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    def finish(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for thread in self._threads:
            thread.join(10)


@contextmanager
def serving(config: Path, *args: str, env: dict[str, str]) -> Iterator[GatewayProcess]:
    with subprocess.Popen(
        [*GATEWAY, "serve", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    ) as proc:
        gw = GatewayProcess(proc)
        gw.start_readers()
        try:
            gw.wait_listening()
            yield gw
        finally:
            gw.finish()


def http_get(
    host_port: tuple[str, int], path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*host_port, timeout=15)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def wait_until(predicate: Any, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, message
        time.sleep(0.01)
