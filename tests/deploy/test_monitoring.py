"""The Prometheus alerting rules (deploy/prometheus/alerts.yml) and the Grafana dashboard
(deploy/grafana/stripe-gateway.json): well-formed, and every metric they read is one the
gateway exports on ``/metrics`` (read from a running gateway with every plugin on, after
traffic), so a renamed metric fails here rather than silently emptying a panel or an alert.

``promtool`` (Debian's ``prometheus`` package) checks and unit-tests the rules when it is
installed; without it those two tests are skipped, and the structural checks here still
run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe
import yaml
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from sandbox.delivery import signature_header
from tests.conftest import RedisServer
from tests.deploy.promql import metric_names, template_metric_names
from tests.helpers import BILLING_KEY, Stack, WebhookReceiver, digest, free_port

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "stripe-gateway.json"

#: what the issue asks the alerts to watch: alert -> a metric it must read
WATCHED = {
    "StripeGatewayUpstreamErrorRatio": "stripe_gateway_request_outcomes_total",
    "StripeGatewayHighLatencyP99": "stripe_gateway_request_duration_seconds_bucket",
    "StripeGatewayCacheHitRatioCollapse": "stripe_gateway_cache_requests_total",
    "StripeGatewayTeamAtRateLimit": "stripe_gateway_rate_limit_decisions_total",
    "StripeGatewayRedisBreakerOpen": "stripe_gateway_redis_breaker_open",
    "StripeGatewayAuditWriteFailures": "stripe_gateway_audit_write_failures_total",
    "StripeGatewayWebhookQueueAge": "stripe_gateway_webhook_oldest_pending_seconds",
}
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_RULE_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
_SEVERITIES = {"page", "warning", "info"}
#: the variables Grafana itself defines
_GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__range", "__all"}
ADMIN_TOKEN = "adm_test_monitoring_000000000001"
SOURCE_SECRET = "whsec_monitoring_source_000000001"
TEAM_SECRET = "whsec_monitoring_team_00000000001"


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too (rows themselves left out)."""
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def _dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in _panels(dashboard) for target in panel["targets"]]


def _variable_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def _used_metrics() -> dict[str, set[str]]:
    """metric name -> where it is used (``alerts.yml: Name``, ``dashboard: panel title``)."""
    used: dict[str, set[str]] = {}
    for rule in _rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alerts.yml: {rule['alert']}")
    dashboard = _dashboard()
    for panel in _panels(dashboard):
        for target in panel["targets"]:
            for name in metric_names(target["expr"]):
                used.setdefault(name, set()).add(f"dashboard: {panel['title']}")
    for query in _variable_queries(dashboard):
        for name in template_metric_names(query):
            used.setdefault(name, set()).add(f"dashboard variable: {query}")
    return used


