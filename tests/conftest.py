"""Fixtures shared by the API-level tests: real Redis (and a Redis Cluster), the Pub/Sub emulator, Prometheus.

Each is started lazily (only when a test asks for it) on a free port with its
own data directory, and stopped by PID at the end of the session (Redis,
Pub/Sub) or of the test module (Prometheus instances).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from e2e.services import (
    RedisClusterService,
    Service,
    prometheus_config,
    start_prometheus,
    start_pubsub_emulator,
    start_redis,
    start_redis_cluster,
)


@pytest.fixture(scope="session")
def redis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = start_redis(Path(tmp_path_factory.mktemp("redis")))
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterService]:
    """A real 3-primary Redis Cluster (``redis-server --cluster-enabled yes``); ``.url`` is ``redis+cluster://``."""
    cluster = start_redis_cluster(Path(tmp_path_factory.mktemp("redis-cluster")))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def pubsub_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = start_pubsub_emulator(Path(tmp_path_factory.mktemp("pubsub")))
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def prometheus_scraping(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[Sequence[str]], Service]]:
    """Start a real Prometheus scraping the given loopback ``host:port`` targets every second.

    A factory, so a test module starts the instances it needs (and may stop
    one itself); every instance is stopped by PID when the module ends.
    Prometheus answers ``increase()`` over new series only after 2 to 3 s of scrapes.
    """
    started: list[Service] = []

    def start(targets: Sequence[str]) -> Service:
        service = start_prometheus(Path(tmp_path_factory.mktemp("prometheus")), prometheus_config(targets))
        started.append(service)
        return service

    try:
        yield start
    finally:
        for service in started:
            service.stop()
