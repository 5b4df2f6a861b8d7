"""The intermediate representation: one frozen, fully resolved snapshot.

Produced by ``apx.controllers.translate.translate`` and consumed by every
renderer under ``apx.controllers.renderers``. Nothing in the IR points back at
raw dicts: references are resolved (a Route holds its Product and its policy
artifacts), defaults are applied, durations are milliseconds and the canary
controller's current weight is already folded into the tracks.

Plain frozen dataclasses with slots: the translator builds tens of thousands
of these for a large cluster and they must be cheap to create and to hash.
Policy content is kept as the (frozen) pydantic ``PolicyBundleSpec`` the
artifact was compiled from, so renderers read one typed source of truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .models.policy import PolicyBundleSpec
from .models.route import Analysis


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """Identity of a source object, enough for an ownerReference."""

    kind: str
    namespace: str
    name: str
    uid: str
    api_version: str = "apx.dev/v1alpha1"
    # ``namespace/name``, computed once: every pass reads it for every object many times.
    key: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.namespace}/{self.name}")


@dataclass(frozen=True, slots=True)
class PlanIR:
    """A plan with every default applied."""

    name: str
    tier: str
    requests_per_second: int
    burst: int
    api_key_requests_per_second: int | None
    api_key_burst: int | None
    quota_requests: int | None
    quota_period_seconds: int | None
    concurrency: int | None
    isolation: str
    credits_cost: int | None


@dataclass(frozen=True, slots=True)
class TenantIR:
    """A known tenant with its effective limits (plan limits, then overrides)."""

    id: str
    plan: str
    tier: str
    requests_per_second: int
    burst: int
    quota_requests: int | None
    quota_period_seconds: int | None
    region: str | None


@dataclass(frozen=True, slots=True)
class ProductIR:
    """A resolved Product."""

    ref: ObjectRef
    residency: str
    regions: tuple[str, ...]
    plans: tuple[PlanIR, ...]
    default_plan: str
    tenants: tuple[TenantIR, ...]
    log_sample_rate: float
    deletion_policy: str

    @property
    def key(self) -> str:
        return self.ref.key

    def plan(self, name: str) -> PlanIR:
        for plan in self.plans:
            if plan.name == name:
                return plan
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class PolicyIR:
    """One compiled, immutable PolicyBundle version (an artifact)."""

    bundle: ObjectRef
    version: str
    digest: str  # "sha256:<hex>" of the canonical compiled policy
    artifact: str  # "<name>@<version>@sha256:<hex>"
    compat: str
    spec: PolicyBundleSpec
    current: bool  # True for N, False for N-1

    @property
    def key(self) -> str:
        return f"{self.bundle.key}@{self.version}"


@dataclass(frozen=True, slots=True)
class HeaderMatchIR:
    """A header matcher; ``kind`` is exact|prefix|regex|present."""

    name: str
    kind: str
    value: str
    present: bool = True


@dataclass(frozen=True, slots=True)
class MatchIR:
    hosts: tuple[str, ...]
    path: str | None
    path_prefix: str | None
    methods: tuple[str, ...]
    headers: tuple[HeaderMatchIR, ...]


@dataclass(frozen=True, slots=True)
class BackendIR:
    """An upstream. ``cluster`` is the Envoy cluster name, shared by routes with the same upstream."""

    cluster: str
    kind: str  # "service" | "url"
    host: str
    port: int
    tls: bool
    path_prefix: str  # path part of a URL backend ("" for services)


@dataclass(frozen=True, slots=True)
class WorkerIR:
    image: str
    replicas: int
    requests: tuple[tuple[str, str], ...]
    limits: tuple[tuple[str, str], ...]
    max_outstanding_messages: int


@dataclass(frozen=True, slots=True)
class TrackIR:
    """The stable or canary track of a route, with its traffic weight in percent."""

    name: str  # "stable" | "canary"
    weight: int
    backend: BackendIR
    policy: PolicyIR
    worker: WorkerIR | None


@dataclass(frozen=True, slots=True)
class RetriesIR:
    attempts: int
    per_try_timeout_ms: int | None
    retry_on: tuple[str, ...]
    retriable_status_codes: tuple[int, ...]
    base_interval_ms: int
    max_interval_ms: int


@dataclass(frozen=True, slots=True)
class AsyncIR:
    max_delivery_attempts: int
    minimum_backoff_ms: int
    maximum_backoff_ms: int
    ack_deadline_seconds: int
    ordering: bool
    backlog_limit: int
    result_ttl_ms: int
    message_retention_ms: int


@dataclass(frozen=True, slots=True)
class CanaryIR:
    """The canary block plus the controller's progress read from the Route's status."""

    revision: str  # hash of the canary block; progress for another revision is ignored
    steps: tuple[int, ...]
    interval_ms: int
    analysis: Analysis
    sticky_by_tenant: bool
    phase: str
    step: int
    weight: int


@dataclass(frozen=True, slots=True)
class RouteIR:
    """A resolved Route: product, tracks with weights, and everything a renderer needs."""

    ref: ObjectRef
    product: ProductIR
    mode: str
    match: MatchIR
    timeout_ms: int
    retries: RetriesIR
    delivery: AsyncIR
    stable: TrackIR
    canary: TrackIR | None
    canary_state: CanaryIR | None
    deletion_policy: str
    # ``metadata.creationTimestamp`` (RFC 3339) when known, else "".
    created: str = ""

    @property
    def key(self) -> str:
        return self.ref.key

    @property
    def age_order(self) -> tuple[str, str]:
        """Older first, then namespace/name: who wins between Routes that match alike.

        The one rule for both the translator (which Route keeps an identical
        match) and the Envoy route order (which of two equally specific
        overlapping Routes Envoy tries first). Without a creationTimestamp
        (offline input) the name decides.
        """
        return (self.created, self.key)

    @property
    def tracks(self) -> tuple[TrackIR, ...]:
        return (self.stable,) if self.canary is None else (self.stable, self.canary)


@dataclass(frozen=True, slots=True)
class IR:
    """The whole snapshot, sorted by key so rendering is order-independent."""

    products: tuple[ProductIR, ...] = ()
    policies: tuple[PolicyIR, ...] = ()
    routes: tuple[RouteIR, ...] = ()
    routes_by_product: dict[str, tuple[RouteIR, ...]] = field(default_factory=dict, compare=False, hash=False)
