"""Metrics providers of the canary analysis (I/O): one file per backend, picked by ``provider_for``.

Called by the operator's canary loop (``apx.operator.canary``) at start. Each
provider implements ``apx.controllers.canary.types.MetricsProvider``. Only
Prometheus exists today (``prometheus.py``); another backend is one more file
and one more branch here.
"""

from __future__ import annotations

from typing import Protocol

from ..canary.types import MetricsProvider
from .prometheus import DEFAULT_TIMEOUT_SECONDS, PrometheusProvider
from .queries import QueryConfigError, load_queries

__all__ = ["DISABLED_MESSAGE", "ProviderConfigError", "ProviderSettings", "provider_for"]

# Shown in status (and logged) when no backend is configured.
DISABLED_MESSAGE = (
    "canary analysis is disabled: no metrics backend is configured "
    "(set --prometheus-url or APX_PROMETHEUS_URL); canaries hold their current weight"
)


class ProviderSettings(Protocol):
    """The settings ``provider_for`` reads (``apx.operator.settings.OperatorSettings`` has them)."""

    @property
    def prometheus_url(self) -> str | None: ...

    @property
    def canary_queries(self) -> str | None: ...


class ProviderConfigError(ValueError):
    """The metrics settings are unusable; the message is one line naming the setting at fault."""


def provider_for(
    settings: ProviderSettings, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
) -> MetricsProvider | None:
    """The configured provider, or None when canary analysis is disabled (see ``DISABLED_MESSAGE``).

    Validates everything at start (the query override file is read and checked
    here) and raises ``ProviderConfigError`` with a one-line message, so a bad
    setting stops the operator with a clear error instead of failing at the
    first check.
    """
    try:
        queries = load_queries(settings.canary_queries)
    except QueryConfigError as exc:
        raise ProviderConfigError(str(exc)) from None
    if not settings.prometheus_url:
        return None
    try:
        return PrometheusProvider(settings.prometheus_url, queries, timeout_seconds=timeout_seconds)
    except ValueError as exc:
        raise ProviderConfigError(f"prometheus_url (--prometheus-url, APX_PROMETHEUS_URL): {exc}") from None
