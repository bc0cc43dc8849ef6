"""TLS on the public listener (``[server] tls_certificate``, ``tls_key``): certificates
made here by a private CA (``trustme``), the official stripe SDK trusting that CA, the
gateway run as ``stripe-gateway serve``; files that do not make a pair stop start-up with
a config error; SIGHUP serves new files to new connections, and keeps the running
certificate when the new files are broken."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe
import trustme

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.tls import ReloadableTls, TlsError, server_context
from tests.cli_helpers import assert_one_line_config_error, run_cli
from tests.helpers import BILLING_KEY, Served
from tests.serving import (
    GatewayConfigFile,
    events,
    gateway_env,
    serve_gateway,
    wait_for_events,
)


@dataclass
class Pair:
    """A certificate (for 127.0.0.1 and localhost) and its key, written to files."""

    cert: trustme.LeafCert
    certificate: Path
    key: Path

    @property
    def der(self) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.cert.cert_chain_pems[0].bytes().decode())

    def write_to(self, certificate: Path, key: Path) -> None:
        """Replace ``certificate`` and ``key`` with this pair, each atomically."""
        for source, dest in ((self.certificate, certificate), (self.key, key)):
            tmp = dest.with_suffix(".tmp")
            tmp.write_bytes(source.read_bytes())
            os.replace(tmp, dest)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _pair(ca: trustme.CA, where: Path, name: str) -> Pair:
    cert = ca.issue_cert("127.0.0.1", "localhost", organization_name=name)
    certificate, key = where / f"{name}.crt", where / f"{name}.key"
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(certificate), append=True)
    cert.private_key_pem.write_to_path(str(key))
    return Pair(cert, certificate, key)


def _ca_file(ca: trustme.CA, where: Path) -> Path:
    path = where / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def _peer_certificate(host_port: tuple[str, int], ca_file: Path) -> bytes:
    """The certificate a new connection is served (DER)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(host_port, timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=host_port[0]) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


def _tls_config(tmp: Path, api: str, certificate: Path, key: Path) -> Path:
    config = GatewayConfigFile(tmp, api=api)
    path = config.write()
    text = path.read_text().replace(
        "[server]\n",
        f'[server]\ntls_certificate = "{certificate}"\ntls_key = "{key}"\n',
        1,
    )
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- the SDK


@pytest.mark.parametrize("uvloop", [True, False], ids=["uvloop", "asyncio"])
def test_the_stripe_sdk_trusting_the_ca_calls_through_https(
    tmp_path: Path,
    ca: trustme.CA,
    fake_api: tuple[Any, Served],
    monkeypatch: pytest.MonkeyPatch,
    uvloop: bool,
) -> None:
    pair = _pair(ca, tmp_path, "first")
    config = _tls_config(tmp_path, fake_api[1].url, pair.certificate, pair.key)
    if not uvloop:
        config.write_text(config.read_text().replace("[server]\n", "[server]\nuvloop = false\n"))
    with serve_gateway(config) as gw:
        assert gw.url.startswith("https://127.0.0.1:")
        client = stripe.StripeClient(
            BILLING_KEY, base_addresses={"api": gw.url}, max_network_retries=0
        )
        # the SDK's own CA bundle does not know this CA: it refuses the connection
        with pytest.raises(stripe.APIConnectionError):
            client.v1.customers.retrieve("cus_1Ntls0000001")
        monkeypatch.setattr(stripe, "ca_bundle_path", str(_ca_file(ca, tmp_path)))
        customer = client.v1.customers.retrieve("cus_1Ntls0000001")
        assert customer.id == "cus_1Ntls0000001"
        assert fake_api[0].last().headers["Authorization"].endswith("billingupstream000000001")
        assert "Traceback" not in gw.output()


