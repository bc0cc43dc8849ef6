"""``serve --workers N``: a supervisor process and N worker processes sharing one port.

**Process model.** Each worker is a fresh interpreter running the single-process gateway,
``python -m gateway serve --config FILE --workers 1 --host H --port P`` (a subprocess,
fork + exec), with its own event loop (uvloop when installed and ``[server] uvloop`` is on).
A fresh interpreter inherits no event loop, thread, lock or socket from the supervisor (the
hazards of a bare ``fork``), needs nothing pickled (``multiprocessing``'s "spawn" would
re-import this module and pickle a config holding secrets), and is the very code path of
``--workers 1``, so a worker behaves exactly like a one-process gateway. Standard output
and error are inherited: audit lines and the JSON log go straight to the same streams.

The supervisor validates the config once before starting anything (a bad config: exit 2,
no workers), reserves the address (a bound, never listening ``SO_REUSEPORT`` socket: it
resolves port 0 to one port for all workers, reports a busy address with exit 1 before any
worker starts, and keeps the port while workers restart), and tells each worker, through
its environment:

* ``STRIPE_GATEWAY_WORKER=<index>``: the worker's index, named on its log and audit lines;
* ``STRIPE_GATEWAY_REUSE_PORT=1``: listen with ``SO_REUSEPORT`` (the one switch: every
  listener a worker opens should pass it as ``serve(..., reuse_port=True)``);
* ``STRIPE_GATEWAY_READY_FD=<fd>``: a pipe to write ``ready`` to once listening;
* ``STRIPE_GATEWAY_SUPERVISOR_PID``: a worker whose supervisor dies gets SIGTERM
  (``PR_SET_PDEATHSIG``) and drains;
* ``STRIPE_GATEWAY_RUN_DIR``: a private directory (mode 0700, removed at exit) where each
  worker's admin listener also listens on a Unix socket, so that ``POST
  /admin/cache/purge`` on any worker reaches every worker's memory;
* ``PROMETHEUS_MULTIPROC_DIR``: a fresh temporary directory, removed at exit, unless the
  user set one (prometheus-client's multiprocess mode; nothing here calls prometheus).

**Running.** A worker that exits is restarted after a delay that doubles with each crash in
a row (0.2 s up to 30 s; back to 0.2 s after a worker ran 30 s), logged as
``worker_exited`` and ``worker_restarted``. A worker that exits before the gateway was ever
up stops the whole start (exit code 1, or the worker's own). SIGTERM/SIGINT are forwarded
to every worker, which drains like a single process; the supervisor exits 0 when every
worker did (after ``drain_timeout`` + 5 s it kills the rest and exits 1). SIGHUP: the
supervisor validates the config file first (``config_reload_failed`` and nothing more when
it is bad), then forwards SIGHUP to every worker, which reloads itself
(:mod:`gateway.serve.reload`); a worker still starting gets it once it is listening. SIGUSR1
is forwarded to every worker the same way: each has its plugins reopen their log files
(``gateway_reopen_logs``: the audit file, after logrotate renamed it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway import __version__
from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.host import PluginHost
from gateway.logs import WORKER_ENV, make_error_logger

__all__ = [
    "METRICS_DIR_ENV",
    "READY_FD_ENV",
    "REUSE_PORT_ENV",
    "RUN_DIR_ENV",
    "SUPERVISOR_ENV",
    "Supervisor",
    "WorkerRole",
    "listen_url",
    "worker_role",
]

REUSE_PORT_ENV = "STRIPE_GATEWAY_REUSE_PORT"
READY_FD_ENV = "STRIPE_GATEWAY_READY_FD"
SUPERVISOR_ENV = "STRIPE_GATEWAY_SUPERVISOR_PID"
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: a private directory (0700) of the supervisor's, where each worker's admin listener
#: also listens on a Unix socket, so a purge reaches every worker's memory
RUN_DIR_ENV = "STRIPE_GATEWAY_RUN_DIR"

#: first restart delay after a crash, doubled for each crash in a row, up to the maximum
RESTART_DELAY = 0.2
RESTART_DELAY_MAX = 30.0
#: a worker that ran this long was not crash-looping: its restart delay starts over
STABLE_AFTER = 30.0
#: how long after the drain timeout the supervisor waits for workers before killing them
STOP_GRACE = 5.0

_PR_SET_PDEATHSIG = 1


def listen_url(host: str, port: int, *, tls: bool = False) -> str:
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


# --------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class WorkerRole:
    """What the supervisor told this process (a worker) through its environment."""

    index: int
    reuse_port: bool
    ready_fd: int | None
    supervisor: int | None

    def tie_to_supervisor(self) -> bool:
        """Get SIGTERM when the supervisor dies (Linux); False if it already has."""
        if self.supervisor is None:
            return True
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        return os.getppid() == self.supervisor

    def report_ready(self) -> None:
        """Tell the supervisor this worker is listening."""
        if self.ready_fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self.ready_fd, b"ready\n")
        with contextlib.suppress(OSError):
            os.close(self.ready_fd)


def worker_role(environ: Mapping[str, str] = os.environ) -> WorkerRole | None:
    """This process's role when a supervisor started it, else ``None``."""
    index = environ.get(WORKER_ENV)
    if index is None or not index.isdigit():
        return None
    fd = environ.get(READY_FD_ENV, "")
    pid = environ.get(SUPERVISOR_ENV, "")
    return WorkerRole(
        index=int(index),
        reuse_port=environ.get(REUSE_PORT_ENV) == "1",
        ready_fd=int(fd) if fd.isdigit() else None,
        supervisor=int(pid) if pid.isdigit() else None,
    )


