"""Names of every derived object: Envoy clusters, Redis keys, Pub/Sub topics, Kubernetes objects.

One module so the translator (status summaries), the renderers and the
appliers agree on names without re-deriving them. Pure. What the dataplane
reads too (Redis keys, header names) is defined in ``apx.contracts`` and
re-exported here; the dataplane imports the contracts, never this module.

Length limits are enforced here: a name that would be too long keeps a
readable prefix and ends with a short hash of the full name, so it stays
unique and stable. The builders are memoised (bounded), being pure.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

from apx.contracts import headers, redis_keys

PUBSUB_NAME_MAX = 255
K8S_NAME_MAX = 63
# Name builders are called tens of thousands of times per pass with a few
# thousand distinct inputs (every topic carries its product's and route's
# labels): cached, a pass does the work once and holds one string per name.
NAME_CACHE_SIZE = 16384

_PUBSUB_ILLEGAL = re.compile(r"[^A-Za-z0-9\-_.~+%]")
_K8S_ILLEGAL = re.compile(r"[^a-z0-9-]")


def short_hash(text: str, length: int = 8) -> str:
    """A stable hex digest prefix used to keep long names unique."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _fit(name: str, limit: int) -> str:
    if len(name) <= limit:
        return name
    suffix = short_hash(name)
    return f"{name[: limit - len(suffix) - 1].rstrip('-.')}-{suffix}"


@lru_cache(maxsize=NAME_CACHE_SIZE)
def k8s_name(*parts: str, limit: int = K8S_NAME_MAX) -> str:
    """A DNS-1123 label built from parts (lower-cased, illegal characters replaced)."""
    raw = "-".join(p for p in parts if p)
    cleaned = _K8S_ILLEGAL.sub("-", raw.lower()).strip("-")
    return _fit(cleaned, limit).strip("-")


@lru_cache(maxsize=NAME_CACHE_SIZE)
def pubsub_name(*parts: str) -> str:
    """A legal Pub/Sub topic/subscription id: starts with a letter, 3-255 chars, never `goog…`."""
    cleaned = _PUBSUB_ILLEGAL.sub("-", "-".join(p for p in parts if p))
    if not cleaned[:1].isalpha() or cleaned.lower().startswith("goog"):
        cleaned = f"apx-{cleaned}"
    return _fit(cleaned, PUBSUB_NAME_MAX)


# --- Envoy -----------------------------------------------------------------

LISTENER_NAME = "apx-http"
ROUTE_CONFIG_NAME = "apx-routes"
# Header names and the rate-limit domain are shared with the dataplane: defined in the contracts.
PLAN_HEADER = headers.PLAN_HEADER
POLICY_VERSION_HEADER = headers.POLICY_VERSION_HEADER
PRODUCT_HEADER = headers.PRODUCT_HEADER
RATE_LIMIT_DOMAIN = headers.RATE_LIMIT_DOMAIN
REQUEST_ID_HEADER = headers.REQUEST_ID_HEADER
ROUTE_HEADER = headers.ROUTE_HEADER
TENANT_HEADER = headers.TENANT_HEADER
TRACK_HEADER = headers.TRACK_HEADER
RATE_LIMIT_CLUSTER = "apx-ratelimit"
ASYNC_GATEWAY_CLUSTER = "apx-gateway"


def service_cluster(namespace: str, service: str, port: int) -> str:
    """Envoy cluster for a Service backend (shared by every route that uses it)."""
    return f"svc/{namespace}/{service}:{port}"


def url_cluster(scheme: str, host: str, port: int) -> str:
    """Envoy cluster for a URL backend."""
    return f"url/{scheme}/{host}:{port}"


def track_cluster(namespace: str, route: str, track: str) -> str:
    """Envoy cluster of one track of a sync canary Route (its own copy of the track's backend cluster)."""
    return f"track/{namespace}/{route}/{track}"


def track_stat_name(namespace: str, route: str, track: str) -> str:
    """Stat name (``alt_stat_name``) of ``track_cluster``: the ``envoy_cluster_name`` Prometheus sees.

    Envoy's Prometheus tag extraction takes the cluster name up to the first
    dot of ``cluster.<name>.<stat>``, and Envoy turns ``:`` in stat names into
    ``_``, so the name has neither, nor the cluster name's ``/``:
    ``<namespace>_<route>_<track>``. Namespaces and Route names are DNS labels
    (no ``.``, no ``_``), so the mapping is one-to-one.
    """
    return f"{namespace}_{route}_{track}"


def envoy_route_name(namespace: str, route: str) -> str:
    return f"{namespace}/{route}"


def virtual_host_name(host: str) -> str:
    return f"vh/{host}"


def jwks_cluster(scheme: str, host: str, port: int) -> str:
    """Envoy cluster that fetches JSON Web Key Sets from one host (shared by every JWT provider there)."""
    return f"jwks/{scheme}/{host}:{port}"


def jwt_provider(bundle_key: str, jwt_digest: str) -> str:
    """JWT provider of a PolicyBundle's JWT settings; versions with identical settings share it."""
    return f"{bundle_key}/jwt-{jwt_digest[:10]}"


# --- Redis -------------------------------------------------------------------
# Redis key names are part of the operator/dataplane contract and are built only in
# ``apx.contracts.redis_keys`` (hash-tag rules there); re-exported so the operator finds
# every name in this module.

