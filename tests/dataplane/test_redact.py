"""The one redaction function: URL passwords, secret query values and Authorization values become ***.

Examples pin the shapes the services and the operator meet (Redis URLs,
emulator hosts, OTLP and Prometheus URLs, error texts that embed them, log
lines); a property test plants random passwords and checks none survives.
"""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apx.dataplane.common.jsonlog import JsonFormatter
from apx.dataplane.common.redact import RedactingFormatter, redact_document, redact_text, redact_url


@pytest.mark.parametrize(
    ("given_url", "shown"),
    [
        ("redis://user:secret@host:6379/0", "redis://user:***@host:6379/0"),
        ("rediss://:secret@host:6380/1", "rediss://:***@host:6380/1"),
        ("redis://default:s3cr%40t@10.0.0.1:6379", "redis://default:***@10.0.0.1:6379"),
        ("apx:secret@127.0.0.1:8085", "apx:***@127.0.0.1:8085"),
        ("http://otel:secret@collector:4318/v1/traces", "http://otel:***@collector:4318/v1/traces"),
        ("http://collector:4318/v1/traces?token=secret&x=1", "http://collector:4318/v1/traces?token=***&x=1"),
        ("https://prom/api?password=secret", "https://prom/api?password=***"),
        ("https://tokenonly@host/path", "https://***@host/path"),
        ("redis://redis.apx-system.svc:6379/0", "redis://redis.apx-system.svc:6379/0"),
        ("127.0.0.1:8085", "127.0.0.1:8085"),
    ],
)
def test_urls_keep_everything_but_the_secret(given_url: str, shown: str) -> None:
    assert redact_url(given_url) == shown
    assert redact_url(shown) == shown  # idempotent


def test_secrets_inside_free_text_and_headers_are_masked() -> None:
    text = (
        "Redis at redis://apx:hunter2@db:6379/0 unreachable: Error 111; "
        "PUBSUB_EMULATOR_HOST=apx:hunter2@127.0.0.1:8085; "
        "{'Authorization': 'Bearer hunter2'} authorization: Basic aHVudGVyMg=="
    )
    shown = redact_text(text)
    assert "hunter2" not in shown and "aHVudGVyMg" not in shown
    assert "redis://apx:***@db:6379/0 unreachable: Error 111" in shown
    assert redact_text("plain text, 12:30, a@b.c and ratio=3") == "plain text, 12:30, a@b.c and ratio=3"
    assert redact_url(None) == ""


def test_documents_are_redacted_string_by_string() -> None:
    status = {
        "message": "Redis at redis://u:hunter2@db/0 unreachable",
        "conditions": [{"type": "Ready", "message": "x?token=hunter2"}],
        "observedGeneration": 3,
    }
    shown = redact_document(status)
    assert "hunter2" not in json.dumps(shown)
    assert shown["observedGeneration"] == 3 and shown["conditions"][0]["type"] == "Ready"


def test_the_log_formatter_redacts_messages_extras_and_tracebacks() -> None:
    formatter = RedactingFormatter(JsonFormatter("apx-test"))
    try:
        raise ConnectionError("cannot reach redis://u:hunter2@db/0")
    except ConnectionError as exc:
        record = logging.LogRecord("apx", logging.ERROR, __file__, 1, "failed: %s", (exc,), None)
        record.exc_info = (type(exc), exc, exc.__traceback__)
    record.redis = "rediss://:hunter2@db:6380/0"
    line = formatter.format(record)
    assert "hunter2" not in line
    assert json.loads(line)["redis"] == "rediss://:***@db:6380/0"


@given(
    user=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", max_size=12),
    password=st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~!$&'()*+,;=%@",
        min_size=6,
        max_size=40,
    ),
    scheme=st.sampled_from(["redis", "rediss", "http", "https"]),
    around=st.sampled_from(["{}", "error: {} unreachable", '{{"url": "{}"}}', "x={} y"]),
)
def test_no_planted_password_survives(user: str, password: str, scheme: str, around: str) -> None:
    url = f"{scheme}://{user}:{password}@host.example:6379/0"
    assert password not in redact_text(around.format(url)).replace(f"{user}:***@", "")