# --------------------------------------------------------------------------- supervisor side


def reserve_address(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to ``host:port`` with ``SO_REUSEPORT``: the workers'
    listeners join it; raises ``OSError`` when the address cannot be bound."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    started: float = 0.0
    restarts: int = 0
    crashes_in_a_row: int = 0
    reload_pending: bool = False
    reopen_pending: bool = False
    clean: bool = False


class Supervisor:
    """Starts ``count`` workers for an already validated config and keeps them running."""

    def __init__(
        self,
        *,
        config_path: str,
        config: GatewayConfig,
        count: int,
        load: Callable[[], GatewayConfig],
        log_processors: tuple[Any, ...] = (),
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self.config = config
        self.count = count
        self._config_path = config_path
        self._load = load
        self._environ = dict(environ)
        self.log = make_error_logger(extra_processors=log_processors).bind(
            role="supervisor", pid=os.getpid()
        )
        self._workers = [_Worker(i) for i in range(count)]
        self._stopping: int | None = None  # the signal that stops us
        self._stop = asyncio.Event()
        self._up = asyncio.Event()
        self._failed: int | None = None  # exit code of a worker that died at start-up
        self._host = config.server.host
        self._port = config.server.port
        self._metrics_dir: str | None = None
        self._run_dir: str | None = None

    # ----------------------------------------------------------------- running

    def run(self) -> int:
        """Reserve the address, start the workers, supervise until stopped; exit code."""
        try:
            reserved = reserve_address(self._host, self._port)
        except OSError as exc:
            print(
                f"stripe-gateway: cannot listen on {self._host}:{self._port}: "
                f"{exc.strerror or exc}",
                file=sys.stderr,
            )
            return 1
        self._port = reserved.getsockname()[1]
        if METRICS_DIR_ENV not in self._environ:
            self._metrics_dir = tempfile.mkdtemp(prefix="stripe-gateway-metrics-")
        self._run_dir = tempfile.mkdtemp(prefix="stripe-gateway-run-")  # mode 0700
        try:
            return asyncio.run(self._run())
        finally:
            reserved.close()
            if self._metrics_dir is not None:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)
            shutil.rmtree(self._run_dir, ignore_errors=True)

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        loop.add_signal_handler(signal.SIGUSR1, self._on_reopen)
        self.log.info(
            "supervisor_started",
            workers=self.count,
            listen=listen_url(self._host, self._port, tls=self.config.server.tls),
            metrics_dir=self._metrics_dir or self._environ.get(METRICS_DIR_ENV),
            run_dir=self._run_dir,
        )
        tasks = [loop.create_task(self._keep(worker)) for worker in self._workers]
        up = loop.create_task(self._up.wait())
        stopped = loop.create_task(self._stop.wait())
        await asyncio.wait([up, stopped], return_when=asyncio.FIRST_COMPLETED)
        up.cancel()
        stopped.cancel()
        if self._up.is_set() and self._failed is None:
            url = listen_url(self._host, self._port, tls=self.config.server.tls)
            print(
                f"stripe-gateway {__version__} listening on {url} ({self.count} workers)",
                file=sys.stderr,
                flush=True,
            )
        await asyncio.gather(*tasks)
        if self._failed is not None:
            code = self._failed
        else:
            code = 0 if all(worker.clean for worker in self._workers) else 1
        self.log.info("supervisor_stopped", exit_code=code)
        return code

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            self._config_path,
            "--workers",
            "1",
            "--host",
            self._host,
            "--port",
            str(self._port),
        ]

    def _forget_metrics(self, pid: int) -> None:
        """A worker exited: its live gauges (in-flight requests) stop counting in the
        multiprocess metrics; its counters and histograms still add up."""
        directory = self._metrics_dir or self._environ.get(METRICS_DIR_ENV)
        if not directory:
            return
        from gateway.metrics import mark_process_dead

        try:
            mark_process_dead(pid, directory)
        except OSError as exc:
            self.log.warning("metrics_cleanup_failed", worker_pid=pid, error=str(exc))

    async def _spawn(self, worker: _Worker) -> asyncio.subprocess.Process:
        read_end, write_end = os.pipe()
        env = {
            **self._environ,
            WORKER_ENV: str(worker.index),
            REUSE_PORT_ENV: "1",
            READY_FD_ENV: str(write_end),
            SUPERVISOR_ENV: str(os.getpid()),
        }
        if self._metrics_dir is not None:
            env[METRICS_DIR_ENV] = self._metrics_dir
        if self._run_dir is not None:
            env[RUN_DIR_ENV] = self._run_dir
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._command(), env=env, stdin=asyncio.subprocess.DEVNULL, pass_fds=(write_end,)
            )
        except BaseException:
            os.close(read_end)  # no worker will write to it
            raise
        finally:
            os.close(write_end)
        worker.proc, worker.ready, worker.started = proc, False, time.monotonic()
        asyncio.get_running_loop().create_task(self._await_ready(worker, proc, read_end))
        return proc

    async def _await_ready(
        self, worker: _Worker, proc: asyncio.subprocess.Process, read_end: int
    ) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_end, "rb", buffering=0)
        )
        try:
            line = await reader.readline()  # b"" when the worker died first
        finally:
            transport.close()
        if not line.startswith(b"ready") or worker.proc is not proc:
            return
        worker.ready = True
        if worker.reload_pending:  # a SIGHUP came while it was starting
            worker.reload_pending = False
            self._signal(worker, signal.SIGHUP)
        if worker.reopen_pending:  # a SIGUSR1 came while it was starting
            worker.reopen_pending = False
            self._signal(worker, signal.SIGUSR1)
        if all(w.ready for w in self._workers):
            self._up.set()

    async def _keep(self, worker: _Worker) -> None:
        """Run one worker slot: start it, restart it when it exits, until stopped."""
        previous: int | None = None
        while True:
            proc = await self._spawn(worker)
            if worker.restarts:
                self.log.info(
                    "worker_restarted",
                    worker=worker.index,
                    worker_pid=proc.pid,
                    previous_pid=previous,
                    restarts=worker.restarts,
                )
            if self._stopping is not None:  # stopped while it was being started
                self._signal(worker, self._stopping)
            code = await proc.wait()
            self._forget_metrics(proc.pid)
            if self._run_dir is not None:  # a killed worker leaves its admin socket
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self._run_dir, f"admin-{proc.pid}.sock"))
            ran = time.monotonic() - worker.started
            if self._stopping is not None:
                # stopped by our signal before it could install its handler: nothing in flight
                worker.clean = code == 0 or (not worker.ready and code == -self._stopping)
                if not worker.clean:
                    self.log.warning(
                        "worker_exited", worker=worker.index, worker_pid=proc.pid, **_how(code)
                    )
                return
            if not self._up.is_set():
                self.log.error(
                    "worker_exited",
                    worker=worker.index,
                    worker_pid=proc.pid,
                    starting=True,
                    **_how(code),
                )
                self._failed = code if code > 0 else 1
                self._on_stop(signal.SIGTERM)
                return
            worker.crashes_in_a_row = 0 if ran >= STABLE_AFTER else worker.crashes_in_a_row + 1
            delay = min(RESTART_DELAY * 2 ** max(0, worker.crashes_in_a_row - 1), RESTART_DELAY_MAX)
            self.log.warning(
                "worker_exited",
                worker=worker.index,
                worker_pid=proc.pid,
                ran_s=round(ran, 3),
                restart_in_s=delay,
                **_how(code),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stopping is not None:
                worker.clean = True  # nothing was running in this slot
                return
            worker.restarts += 1
            previous = proc.pid

    # ----------------------------------------------------------------- signals

    def _signal(self, worker: _Worker, sig: int) -> None:
        if worker.proc is not None and worker.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(sig)

    def _on_stop(self, sig: int) -> None:
        first = self._stopping is None
        if first:
            self._stopping = sig
            self.log.info("supervisor_stopping", signal=signal.Signals(sig).name)
            deadline = self.config.server.drain_timeout + STOP_GRACE
            asyncio.get_running_loop().call_later(deadline, self._kill_all)
            self._stop.set()
        for worker in self._workers:
            self._signal(worker, sig)

    def _kill_all(self) -> None:
        for worker in self._workers:
            if worker.proc is not None and worker.proc.returncode is None:
                self.log.error("worker_killed", worker=worker.index, worker_pid=worker.proc.pid)
                self._signal(worker, signal.SIGKILL)

    def _on_hangup(self) -> None:
        """Validate the config file; if it is good, have every worker reload it."""
        if self._stopping is not None:
            return
        try:
            config = self._load()
            PluginHost(config)  # every plugin's own validation
        except ConfigError as exc:
            self.log.error("config_reload_failed", path=exc.path, reason=exc.reason)
            return
        except Exception as exc:
            self.log.error("config_reload_failed", path="", reason=f"{type(exc).__name__}: {exc}")
            return
        if config.server.workers != self.config.server.workers:
            self.log.warning(
                "config_keys_not_reloaded",
                keys=["server.workers"],
                reason="the number of workers is set at start; restart to change it",
            )
        signalled = []
        for worker in self._workers:
            if worker.ready:
                self._signal(worker, signal.SIGHUP)
                signalled.append(worker.index)
            else:
                worker.reload_pending = True
        self.log.info("config_reload_forwarded", workers=signalled)

    def _on_reopen(self) -> None:
        """Have every worker reopen its log files (SIGUSR1, as nginx): a worker that is
        not listening yet (it has no handler before that) gets it once it is."""
        signalled = []
        for worker in self._workers:
            if worker.ready:
                self._signal(worker, signal.SIGUSR1)
                signalled.append(worker.index)
            else:
                worker.reopen_pending = True
        self.log.info("reopen_logs_forwarded", workers=signalled)


def _how(code: int) -> dict[str, Any]:
    """``exit_code`` or ``signal`` of a finished process, for the log line."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return {"signal": signal.Signals(-code).name}
        return {"signal": -code}
    return {"exit_code": code}
