"""Session fixtures shared by the API-level and e2e tests: real Redis and the real Pub/Sub emulator.

Each is started lazily (only when a test asks for it) on a free port with its
own data directory, and stopped by PID at the end of the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from apx.e2e.services import Service, start_pubsub_emulator, start_redis


@pytest.fixture(scope="session")
def redis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = start_redis(Path(tmp_path_factory.mktemp("redis")))
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def pubsub_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = start_pubsub_emulator(Path(tmp_path_factory.mktemp("pubsub")))
    try:
        yield service
    finally:
        service.stop()