def test_plain_http_to_the_tls_port_fails_cleanly(
    tmp_path: Path, ca: trustme.CA, fake_api: tuple[Any, Served]
) -> None:
    pair = _pair(ca, tmp_path, "first")
    config = _tls_config(tmp_path, fake_api[1].url, pair.certificate, pair.key)
    ca_file = _ca_file(ca, tmp_path)
    with serve_gateway(config) as gw:
        host, port = gw.host_port
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(
                b"GET /v1/customers HTTP/1.1\r\nHost: x\r\n"
                + f"Authorization: Bearer {BILLING_KEY}\r\n\r\n".encode()
            )
            received = b""
            while chunk := sock.recv(4096):  # the gateway closes the connection
                received += chunk
        assert not received.startswith(b"HTTP/")  # nothing was answered, or forwarded
        assert fake_api[0].received == []
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://{host}:{port}/v1/customers", auth=(BILLING_KEY, ""), timeout=10)
        # and it goes on serving HTTPS
        answer = requests.get(
            gw.url + "/v1/customers", auth=(BILLING_KEY, ""), verify=str(ca_file), timeout=10
        )
        assert answer.status_code == 200
        assert "Traceback" not in gw.output()


# --------------------------------------------------------------------------- start-up


def test_files_that_do_not_make_a_pair_are_config_errors_at_start_up(
    tmp_path: Path, ca: trustme.CA
) -> None:
    first, second = _pair(ca, tmp_path, "first"), _pair(ca, tmp_path, "second")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    cases = [
        ((first.certificate, second.key), "server.tls_key", "is not the key of the certificate"),
        ((tmp_path / "missing.crt", first.key), "server.tls_certificate", "cannot read"),
        ((first.certificate, tmp_path / "missing.key"), "server.tls_key", "cannot read"),
        ((first.key, first.key), "server.tls_certificate", "holds no PEM certificate"),
        ((first.certificate, first.certificate), "server.tls_key", "holds no PEM private key"),
        ((garbage, first.key), "server.tls_certificate", "cannot be served"),
    ]
    for (certificate, key), path, reason in cases:
        config = _tls_config(tmp_path, "http://127.0.0.1:1", certificate, key)
        result = run_cli("serve", "--config", str(config), env=gateway_env())
        assert_one_line_config_error(result, f"{path}: ", reason)
        assert "PRIVATE KEY" not in result.stderr
    # check-config says the same
    config = _tls_config(tmp_path, "http://127.0.0.1:1", first.certificate, second.key)
    result = run_cli("check-config", str(config), env=gateway_env())
    assert_one_line_config_error(result, "server.tls_key: ", "is not the key of the certificate")


def test_tls_needs_both_files() -> None:
    with pytest.raises(ConfigError, match=r"^server\.tls_key: TLS needs both"):
        parse_config({"server": {"tls_certificate": "/x.pem"}, "teams": []})
    with pytest.raises(ConfigError, match=r"^server\.tls_certificate: TLS needs both"):
        parse_config({"server": {"tls_key": "/x.key"}, "teams": []})


def test_an_encrypted_key_is_refused_with_the_reason(tmp_path: Path, ca: trustme.CA) -> None:
    pair = _pair(ca, tmp_path, "first")
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_text(
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )
    with pytest.raises(TlsError, match=r"^tls_key: .* is encrypted"):
        server_context(str(pair.certificate), str(encrypted))


# --------------------------------------------------------------------------- reloading