def _balanced(expr: str) -> bool:
    """Brackets balance outside string literals."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in text:
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


# --------------------------------------------------------------------------- the rules file


def test_the_rules_file_is_well_formed() -> None:
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    groups = document["groups"]
    assert groups and len({g["name"] for g in groups}) == len(groups)
    names = []
    for group in groups:
        assert set(group) <= {"name", "interval", "rules"} and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= _RULE_KEYS, rule
            name = rule["alert"]
            names.append(name)
            assert re.fullmatch(r"StripeGateway[A-Z][A-Za-z0-9]+", name)
            expr = rule["expr"]
            assert isinstance(expr, str) and expr.strip() and _balanced(expr), name
            assert metric_names(expr), f"{name}: reads no metric"
            if "for" in rule:
                assert _DURATION.match(rule["for"]), f"{name}: for: {rule['for']}"
            assert rule["labels"]["severity"] in _SEVERITIES, name
            annotations = rule["annotations"]
            assert set(annotations) == {"summary", "description"}, name
            for text in annotations.values():
                assert text.count("{{") == text.count("}}"), name
                # a label the annotation shows must survive the expression's aggregation
                for label in re.findall(r"\$labels\.(\w+)", text):
                    kept = re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr)
                    assert any(label in [k.strip() for k in ks.split(",")] for ks in kept), (
                        f"{name}: shows $labels.{label}, which its expression drops"
                    )
    assert len(names) == len(set(names))
    for alert, metric in WATCHED.items():
        rule = next((r for r in _rules() if r["alert"] == alert), None)
        assert rule is not None, f"no alert {alert}"
        assert metric in metric_names(rule["expr"]), alert


def test_every_alert_has_unit_tests_that_see_it_quiet_and_firing() -> None:
    document = yaml.safe_load(RULE_TESTS.read_text())
    assert document["rule_files"] == [RULES.name]
    quiet: set[str] = set()
    firing: set[str] = set()
    for case in document["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in _rules()}
    assert quiet == alerts
    assert firing == alerts


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package)")
    return promtool


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in done.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    done = subprocess.run(
        [_promtool(), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULE_TESTS.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- the dashboard


def test_the_dashboard_is_well_formed() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "stripe-gateway" and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]] + [
        panel["id"] for panel in _panels(dashboard) if panel not in dashboard["panels"]
    ]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
    for panel in _panels(dashboard):
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), title
        for target in panel["targets"]:
            expr = target["expr"]
            assert _balanced(expr) and metric_names(expr), f"{title}: {expr}"
            for variable in re.findall(r"\$\{?(\w+)", expr):
                assert variable in variables or variable in _GRAFANA_VARIABLES, (
                    f"{title}: ${variable} is not a dashboard variable"
                )


def test_the_dashboard_shows_what_operators_ask_for() -> None:
    shown = set()
    for expr in _dashboard_queries(_dashboard()):
        shown |= metric_names(expr)
    for metric in (
        "stripe_gateway_requests_total",
        "stripe_gateway_request_duration_seconds_bucket",
        "stripe_gateway_upstream_errors_total",
        "stripe_gateway_cache_requests_total",
        "stripe_gateway_cache_served_bytes_total",
        "stripe_gateway_rate_limit_decisions_total",
        "stripe_gateway_redis_breaker_open",
        "stripe_gateway_audit_write_failures_total",
        "stripe_gateway_webhook_queue_depth",
        "stripe_gateway_webhook_oldest_pending_seconds",
    ):
        assert metric in shown, metric


# --------------------------------------------------------------------------- against /metrics


def _exported(text: str) -> set[str]:
    """The sample names ``/metrics`` declares (a metric with labels but no child yet has
    only its ``# TYPE`` line) or shows."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def _wait(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _every_plugin_on(stack: Stack, redis: RedisServer, receiver: WebhookReceiver) -> dict[str, Any]:
    source = stack.tmp / "source.secret"
    source.write_text(SOURCE_SECRET)
    team_secret = stack.tmp / "team.secret"
    team_secret.write_text(TEAM_SECRET)
    return {
        "audit": {"path": str(stack.audit_path)},
        "cache": {"backend": "redis", "redis_url": redis.url, "redis_timeout": 5.0},
        "rate_limit": {
            "backend": "redis",
            "redis_url": redis.url,
            "redis_timeout": 5.0,
            "teams": {"billing": {"read": {"rate": 0.01, "burst": 5}}},
        },
        "webhooks": {
            "sqlite_path": str(stack.tmp / "webhooks.sqlite3"),
            "poll_seconds": 0.1,
            "sources": [{"name": "main", "path": "/webhooks/stripe", "secret_file": [str(source)]}],
            "subscriptions": [
                {
                    "name": "billing",
                    "team": "billing",
                    "url": receiver.url,
                    "secret_file": str(team_secret),
                    "retry_delays": [0.05],
                    "jitter": 0.0,
                }
            ],
        },
    }


def _traffic(stack: Stack) -> None:
    """Requests that touch every plugin: cache miss, hit and eviction, a rate-limit
    refusal, an upstream failure (and its retry), a webhook event delivered and one
    refused."""
    client = stripe.StripeClient(
        BILLING_KEY, base_addresses={"api": stack.gateway_url}, max_network_retries=0
    )
    client.v1.customers.retrieve("cus_1Nmonitoring01")  # miss
    client.v1.customers.retrieve("cus_1Nmonitoring01")  # hit
    client.v1.customers.update("cus_1Nmonitoring01", {"description": "x"})  # eviction
    failed = requests.get(
        stack.gateway_url + "/v1/test_faults/reset_before", auth=(BILLING_KEY, ""), timeout=10
    )
    assert failed.status_code == 502
    with pytest.raises(stripe.RateLimitError):  # 5 reads: the burst is spent
        for _ in range(10):
            client.v1.customers.list()
    body = json.dumps(
        {
            "id": "evt_test_monitoring0001",
            "object": "event",
            "api_version": "2024-06-20",
            "created": int(time.time()),
            "data": {"object": {"id": "in_1Nmonitoring01", "object": "invoice"}},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": "invoice.paid",
        }
    ).encode()
    for header in (signature_header(body, SOURCE_SECRET, int(time.time())), "t=1,v1=00"):
        requests.post(
            stack.gateway_url + "/webhooks/stripe",
            data=body,
            headers={"Stripe-Signature": header, "Content-Type": "application/json"},
            timeout=10,
        )


def test_every_metric_the_rules_and_the_dashboard_read_is_exported(
    stack: Stack,
    redis_server: RedisServer,
    webhook_receivers: Callable[..., WebhookReceiver],
) -> None:
    receiver = webhook_receivers()
    stack.start_gateway(
        plugins=_every_plugin_on(stack, redis_server, receiver),
        admin={"port": free_port(), "token_sha256": digest(ADMIN_TOKEN)},
    )
    _traffic(stack)
    receiver.wait_for(1)

    def scraped() -> str | None:
        text = requests.get(stack.admin_url + "/metrics", timeout=10).text
        # the delivery is counted, and the queue gauges set, once the poll has seen it
        done = 'stripe_gateway_webhook_deliveries_total{outcome="delivered"' in text
        done = done or 'outcome="delivered",subscription="billing"' in text
        return text if done and "stripe_gateway_webhook_queue_depth{" in text else None

    text = _wait(scraped, "the webhook delivery to be counted")
    exported = _exported(text)
    used = _used_metrics()
    assert len(used) >= 15
    missing = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert not missing, f"read by the rules or the dashboard, not on /metrics: {missing}"
    # the traffic gave the labelled metrics the alerts read real samples, not just a TYPE
    samples = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    for metric in WATCHED.values():
        assert metric in samples, metric


# --------------------------------------------------------------------------- the extractor


def test_metric_names_skips_functions_labels_strings_and_durations() -> None:
    expr = """
        histogram_quantile(0.99, sum by (family, le) (
          rate(a_bucket{family=~"sigma|tax", x="rate(b_total[5m])"}[5m] offset 1h)
        )) > 1e3
        and on (family) group_left(team)
        sum without (instance) (rate(c_total{job='j'}[$__rate_interval])) / d:recorded
        or vector(0) unless bool inf
    """
    assert metric_names(expr) == {"a_bucket", "c_total", "d:recorded"}
    assert template_metric_names("label_values(e_in_flight, instance)") == {"e_in_flight"}
    assert template_metric_names('label_values(f_total{team="x"}, team)') == {"f_total"}
    assert template_metric_names("label_values(instance)") == set()


_NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,20}(:[a-z0-9_]{1,8})?", fullmatch=True).filter(
    lambda n: (
        n not in {"and", "or", "unless", "bool", "by", "on", "without", "offset", "inf"}
        and n not in {"nan", "ignoring", "group_left", "group_right", "atan2"}
    )
)
_LABEL_VALUES = st.text(alphabet=st.characters(codec="utf-8", exclude_characters='"\\'))


@given(names=st.lists(_NAMES, min_size=1, max_size=4, unique=True), value=_LABEL_VALUES)
def test_metric_names_finds_exactly_the_selected_names(names: list[str], value: str) -> None:
    """Whatever the names and the label values (braces, brackets, parentheses, PromQL
    words inside strings), the names selected are found and nothing else."""
    parts = [
        f'sum by (le, team) (rate({name}{{team="{value}", le!="{value}"}}[5m] offset 10m))'
        for name in names
    ]
    expr = " / on (team) group_left ".join(parts)
    assert metric_names(expr) == set(names)
