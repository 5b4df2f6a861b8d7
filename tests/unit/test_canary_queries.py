"""Canary query templates: defaults per mode, escaping, the override file and its errors, the factory."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from apx.controllers.canary.types import RouteTarget
from apx.controllers.providers import DISABLED_MESSAGE, ProviderConfigError, provider_for
from apx.controllers.providers.prometheus import PrometheusProvider
from apx.controllers.providers.queries import (
    DEFAULT_QUERIES,
    QueryConfigError,
    load_queries,
    parse_queries,
    promql_string,
    render_query,
)

ASYNC = RouteTarget(namespace="shop", name="jobs", mode="async")
SYNC = RouteTarget(
    namespace="shop",
    name="checkout",
    mode="sync",
    clusters=(("stable", "shop_checkout_stable"), ("canary", "shop_checkout_canary")),
)


def test_async_defaults_select_the_workers_metrics_by_route_and_track() -> None:
    templates = DEFAULT_QUERIES.async_
    assert render_query(templates.requests, ASYNC, "canary", 60) == (
        'sum(increase(apx_requests_total{route="shop/jobs",track="canary"}[60s]))'
    )
    assert render_query(templates.errors, ASYNC, "stable", 30) == (
        'sum(increase(apx_requests_total{route="shop/jobs",track="stable",code=~"5.."}[30s]))'
    )
    assert render_query(templates.latency, ASYNC, "canary", 60) == (
        'sum by (le) (increase(apx_request_duration_seconds_bucket{route="shop/jobs",track="canary"}[60s]))'
    )
    assert templates.latency_unit == "seconds"


def test_sync_defaults_select_envoys_stats_of_the_tracks_own_cluster() -> None:
    templates = DEFAULT_QUERIES.sync
    assert render_query(templates.requests, SYNC, "canary", 60) == (
        'sum(increase(envoy_cluster_upstream_rq_total{envoy_cluster_name="shop_checkout_canary"}[60s]))'
    )
    assert render_query(templates.errors, SYNC, "stable", 60) == (
        "sum(increase(envoy_cluster_upstream_rq_xx"
        '{envoy_cluster_name="shop_checkout_stable",envoy_response_code_class="5"}[60s]))'
    )
    assert render_query(templates.latency, SYNC, "canary", 60) == (
        "sum by (le) (increase(envoy_cluster_upstream_rq_time_bucket"
        '{envoy_cluster_name="shop_checkout_canary"}[60s]))'
    )
    assert templates.latency_unit == "milliseconds"


def test_values_are_escaped_for_promql_string_literals() -> None:
    assert promql_string('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    hostile = RouteTarget(namespace="ns", name='x"}) or vector(1) #', mode="async")
    rendered = render_query('count(m{route="$route"})', hostile, "stable", 60)
    assert rendered == 'count(m{route="ns/x\\"}) or vector(1) #"})'


def test_every_placeholder_renders() -> None:
    template = "$route $namespace $name $track $cluster ${window}"
    assert (
        render_query(template, SYNC, "stable", 90)
        == "shop/checkout shop checkout stable shop_checkout_stable 90s"
    )


def test_an_override_file_replaces_only_the_keys_it_names(tmp_path: Path) -> None:
    path = tmp_path / "queries.yaml"
    path.write_text(
        "sync:\n"
        '  requests: sum(increase(my_requests_total{svc="$cluster"}[$window]))\n'
        '  latency: sum by (le) (increase(my_seconds_bucket{svc="$cluster"}[$window]))\n'
        "  latencyUnit: seconds\n"
    )
    queries = load_queries(str(path))
    assert queries.sync.requests == 'sum(increase(my_requests_total{svc="$cluster"}[$window]))'
    assert queries.sync.latency_unit == "seconds"
    assert queries.sync.errors == DEFAULT_QUERIES.sync.errors
    assert queries.async_ == DEFAULT_QUERIES.async_


def test_a_json_override_file_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "queries.json"
    path.write_text(json.dumps({"async": {"errors": 'sum(increase(e{route="$route"}[$window]))'}}))
    assert load_queries(str(path)).async_.errors == 'sum(increase(e{route="$route"}[$window]))'


def test_no_file_and_an_empty_file_mean_the_defaults(tmp_path: Path) -> None:
    assert load_queries(None) == DEFAULT_QUERIES
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_queries(str(empty)) == DEFAULT_QUERIES


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("prometheus: {}", "prometheus: unknown key (expected async, sync)"),
        ("sync: {rate: x}", "sync.rate: unknown key"),
        ("sync: {latencyUnit: minutes}", "sync.latencyUnit: must be seconds or milliseconds"),
        ("sync: [a, b]", "sync: must be a mapping"),
        ("sync: {requests: ''}", "sync.requests: must be a non-empty PromQL string"),
        ("sync: {errors: 42}", "sync.errors: must be a non-empty PromQL string"),
        ("sync: {requests: 'sum(x{a=\"$rout\"})'}", "sync.requests: unknown placeholder $rout"),
        ("async: {latency: 'sum(x{c=\"$cluster\"})'}", "async.latency: unknown placeholder $cluster"),
        ("async: {errors: 'sum(x{code=~\"5..$\"})'}", "async.errors: a '$' that starts no placeholder"),
        ("- a\n- b", "must be a mapping with the keys async and/or sync"),
        ("sync: {requests: [unclosed", "not valid YAML or JSON at line"),
    ],
)
def test_a_bad_override_names_the_key_in_one_line(document: str, expected: str) -> None:
    with pytest.raises(QueryConfigError) as caught:
        parse_queries(document, "queries.yaml")
    message = str(caught.value)
    assert message.startswith("queries.yaml: ")
    assert expected in message
    assert "\n" not in message


def test_a_missing_override_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(
        QueryConfigError, match=r"canary queries file .*missing.yaml: cannot be read \(No such file"
    ):
        load_queries(str(tmp_path / "missing.yaml"))


def test_a_literal_dollar_is_written_twice() -> None:
    queries = parse_queries('async: {errors: "sum(x{code=~\\"5..$$\\",route=\\"$route\\"})"}')
    assert (
        render_query(queries.async_.errors, ASYNC, "stable", 60) == 'sum(x{code=~"5..$",route="shop/jobs"})'
    )


# --- provider_for ----------------------------------------------------------------------


def _settings(url: str | None, queries: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(prometheus_url=url, canary_queries=queries)


def test_no_prometheus_url_disables_the_analysis() -> None:
    assert provider_for(_settings(None)) is None
    assert "--prometheus-url" in DISABLED_MESSAGE


def test_a_prometheus_url_gives_the_prometheus_provider_with_the_override_templates(tmp_path: Path) -> None:
    path = tmp_path / "queries.yaml"
    path.write_text("async: {latencyUnit: milliseconds}\n")
    provider = provider_for(_settings("http://prometheus.monitoring:9090", str(path)))
    assert isinstance(provider, PrometheusProvider)
    assert provider.queries.async_.latency_unit == "milliseconds"
    assert provider.display_name == "Prometheus at prometheus.monitoring:9090"


def test_a_bad_override_file_stops_the_start_even_without_prometheus(tmp_path: Path) -> None:
    path = tmp_path / "queries.yaml"
    path.write_text("sync: {requests: 'x{a=\"$nope\"}'}\n")
    with pytest.raises(ProviderConfigError, match=r"sync\.requests: unknown placeholder \$nope"):
        provider_for(_settings(None, str(path)))


@pytest.mark.parametrize("url", ["prometheus:9090", "ftp://user:hunter2@prom:21", "http://"])
def test_a_url_that_is_not_http_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(ProviderConfigError) as caught:
        provider_for(_settings(url))
    assert "prometheus_url" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_the_display_name_drops_credentials_and_defaults_the_port() -> None:
    provider = PrometheusProvider("https://admin:s3cret@prom.example.com/prometheus/")
    assert provider.display_name == "Prometheus at prom.example.com:443"
    assert provider._endpoint("/api/v1/query") == "https://prom.example.com:443/prometheus/api/v1/query"
    assert PrometheusProvider("http://prom:9090")._endpoint("/-/ready") == "http://prom:9090/-/ready"
    assert PrometheusProvider("http://[::1]:9090").display_name == "Prometheus at [::1]:9090"


def test_url_credentials_become_a_basic_auth_header_percent_decoded() -> None:
    provider = PrometheusProvider("http://ops%40acme:p%3Ass@prom:9090")
    assert provider._headers == {"Authorization": "Basic b3BzQGFjbWU6cDpzcw=="}  # ops@acme:p:ss
    assert "p%3Ass" not in provider._endpoint("") and "ops" not in provider._endpoint("")