def test_sighup_serves_a_new_certificate_and_keeps_the_old_one_when_the_new_is_broken(
    tmp_path: Path, ca: trustme.CA, fake_api: tuple[Any, Served]
) -> None:
    first, second = _pair(ca, tmp_path, "first"), _pair(ca, tmp_path, "second")
    certificate, key = tmp_path / "live.crt", tmp_path / "live.key"
    first.write_to(certificate, key)
    config = _tls_config(tmp_path, fake_api[1].url, certificate, key)
    ca_file = _ca_file(ca, tmp_path)
    with serve_gateway(config) as gw:
        assert _peer_certificate(gw.host_port, ca_file) == first.der
        # a kept-alive connection opened before the reload
        kept = http.client.HTTPSConnection(
            *gw.host_port, context=ssl.create_default_context(cafile=str(ca_file)), timeout=10
        )
        kept.request("GET", "/v1/customers", headers={"Authorization": f"Bearer {BILLING_KEY}"})
        assert kept.getresponse().read() and kept.sock is not None

        second.write_to(certificate, key)
        gw.proc.send_signal(signal.SIGHUP)
        wait_for_events(gw, "tls_reloaded", 1)
        assert _peer_certificate(gw.host_port, ca_file) == second.der
        kept.request("GET", "/v1/customers", headers={"Authorization": f"Bearer {BILLING_KEY}"})
        response = kept.getresponse()
        assert response.status == 200 and response.read()
        assert kept.sock.getpeercert(True) == first.der  # open connections keep theirs
        kept.close()

        # a key that is not the certificate's: the reload fails, the second pair stays
        first.write_to(tmp_path / "ignored.crt", key)
        gw.proc.send_signal(signal.SIGHUP)
        (failed,) = wait_for_events(gw, "config_reload_failed", 1)
        assert failed["path"] == "server.tls_key" and failed["level"] == "error"
        assert "is not the key of the certificate" in failed["reason"]
        assert _peer_certificate(gw.host_port, ca_file) == second.der
        # a certificate file gone: the same
        certificate.unlink()
        gw.proc.send_signal(signal.SIGHUP)
        failed = wait_for_events(gw, "config_reload_failed", 2)[-1]
        assert failed["path"] == "server.tls_certificate" and "cannot read" in failed["reason"]
        assert _peer_certificate(gw.host_port, ca_file) == second.der
        answer = requests.get(
            gw.url + "/v1/customers", auth=(BILLING_KEY, ""), verify=str(ca_file), timeout=10
        )
        assert answer.status_code == 200
        assert len(events(gw, "tls_reloaded")) == 1
        assert "PRIVATE KEY" not in gw.output()


def test_every_worker_serves_tls_and_reloads_it(
    tmp_path: Path, ca: trustme.CA, fake_api: tuple[Any, Served]
) -> None:
    first, second = _pair(ca, tmp_path, "first"), _pair(ca, tmp_path, "second")
    certificate, key = tmp_path / "live.crt", tmp_path / "live.key"
    first.write_to(certificate, key)
    config = _tls_config(tmp_path, fake_api[1].url, certificate, key)
    ca_file = _ca_file(ca, tmp_path)
    with serve_gateway(config, "--workers", "2") as gw:
        assert gw.url.startswith("https://")
        second.write_to(certificate, key)
        gw.proc.send_signal(signal.SIGHUP)  # the supervisor passes it on to each worker
        wait_for_events(gw, "tls_reloaded", 2, timeout=30)
        for _ in range(8):  # fresh connections: the kernel spreads them over the workers
            assert _peer_certificate(gw.host_port, ca_file) == second.der


# --------------------------------------------------------------------------- ReloadableTls


@pytest.fixture
def tls_server(tmp_path: Path, ca: trustme.CA) -> Iterator[tuple[ReloadableTls, Pair, Pair, int]]:
    """A ReloadableTls on a loopback socket, each connection handshaken in a thread."""
    first, second = _pair(ca, tmp_path, "first"), _pair(ca, tmp_path, "second")
    certificate, key = tmp_path / "live.crt", tmp_path / "live.key"
    first.write_to(certificate, key)
    tls = ReloadableTls(str(certificate), str(key))
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with tls.context.wrap_socket(conn, server_side=True) as wrapped:
                    wrapped.recv(1)
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield tls, first, second, listener.getsockname()[1]
    stop.set()
    listener.close()
    thread.join(10)


def test_reload_swaps_the_certificate_whole_or_not_at_all(
    tls_server: tuple[ReloadableTls, Pair, Pair, int], tmp_path: Path, ca: trustme.CA
) -> None:
    tls, first, second, port = tls_server
    ca_file = _ca_file(ca, tmp_path)
    assert _peer_certificate(("127.0.0.1", port), ca_file) == first.der
    second.write_to(Path(tls.certificate), Path(tls.key))
    tls.reload()
    assert _peer_certificate(("127.0.0.1", port), ca_file) == second.der
    # the certificate changes, the key does not: refused, the second pair stays
    first.write_to(Path(tls.certificate), tmp_path / "unused.key")
    with pytest.raises(TlsError, match="is not the key of the certificate"):
        tls.reload()
    assert _peer_certificate(("127.0.0.1", port), ca_file) == second.der
