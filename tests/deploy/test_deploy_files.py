"""The deployment files (deploy/systemd, deploy/kubernetes, the Dockerfile) agree with the
gateway: the unit passes ``systemd-analyze verify`` (when systemd is installed) and
reloads with SIGHUP; the Kubernetes config is a valid gateway config whose secrets the
Deployment provides, whose ports the probes and Service use, and which, served for real
with a real Redis, answers the probes; the Dockerfile copies what the package needs and
runs it as a non-root user. Building the image and applying the manifests need a Docker
daemon and a cluster, which the tests do not have (docs/deploy.md says so)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from gateway.config import parse_config
from gateway.host import PluginHost
from tests.conftest import RedisServer
from tests.helpers import Served, free_port
from tests.serving import gateway_env, serve_gateway

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "stripe-gateway.service"
MANIFESTS = ROOT / "deploy" / "kubernetes" / "stripe-gateway.yaml"
DOCKERFILE = ROOT / "Dockerfile"


def _unit() -> dict[str, dict[str, list[str]]]:
    """The unit's sections: key -> values (a key may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            section.setdefault(key, []).append(value)
    return sections


def _manifests() -> dict[str, dict[str, Any]]:
    documents = [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]
    kinds = [d["kind"] for d in documents]
    assert len(kinds) == len(set(kinds)), kinds
    return {d["kind"]: d for d in documents}


def _k8s_config() -> dict[str, Any]:
    return tomllib.loads(_manifests()["ConfigMap"]["data"]["gateway.toml"])


# --------------------------------------------------------------------------- systemd


def test_the_systemd_unit_reloads_with_sighup_and_outlasts_the_drain() -> None:
    unit = _unit()
    service = unit["Service"]
    (start,) = service["ExecStart"]
    assert start.split()[1:] == ["serve", "--config", "/etc/stripe-gateway/gateway.toml"]
    (check,) = service["ExecStartPre"]
    assert check.split()[1:] == ["check-config", "/etc/stripe-gateway/gateway.toml"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["KillSignal"] == ["SIGTERM"]
    drain = parse_config({"teams": []}).server.drain_timeout
    assert float(service["TimeoutStopSec"][0]) > drain
    assert service["User"] == ["stripe-gateway"] and service["NoNewPrivileges"] == ["yes"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # the unit as installed, but with this checkout's command (verify checks it exists)
    command = Path(sys.executable).parent / "stripe-gateway"
    if not command.exists():
        pytest.skip("no stripe-gateway script in this venv")
    unit = tmp_path / "stripe-gateway.service"
    unit.write_text(
        UNIT.read_text().replace("/opt/stripe-gateway/bin/stripe-gateway", str(command))
    )
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line for line in (done.stdout + done.stderr).splitlines() if "stripe-gateway" in line
    ]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr


# --------------------------------------------------------------------------- Kubernetes


def test_the_kubernetes_config_is_a_valid_gateway_config(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = _manifests()["Secret"]["stringData"]
    for name, value in secret.items():
        monkeypatch.setenv(name, value)
    config = parse_config(_k8s_config(), environ=secret)
    host = PluginHost(config)  # every plugin's settings too
    assert {"cache", "rate_limit", "audit", "metrics"} <= set(host.plugin_names())
    # several replicas share one Redis: the shared backends, not per-process memory
    plugins = config.plugins.tables()
    assert plugins["cache"]["backend"] == "redis"
    assert plugins["rate_limit"]["backend"] == "redis"
    # every environment variable the config names comes from the Secret
    named = {t.upstream_key_env for t in config.teams if t.upstream_key_env}
    named |= {p["redis_url_env"] for p in plugins.values() if "redis_url_env" in p}
    assert named <= set(secret)
    # placeholders only: nothing that looks like a live key or a real password
    assert not any(re.match(r"(sk|rk)_live_", value) for value in secret.values())


def test_the_deployment_probes_and_service_use_the_configured_ports() -> None:
    manifests = _manifests()
    config = parse_config(_k8s_config(), environ=manifests["Secret"]["stringData"] | _redis())
    deployment = manifests["Deployment"]["spec"]
    assert deployment["replicas"] >= 2
    pod = deployment["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > config.server.drain_timeout + 5
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": config.server.port, "admin": config.admin.port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["envFrom"] == [
        {"secretRef": {"name": manifests["Secret"]["metadata"]["name"]}}
    ]
    assert container["args"][:2] == ["serve", "--config"]
    (mount,) = container["volumeMounts"]
    assert container["args"][2] == f"{mount['mountPath']}/gateway.toml"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    labels = deployment["template"]["metadata"]["labels"]
    assert deployment["selector"]["matchLabels"] == labels
    service = manifests["Service"]["spec"]
    assert service["selector"] == labels
    assert [p["targetPort"] for p in service["ports"]] == ["http"]  # never the admin port


def _redis() -> dict[str, str]:
    return {"STRIPE_GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/0"}


def test_the_kubernetes_config_served_answers_the_probes(
    tmp_path: Path, redis_server: RedisServer, fake_api: tuple[Any, Served]
) -> None:
    """The ConfigMap's config, served with its listeners moved to free loopback ports and
    its upstream to the fake Stripe, in front of a real Redis: /healthz and /readyz of the
    admin port answer as the probes expect."""
    admin = free_port()
    text = _manifests()["ConfigMap"]["data"]["gateway.toml"]
    text = text.replace('host = "0.0.0.0"\nport = 8080', 'host = "127.0.0.1"\nport = 0', 1)
    text = text.replace('host = "0.0.0.0"\nport = 9090', f'host = "127.0.0.1"\nport = {admin}', 1)
    text += f'\n[upstream]\napi = "{fake_api[1].url}"\n'
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    secret = _manifests()["Secret"]["stringData"] | {"STRIPE_GATEWAY_REDIS_URL": redis_server.url}
    env = gateway_env() | secret
    with serve_gateway(config, env=env):
        base = f"http://127.0.0.1:{admin}"
        assert requests.get(base + "/healthz", timeout=10).status_code == 200
        ready = requests.get(base + "/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ready"
        redis_server.kill()  # a replica that lost Redis leaves the Service until it is back
        assert requests.get(base + "/readyz", timeout=10).status_code == 503
        assert requests.get(base + "/healthz", timeout=10).status_code == 200  # not restarted


# --------------------------------------------------------------------------- Dockerfile


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


def test_the_dockerfile_installs_the_package_and_runs_it_unprivileged() -> None:
    instructions = _instructions()
    bases = [arg.split()[0] for op, arg in instructions if op == "FROM"]
    assert bases and all(re.fullmatch(r"python:3\.1[1-9]-slim-\w+", b) for b in bases), bases
    for op, arg in instructions:
        if op == "COPY" and not arg.startswith("--from"):
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such path"
    copied = {s for op, arg in instructions if op == "COPY" for s in arg.split()[:-1]}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in packages["packages"]["find"]["include"]:
        assert package.rstrip("*") in copied, f"the image misses the package {package}"
    (user,) = [arg for op, arg in instructions if op == "USER"]
    assert not user.startswith(("0", "root"))
    assert [arg for op, arg in instructions if op == "ENTRYPOINT"] == ['["stripe-gateway"]']
    exposed = {int(p) for op, arg in instructions if op == "EXPOSE" for p in arg.split()}
    k8s = _k8s_config()
    assert {k8s["server"]["port"], k8s["admin"]["port"]} == exposed
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
