"""The chart's alerts, dashboard, monitors, leader election and tracing values, rendered and checked.

The PrometheusRule's groups are extracted from the rendered chart and given to
Prometheus' own ``promtool``: ``check rules`` on them as rendered, and
``test rules`` with input series that fire each alert (and series that must
not). The metric names the rules and the dashboard read are checked against
the metrics the services declare, so a rename breaks this test, not a pager.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import NAMESPACE, RELEASE, render

from apx.dataplane.gateway.metrics import GatewayMetrics
from apx.dataplane.ratelimit.metrics import RateLimitMetrics
from apx.dataplane.worker.metrics import WorkerMetrics
from apx.operator.metrics import OperatorMetrics
from e2e.services import apt_install

MONITORING = {"monitoring": {"prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}}}
NOT_BUILT_YET = {"apx_xds_nacks_total"}  # the xDS server's NACK counter: the rule waits for it
PROMQL_WORDS = {
    "sum", "max", "min", "by", "rate", "increase", "absent", "vector", "or", "histogram_quantile",
    "label_values", "le", "without",
}  # fmt: skip


def _series(series: str, values: str) -> dict[str, str]:
    return {"series": series, "values": values}


OPS = f'namespace="{NAMESPACE}"'  # the operator pods' namespace, as the scrape labels it

# For each alert: input series (promtool's expanding notation, 1m apart), when to evaluate, and
# the labels the alert must carry then.
FIRING: dict[str, tuple[list[dict[str, str]], str, dict[str, str]]] = {
    "APXOperatorDown": (
        [_series(f'apx_operator_leader{{{OPS},pod="apx-operator-a"}}', "0x20")],
        "10m",
        {"namespace": NAMESPACE},
    ),
    "APXReconcileErrors": (
        [_series(f'controller_runtime_reconcile_errors_total{{{OPS},controller="route"}}', "0+1x30")],
        "20m",
        {"controller": "route"},
    ),
    "APXObjectsStalled": (
        [_series(f'apx_operator_objects{{{OPS},kind="Route",phase="Stalled"}}', "2x30")],
        "20m",
        {"kind": "Route"},
    ),
    "APXOperatorDependencyDown": (
        [_series(f'apx_operator_dependency_up{{{OPS},dependency="redis"}}', "0x20")],
        "10m",
        {"dependency": "redis"},
    ),
    "APXRateLimitFailingOpen": (
        [
            _series(
                'apx_ratelimit_failures_total{failure_mode="open",decided_by="service",reason="redis"}',
                "0+60x20",
            )
        ],
        "10m",
        {},
    ),
    "APXDeadLetterGrowth": (
        [
            _series(
                'apx_worker_messages_total{route="team-a/jobs",track="stable",outcome="dead_lettered"}',
                "0+1x20",
            )
        ],
        "5m",
        {"route": "team-a/jobs"},
    ),
    "APXCanaryRolledBack": (
        [_series('apx_canary_rollbacks_total{route="checkout"}', "0 0 1 1 1 1")],
        "4m",
        {"route": "checkout"},
    ),
    "APXXdsNacks": (
        [_series('apx_xds_nacks_total{type_url="envoy.config.route.v3.RouteConfiguration"}', "0+1x10")],
        "5m",
        {"type_url": "envoy.config.route.v3.RouteConfiguration"},
    ),
}
# Healthy series: no alert may fire on them.
HEALTHY = [
    _series(f'apx_operator_leader{{{OPS},pod="apx-operator-a"}}', "1x30"),
    _series(f'apx_operator_leader{{{OPS},pod="apx-operator-b"}}', "0x30"),
    _series(f'controller_runtime_reconcile_errors_total{{{OPS},controller="route"}}', "3x30"),
    _series(f'apx_operator_objects{{{OPS},kind="Route",phase="Stalled"}}', "0x30"),
    _series(f'apx_operator_dependency_up{{{OPS},dependency="redis"}}', "1x30"),
    _series('apx_ratelimit_failures_total{failure_mode="closed",decided_by="service"}', "0+60x30"),
    _series('apx_worker_messages_total{route="team-a/jobs",track="stable",outcome="acked"}', "0+100x30"),
    _series('apx_canary_rollbacks_total{route="checkout"}', "1x30"),
]  # fmt: skip


@pytest.fixture(scope="module")
def promtool() -> str:
    return apt_install("prometheus", "promtool", no_recommends=True)


@pytest.fixture(scope="module")
def rules() -> dict[str, Any]:
    (rule,) = render(MONITORING).of_kind("PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


def _declared_metrics() -> set[str]:
    names: set[str] = set()
    for metrics in (OperatorMetrics(), RateLimitMetrics(), GatewayMetrics(), WorkerMetrics()):
        for family in metrics.registry.collect():
            names.update(sample.name for sample in family.samples)
            names.add(family.name)
            for suffix in ("_total", "_bucket", "_count", "_sum"):
                names.add(family.name + suffix)
    return names


def _metric_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', "", expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    without_labels = re.sub(r"\{[^}]*\}", "", without_ranges)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_labels))
    by_clauses = set(re.findall(r"(?:by|without)\s*\(([^)]*)\)", without_labels))
    grouped = {label.strip() for clause in by_clauses for label in clause.split(",")}
    return words - PROMQL_WORDS - grouped


def test_rendered_rules_pass_promtool_check(tmp_path: Path, promtool: str, rules: dict[str, Any]) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    checked = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(FIRING)} rules found" in checked.stdout


def test_every_alert_fires_on_its_series_and_none_on_healthy_ones(
    tmp_path: Path, promtool: str, rules: dict[str, Any]
) -> None:
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert alerts == set(FIRING)
    # promtool compares annotations too; their templates are checked by `check rules` above,
    # so the unit test runs on the same rules without them.
    bare = copy.deepcopy(rules)
    for group in bare["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(bare))
    tests: list[dict[str, Any]] = []
    for alert, (series, at, labels) in FIRING.items():
        severity = next(
            r["labels"]["severity"] for g in rules["groups"] for r in g["rules"] if r["alert"] == alert
        )
        tests.append(
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": at, "alertname": alert,
                     "exp_alerts": [{"exp_labels": {**labels, "severity": severity}}]},
                    # and not before its condition held (for: / the window)
                    {"eval_time": "0m", "alertname": alert, "exp_alerts": []},
                ],
            }
        )  # fmt: skip
    tests.append(
        {
            "interval": "1m",
            "input_series": HEALTHY,
            "alert_rule_test": [
                {"eval_time": "25m", "alertname": alert, "exp_alerts": []} for alert in FIRING
            ],
        }
    )
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests})
    )
    tested = subprocess.run(
        [promtool, "test", "rules", "tests.yaml"], capture_output=True, text=True, cwd=tmp_path
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_rules_and_dashboard_read_only_metrics_the_services_declare(rules: dict[str, Any]) -> None:
    declared = _declared_metrics()
    read = {name for g in rules["groups"] for r in g["rules"] for name in _metric_names(r["expr"])}
    assert "apx_operator_leader" in read and "apx_worker_messages_total" in read
    assert read - declared == NOT_BUILT_YET
    dashboard = render(MONITORING).get("ConfigMap", f"{RELEASE}-dashboard")
    panels = json.loads(dashboard["data"]["apx-overview.json"])["panels"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    assert len(exprs) >= 10
    unknown = {name for expr in exprs for name in _metric_names(expr)} - declared
    assert unknown == set(), unknown


def test_dashboard_is_a_sidecar_configmap_and_both_are_off_by_default() -> None:
    rendered = render(MONITORING)
    dashboard = rendered.get("ConfigMap", f"{RELEASE}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["apx-overview.json"])["uid"] == "apx-overview"
    elsewhere = render({"monitoring": {"dashboard": {"enabled": True, "namespace": "grafana"}}})
    assert elsewhere.get("ConfigMap", f"{RELEASE}-dashboard", namespace="grafana")
    defaults = render()
    assert defaults.of_kind("PrometheusRule") == []
    assert f"{RELEASE}-dashboard" not in defaults.names("ConfigMap")


def test_worker_pod_monitor_selects_worker_pods_in_any_namespace() -> None:
    from apx.controllers.pipeline import compile_resources
    from tests.dataplane.conftest import apx_docs  # an async Route, compiled as the operator does

    rendered = render({"metrics": {"podMonitor": {"enabled": True}}})
    monitor = rendered.get("PodMonitor", f"{RELEASE}-workers")
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    jwks = type("Jwks", (), {"issuer": "https://issuer.test", "url": "https://issuer.test/jwks"})()
    compiled = compile_resources(apx_docs("team-a", jwks, "http://upstream.team-a:8080"), project="p")  # type: ignore[arg-type]
    workers = [m for m in compiled.kubernetes.manifests if m["kind"] == "Deployment"]
    assert workers
    for deployment in workers:
        pod = deployment["spec"]["template"]
        wanted = monitor["spec"]["selector"]["matchLabels"]
        assert wanted.items() <= pod["metadata"]["labels"].items()
        ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        assert "metrics" in ports
    assert f"{RELEASE}-workers" not in render().names("PodMonitor")


def test_leader_election_is_on_with_a_lease_role_for_exactly_that_lease() -> None:
    rendered = render()
    env = {e["name"]: e for e in rendered.operator()["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["APX_LEADER_ELECTION"]["value"] == "true"
    lease = env["APX_LEASE_NAME"]["value"]
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    role = rendered.get("Role", f"{RELEASE}-operator-leader-election")
    grants = {
        (verb, tuple(rule.get("resourceNames") or ())) for rule in role["rules"] for verb in rule["verbs"]
    }
    assert grants == {("create", ()), ("get", (lease,)), ("update", (lease,))}
    assert all(rule["resources"] == ["leases"] for rule in role["rules"])
    binding = rendered.get("RoleBinding", f"{RELEASE}-operator-leader-election")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    spec = rendered.operator()["spec"]["template"]["spec"]
    assert spec["affinity"]["podAntiAffinity"]
    assert spec["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"


def test_more_than_one_replica_without_leader_election_is_refused() -> None:
    with pytest.raises(Exception, match="leaderElection"):
        render({"operator": {"replicaCount": 2, "leaderElection": {"enabled": False}}})


def test_tracing_values_become_standard_otel_variables_only_with_an_endpoint() -> None:
    values = {
        "operator": {
            "otlpEndpoint": "http://otel-collector.observability:4318",
            "tracing": {"sampler": "traceidratio", "samplerArg": "0.25", "resourceAttributes": "env=prod"},
        },
        "dataplane": {"ratelimit": {"enabled": True}, "gateway": {"enabled": True}},
    }
    rendered = render(values)
    assert rendered.workloads()
    for workload in rendered.workloads():
        env = {
            e["name"]: e.get("value") for e in workload["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["OTEL_TRACES_SAMPLER"] == "traceidratio", workload["metadata"]["name"]
        assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
        assert env["OTEL_RESOURCE_ATTRIBUTES"] == "env=prod"
        assert env["APX_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    for workload in render().workloads():
        names = {e["name"] for e in workload["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert not {n for n in names if n.startswith("OTEL_")}