REDIS_PREFIX = redis_keys.REDIS_PREFIX
ROUTE_TABLE_TAG = redis_keys.ROUTE_TABLE_TAG
api_key_table_key = redis_keys.api_key_table_key
counter_key = redis_keys.counter_key
counter_tag = redis_keys.counter_tag
product_counters_pattern = redis_keys.product_counters_pattern
product_tag = redis_keys.product_tag
route_table_current_key = redis_keys.route_table_current_key
route_table_tag = redis_keys.route_table_tag
route_table_key = redis_keys.route_table_key
route_table_version_prefix = redis_keys.route_table_version_prefix
route_table_versions_key = redis_keys.route_table_versions_key
ruleset_current_key = redis_keys.ruleset_current_key
ruleset_key = redis_keys.ruleset_key
ruleset_version_prefix = redis_keys.ruleset_version_prefix
ruleset_versions_key = redis_keys.ruleset_versions_key


# --- Pub/Sub -----------------------------------------------------------------


def request_topic(
    namespace: str, product: str, route: str, region: str, track: str = "stable", tenant: str | None = None
) -> str:
    """Request topic of one route in one region, per track (and per tenant for namespace isolation)."""
    parts = ["apx", namespace, product, route, region]
    if tenant is not None:
        parts += ["t", tenant]
    if track != "stable":
        parts.append(track)
    return pubsub_name(*parts)


def dead_letter_topic(topic: str) -> str:
    return _fit(f"{topic}.dlq", PUBSUB_NAME_MAX)


def worker_subscription(topic: str) -> str:
    return _fit(f"{topic}.workers", PUBSUB_NAME_MAX)


def dead_letter_subscription(topic: str) -> str:
    return _fit(f"{topic}.dlq.inspect", PUBSUB_NAME_MAX)


# --- Kubernetes --------------------------------------------------------------


def worker_deployment(route: str, track: str, pool: str | None = None) -> str:
    """Deployment of a route's worker; ``pool`` names a dedicated plan's pool."""
    return k8s_name("apx-worker", route, pool or "", track)


def envoy_snapshot_configmap(instance: str = "") -> str:
    """The index ConfigMap of the Envoy snapshot (version, and the parts holding the files).

    ``instance`` names an operator instance (several may share an operator
    namespace): ``apx-envoy-snapshot.<instance>``. The default instance keeps
    ``apx-envoy-snapshot``. Instance names are DNS labels (no ``.``), so no
    instance's names can equal another's or the default's parts; every name
    still starts with ``apx-envoy-snapshot``, the prefix readers list by. The
    ConfigMaps also carry the label ``apx.dev/instance`` (named instances only).
    """
    return f"apx-envoy-snapshot.{instance}" if instance else "apx-envoy-snapshot"


def envoy_snapshot_part_prefix(instance: str = "") -> str:
    """What every part name of an instance's snapshot starts with (and no other instance's does)."""
    return f"{envoy_snapshot_configmap(instance)}." if instance else "apx-envoy-snapshot-"


def envoy_snapshot_part_configmap(index: int, instance: str = "") -> str:
    """Part ``index`` (0, 1, …) of the Envoy snapshot: slices of its files, at most ~768 KiB each."""
    return f"{envoy_snapshot_part_prefix(instance)}{index}"


def envoy_snapshot_content_part_configmap(digest: str, instance: str = "") -> str:
    """A part of a large Envoy snapshot, named by a digest of what it holds (16 hex digits).

    Never rewritten in place: a change writes a part under a new name, then the
    index, then deletes the part it replaced (``ENVOY_SNAPSHOT.md``).
    """
    return f"{envoy_snapshot_part_prefix(instance)}{digest[:16]}"


def policy_artifact_configmap(bundle: str, version: str, digest: str) -> str:
    """Immutable ConfigMap holding one compiled policy artifact."""
    hex_digest = digest.split(":", 1)[-1]
    return k8s_name("apx-policy", bundle, version.replace(".", "-").replace("+", "-"), hex_digest[:10])


_GCP_LABEL_ILLEGAL = re.compile(r"[^a-z0-9_-]")
_K8S_LABEL_ILLEGAL = re.compile(r"[^A-Za-z0-9_.-]")


@lru_cache(maxsize=NAME_CACHE_SIZE)
def gcp_label_value(text: str) -> str:
    """A legal Google Cloud label value: lowercase ``[a-z0-9_-]``, at most 63 characters.

    ``/`` (as in ``namespace/name``) becomes ``_``: DNS labels never contain
    ``_``, so the namespace/name boundary stays unambiguous.
    """
    cleaned = _GCP_LABEL_ILLEGAL.sub("-", text.lower().replace("/", "_"))
    return _fit(cleaned, 63)


@lru_cache(maxsize=NAME_CACHE_SIZE)
def k8s_label_value(text: str) -> str:
    """A legal Kubernetes label value: ``[A-Za-z0-9_.-]``, alphanumeric at both ends, at most 63 chars."""
    cleaned = _K8S_LABEL_ILLEGAL.sub("_", text)
    return _fit(cleaned, K8S_NAME_MAX).strip("_.-")


def dataplane_configmap() -> str:
    """ConfigMap (per namespace with async Routes) with the Pub/Sub project and optional emulator host."""
    return "apx-dataplane"


def dataplane_secret() -> str:
    """Secret (per namespace with async Routes) holding the Redis URL workers store results in."""
    return "apx-dataplane"
