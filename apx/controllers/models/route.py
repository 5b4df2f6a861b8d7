"""The Route resource: how requests reach a backend, synchronously or through Pub/Sub.

Read by the translator (``apx.controllers.translate``), the CRD generator and,
through the IR, by every renderer. A Route points at a Product (who may call
how much) and at one version of a PolicyBundle (auth, authz, transforms), and
optionally carries a ``canary`` block that the canary controller walks through
step by step. The controller's progress lives in ``status.canary``, never in
the spec, so GitOps tools see no drift.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .common import (
    DNS_LABEL_MESSAGE,
    DNS_LABEL_PATTERN,
    PATH_MESSAGE,
    PATH_PATTERN,
    ApxModel,
    Condition,
    DeletionPolicy,
    Duration,
    HeaderName,
    HttpMethod,
    LocalObjectReference,
    SemVer,
    cel,
    cel_rules,
    duration_ms,
    matching,
    shared_default,
    when_durations_valid,
)
from .quantity import parse_quantity

RouteMode = Literal["sync", "async"]
RetryOn = Literal[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
]

# The port alternatives spell out 1-65535: a port of 0 or above 65535 can never match a request.
PORT_PATTERN = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
HOST_PATTERN = (
    r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*(:" + PORT_PATTERN + r")?$"
)
HOST_MESSAGE = (
    "must be a lowercase host name such as api.example.com or *.example.com, "
    "optionally with a port from 1 to 65535 (api.example.com:8443)"
)
URL_PATTERN = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"
URL_MESSAGE = (
    "must be an http or https URL with a host, an optional port and an optional path, "
    "such as https://payments.example.com/v1, and no query string (?) or fragment (#)"
)
IMAGE_PATTERN = r"^\S+$"
IMAGE_MESSAGE = (
    "must be a container image reference without spaces, such as registry.example.com/team/app:1.2.0"
)
CPU_PATTERN = r"^[0-9]+(\.[0-9]+)?m?$"
CPU_MESSAGE = "must be a CPU quantity such as 500m, 1 or 1.5"
MEMORY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"
MEMORY_MESSAGE = "must be a memory quantity such as 128Mi, 1Gi or 500M"

ONE_HEADER_MATCHER_MESSAGE = "set exactly one of exact, prefix, regex or present"
PATH_XOR_PREFIX_MESSAGE = "set either path or pathPrefix, not both"
ONE_BACKEND_MESSAGE = "set exactly one of service or url"
ASYNC_NEEDS_WORKER_MESSAGE = "mode async needs a worker"
SYNC_FORBIDS_WORKER_MESSAGE = "worker is only used when mode is async"
STEPS_INCREASING_MESSAGE = "canary steps must be strictly increasing"
CANARY_CHANGES_SOMETHING_MESSAGE = "canary must change something: set backend, worker or policyVersion"
SYNC_CANARY_WORKER_MESSAGE = "canary.worker is only used when mode is async"
MAX_BACKOFF_MESSAGE = "maximumBackoff must not be shorter than minimumBackoff"
WINDOW_COVERS_CHECK_INTERVAL_MESSAGE = "window must not be shorter than checkInterval"
CHECK_INTERVAL_MINIMUM_MESSAGE = "checkInterval must be at least 1s"
CANARY_SAME_BACKEND_MESSAGE = (
    "canary.backend must differ from backend: a canary of the same backend changes nothing"
)
CANARY_SAME_IMAGE_MESSAGE = (
    "canary.worker.image must differ from worker.image: a canary of the same image changes nothing"
)
CANARY_SAME_POLICY_MESSAGE = (
    "canary.policyVersion must differ from policyRef.version: a canary of the same policy changes nothing"
)
SYNC_FORBIDS_ASYNC_MESSAGE = "async settings are only used when mode is async"
TIMEOUT_POSITIVE_MESSAGE = "timeout must be greater than 0s (Envoy reads 0s as no timeout at all)"
PER_TRY_WITHIN_TIMEOUT_MESSAGE = "retries.perTryTimeout must not be longer than timeout"
INTERVAL_POSITIVE_MESSAGE = "interval must be greater than 0s"
RESULT_TTL_MINIMUM_MESSAGE = "resultTtl must be at least 1s"
REQUESTS_WITHIN_LIMITS_MESSAGE = "must not be above the limit (the API server refuses such a Deployment)"


class PolicyReference(ApxModel):
    """A PolicyBundle by name and the version this Route is pinned to."""

    name: Annotated[
        str, matching(DNS_LABEL_PATTERN, DNS_LABEL_MESSAGE, max_length=63, description="PolicyBundle name.")
    ]
    version: SemVer = Field(
        description="Pinned version; must be the bundle's current (N) or previous (N-1) version."
    )


class HeaderMatch(ApxModel):
    """Match a request header; exactly one matcher must be set."""

    model_config = ApxModel.model_config | {
        "json_schema_extra": cel_rules(
            cel(
                "[has(self.exact), has(self.prefix), has(self.regex), has(self.present)]"
                ".filter(x, x).size() == 1",
                ONE_HEADER_MATCHER_MESSAGE,
            )
        )
    }

    name: HeaderName = Field(description="Header name (case-insensitive).")
    exact: str | None = Field(default=None, max_length=1024, description="Header value equals this.")
    prefix: str | None = Field(default=None, max_length=1024, description="Header value starts with this.")
    regex: str | None = Field(
        default=None, max_length=1024, description="Header value matches this RE2 regex."
    )
    present: bool | None = Field(default=None, description="Header is present (true) or absent (false).")

    @model_validator(mode="after")
    def _one_matcher(self) -> HeaderMatch:
        chosen = [v is not None for v in (self.exact, self.prefix, self.regex, self.present)]
        if sum(chosen) != 1:
            raise ValueError(ONE_HEADER_MATCHER_MESSAGE)
        return self


class RouteMatch(ApxModel):
    """Which requests this Route takes."""

    model_config = ApxModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("!(has(self.path) && has(self.pathPrefix))", PATH_XOR_PREFIX_MESSAGE, ".path")
        )
    }

    hosts: list[Annotated[str, matching(HOST_PATTERN, HOST_MESSAGE, max_length=253)]] = Field(
        min_length=1, max_length=16, description="Host names (`api.example.com`, `*.example.com`)."
    )
    path_prefix: Annotated[str, matching(PATH_PATTERN, PATH_MESSAGE, max_length=1024)] | None = Field(
        default=None, description="Path prefix; `/` when neither path nor pathPrefix is set."
    )
    path: Annotated[str, matching(PATH_PATTERN, PATH_MESSAGE, max_length=1024)] | None = Field(
        default=None, description="Exact path."
    )
    methods: list[HttpMethod] = Field(default_factory=list, description="Allowed methods; empty means any.")
    headers: list[HeaderMatch] = Field(
        default_factory=list, max_length=16, description="Header matchers (all must match)."
    )

    @model_validator(mode="after")
    def _path_xor_prefix(self) -> RouteMatch:
        if self.path is not None and self.path_prefix is not None:
            raise ValueError(f"path: {PATH_XOR_PREFIX_MESSAGE}")
        return self

    @property
    def effective_path_prefix(self) -> str | None:
        if self.path is not None:
            return None
        return self.path_prefix or "/"


class ServiceBackend(ApxModel):
    """A Kubernetes Service in the Route's namespace."""

    name: Annotated[
        str, matching(DNS_LABEL_PATTERN, DNS_LABEL_MESSAGE, max_length=63, description="Service name.")
    ]
    port: int = Field(ge=1, le=65535, description="Service port.")


class Backend(ApxModel):
    """Where requests go: a Service in the namespace or a URL."""

    model_config = ApxModel.model_config | {
        "json_schema_extra": cel_rules(cel("has(self.service) != has(self.url)", ONE_BACKEND_MESSAGE))
    }

    service: ServiceBackend | None = Field(default=None, description="A Service in the Route's namespace.")
    # No query string or fragment: Envoy forwards the request's own query, and
    # a silently dropped one would be a surprise.
    url: Annotated[str, matching(URL_PATTERN, URL_MESSAGE, max_length=2048)] | None = Field(
        default=None, description="An http(s) URL outside the cluster (scheme, host, optional port and path)."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Backend:
        if (self.service is None) == (self.url is None):
            raise ValueError(ONE_BACKEND_MESSAGE)
        return self


class ResourceList(ApxModel):
    """CPU and memory quantities."""

    cpu: Annotated[str, matching(CPU_PATTERN, CPU_MESSAGE, max_length=16)] | None = None
    memory: Annotated[str, matching(MEMORY_PATTERN, MEMORY_MESSAGE, max_length=16)] | None = None


class Resources(ApxModel):
    """Container resource requests and limits."""

    requests: ResourceList = Field(
        default_factory=shared_default(ResourceList, cpu="100m", memory="128Mi"), description="Requests."
    )
    limits: ResourceList = Field(
        default_factory=shared_default(ResourceList, memory="256Mi"), description="Limits."
    )

    # Quantities cannot be compared in CEL before Kubernetes 1.29 (the
    # ``quantity`` library), so this rule lives here only: ``apx translate``,
    # the operator and the admission webhook refuse it, the CRD schema cannot.
    @model_validator(mode="after")
    def _requests_within_limits(self) -> Resources:
        for name in ("cpu", "memory"):
            request, limit = getattr(self.requests, name), getattr(self.limits, name)
            if request is not None and limit is not None and parse_quantity(request) > parse_quantity(limit):
                raise ValueError(
                    f"requests.{name}: {request!r} {REQUESTS_WITHIN_LIMITS_MESSAGE} {limit!r} "
                    f"of limits.{name}"
                )
        return self


class Worker(ApxModel):
    """The worker Deployment that consumes an async Route's subscription."""

    image: Annotated[str, matching(IMAGE_PATTERN, IMAGE_MESSAGE, min_length=1, max_length=512)] = Field(
        description="Container image."
    )
    replicas: int = Field(default=2, ge=0, le=500, description="Worker replicas (stable track).")
    resources: Resources = Field(
        default_factory=shared_default(Resources), description="Container resources."
    )
    max_outstanding_messages: int = Field(
        default=100, ge=1, le=10_000, description="Flow control: messages a replica holds at once."
    )


class CanaryWorker(ApxModel):
    """The canary track's worker: a new image, optionally its own replica count."""

    image: Annotated[str, matching(IMAGE_PATTERN, IMAGE_MESSAGE, min_length=1, max_length=512)] = Field(
        description="Canary image."
    )
    replicas: int | None = Field(
        default=None, ge=0, le=500, description="Canary replicas; default: the stable count."
    )


def _default_retry_on() -> list[RetryOn]:
    return ["5xx", "reset", "connect-failure"]


class RetryBackoff(ApxModel):
    """Exponential back-off between retries."""

    base_interval: Duration = Field(default="25ms", description="First back-off.")
    max_interval: Duration = Field(default="250ms", description="Largest back-off.")


class Retries(ApxModel):
    """Retry policy for sync routes (Envoy retry policy)."""

    attempts: int = Field(
        default=2, ge=0, le=10, description="Retries after the first try; 0 disables retries."
    )
    per_try_timeout: Duration | None = Field(default=None, description="Timeout of each try.")
    retry_on: list[RetryOn] = Field(
        default_factory=_default_retry_on,
        description="Conditions that trigger a retry.",
    )
    retriable_status_codes: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=list, description="Status codes retried when retryOn has `retriable-status-codes`."
    )
    backoff: RetryBackoff = Field(
        default_factory=shared_default(RetryBackoff), description="Back-off between retries."
    )


class AsyncDelivery(ApxModel):
    """Pub/Sub delivery settings of an async Route."""

    model_config = ApxModel.model_config | {
        "json_schema_extra": cel_rules(
            cel(
                when_durations_valid(
                    "duration(self.maximumBackoff) >= duration(self.minimumBackoff)",
                    "self.maximumBackoff",
                    "self.minimumBackoff",
                ),
                MAX_BACKOFF_MESSAGE,
                ".maximumBackoff",
            ),
            # The gateway keeps results this long and the worker writes them
            # with the same TTL (both read the route table); 0 would make
            # every result vanish before a client could read it.
            cel(
                "!has(self.resultTtl) || "
                + when_durations_valid("duration(self.resultTtl) >= duration('1s')", "self.resultTtl"),
                RESULT_TTL_MINIMUM_MESSAGE,
                ".resultTtl",
                got="self.resultTtl",
            ),
        )
    }

    max_delivery_attempts: int = Field(
        default=5,
        ge=5,
        le=100,
        description="Deliveries before a message goes to the dead-letter topic (5-100).",
    )
    minimum_backoff: Duration = Field(default="10s", description="Smallest redelivery delay (0s-600s).")
    maximum_backoff: Duration = Field(default="600s", description="Largest redelivery delay (0s-600s).")
    ack_deadline_seconds: int = Field(
        default=60, ge=10, le=600, description="Ack deadline of the subscription."
    )
    ordering: bool = Field(
        default=True, description="Deliver each tenant's messages in order (ordering key = tenant)."
    )
    backlog_limit: int = Field(
        default=10_000, ge=1, le=100_000_000, description="Backlog above which the gateway answers 503."
    )
    result_ttl: Duration = Field(default="1h", description="How long results stay readable at /status/{id}.")
    message_retention: Duration = Field(
        default="168h", description="How long unacked messages are kept (10m-744h)."
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> AsyncDelivery:
        if duration_ms(self.maximum_backoff) < duration_ms(self.minimum_backoff):
            raise ValueError(f"maximumBackoff: {MAX_BACKOFF_MESSAGE}")
        for name, value in (
            ("minimumBackoff", self.minimum_backoff),
            ("maximumBackoff", self.maximum_backoff),
        ):
            if duration_ms(value) > 600_000:
                raise ValueError(f"{name}: must be at most 600s (Pub/Sub limit)")
        if duration_ms(self.result_ttl) < 1000:
            raise ValueError(f"resultTtl: {RESULT_TTL_MINIMUM_MESSAGE} (got {self.result_ttl!r})")
        retention = duration_ms(self.message_retention)
        if not 600_000 <= retention <= 744 * 3_600_000:
            raise ValueError("messageRetention: must be between 10m and 744h (Pub/Sub limit)")
        return self


class Analysis(ApxModel):
    """How a canary step is judged: canary metrics against thresholds and against stable."""

    model_config = ApxModel.model_config | {
        "json_schema_extra": cel_rules(
            cel(
                when_durations_valid(
                    "duration(self.window) >= duration(self.checkInterval)",
                    "self.window",
                    "self.checkInterval",
                ),
                WINDOW_COVERS_CHECK_INTERVAL_MESSAGE,
                ".window",
            ),
            # A zero interval would make the operator check in a busy loop.
            cel(
                when_durations_valid("duration(self.checkInterval) >= duration('1s')", "self.checkInterval"),
                CHECK_INTERVAL_MINIMUM_MESSAGE,
                ".checkInterval",
            ),
        )
    }

    check_interval: Duration = Field(
        default="10s",
        description=(
            "How often the analysis runs (at least 1s). A canary that keeps failing is rolled back "
            "after failureThreshold consecutive failed checks, i.e. within about "
            "failureThreshold * checkInterval."
        ),
    )
    window: Duration = Field(
        default="1m",
        description=(
            "Length of the sliding window each check judges; canary and stable are compared over "
            "the same window. Must not be shorter than checkInterval."
        ),
    )
    min_success_rate: float = Field(
        default=0.99, ge=0.0, le=1.0, description="Lowest acceptable canary success rate."
    )
    max_latency_p99_ms: int = Field(
        default=500, ge=1, le=600_000, description="Highest acceptable canary p99 latency."
    )
    max_success_rate_drop: float = Field(
        default=0.01, ge=0.0, le=1.0, description="Largest allowed drop of canary success rate below stable."
    )
    max_latency_ratio: float = Field(
        default=1.5, ge=1.0, le=100.0, description="Largest allowed canary p99 / stable p99."
    )
    min_samples: int = Field(
        default=100,
        ge=1,
        le=10_000_000,
        description="Requests a track needs in a window before it is judged.",
    )
    failure_threshold: int = Field(
        default=2, ge=1, le=100, description="Consecutive failed checks that trigger a rollback."
    )
    max_no_data_checks: int = Field(
        default=5,
        ge=1,
        le=1000,
        description=(
            "Consecutive checks without enough samples before the canary halts (never counted as failure)."
        ),
    )

    @model_validator(mode="after")
    def _window_covers_check_interval(self) -> Analysis:
        if duration_ms(self.window) < duration_ms(self.check_interval):
            raise ValueError(f"window: {WINDOW_COVERS_CHECK_INTERVAL_MESSAGE}")
        if duration_ms(self.check_interval) < 1000:
            raise ValueError(f"checkInterval: {CHECK_INTERVAL_MINIMUM_MESSAGE}")
        return self


class Stickiness(ApxModel):
    """Keep each tenant on one track while the canary runs."""

    by: Literal["tenant", "none"] = Field(
        default="tenant", description="`tenant` (sticky) or `none` (per request)."
    )


class Canary(ApxModel):
    """A progressive rollout of a new backend, worker image and/or policy version."""

    model_config = ApxModel.model_config | {
        "json_schema_extra": cel_rules(
            cel(
                "has(self.backend) || has(self.worker) || has(self.policyVersion)",
                CANARY_CHANGES_SOMETHING_MESSAGE,
            ),
            cel(
                "self.steps.isSorted() && self.steps.all(s, self.steps.exists_one(t, t == s))",
                STEPS_INCREASING_MESSAGE,
                ".steps",
            ),
            # A zero interval would promote on the first healthy check.
            cel(
                when_durations_valid("duration(self.interval) > duration('0s')", "self.interval"),
                INTERVAL_POSITIVE_MESSAGE,
                ".interval",
                got="self.interval",
            ),
        )
    }

    backend: Backend | None = Field(default=None, description="New backend for the canary track.")
    worker: CanaryWorker | None = Field(
        default=None, description="New worker image for the canary track (async)."
    )
    policy_version: SemVer | None = Field(
        default=None,
        description="New PolicyBundle version for the canary track (N while stable stays on N-1).",
    )
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=lambda: [10, 25, 50, 100],
        min_length=1,
        max_length=20,
        description="Canary traffic weights in percent, strictly increasing, each at most 100.",
    )
    interval: Duration = Field(
        default="1m",
        description=(
            "How long a step must stay healthy (every analysis check passing) before the next step; "
            "the last step healthy this long promotes the canary."
        ),
    )
    analysis: Analysis = Field(
        default_factory=shared_default(Analysis), description="Promotion and rollback criteria."
    )
    stickiness: Stickiness = Field(
        default_factory=shared_default(Stickiness), description="Tenant stickiness."
    )

    @model_validator(mode="after")
    def _rules(self) -> Canary:
        if self.backend is None and self.worker is None and self.policy_version is None:
            raise ValueError(CANARY_CHANGES_SOMETHING_MESSAGE)
        for previous, current in zip(self.steps, self.steps[1:], strict=False):
            if current <= previous:
                raise ValueError(f"steps: {STEPS_INCREASING_MESSAGE}: {self.steps}")
        if duration_ms(self.interval) <= 0:
            raise ValueError(f"interval: {INTERVAL_POSITIVE_MESSAGE} (got {self.interval!r})")
        return self


class RouteSpec(ApxModel):
    """Desired state of a Route."""

    model_config = ApxModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("self.mode != 'async' || has(self.worker)", ASYNC_NEEDS_WORKER_MESSAGE, ".worker"),
            cel("self.mode == 'async' || !has(self.worker)", SYNC_FORBIDS_WORKER_MESSAGE, ".worker"),
            cel(
                "self.mode == 'async' || !has(self.canary) || !has(self.canary.worker)",
                SYNC_CANARY_WORKER_MESSAGE,
                ".canary.worker",
            ),
            cel("self.mode == 'async' || !has(self.async)", SYNC_FORBIDS_ASYNC_MESSAGE, ".async"),
            cel(
                when_durations_valid("duration(self.timeout) > duration('0s')", "self.timeout"),
                TIMEOUT_POSITIVE_MESSAGE,
                ".timeout",
                got="self.timeout",
            ),
            cel(
                "!has(self.retries) || !has(self.retries.perTryTimeout) || "
                + when_durations_valid(
                    "duration(self.retries.perTryTimeout) <= duration(self.timeout)",
                    "self.retries.perTryTimeout",
                    "self.timeout",
                ),
                PER_TRY_WITHIN_TIMEOUT_MESSAGE,
                ".retries.perTryTimeout",
                got="self.retries.perTryTimeout + \"', timeout '\" + self.timeout",
            ),
            cel(
                "!has(self.canary) || !has(self.canary.backend) || self.canary.backend != self.backend",
                CANARY_SAME_BACKEND_MESSAGE,
                ".canary.backend",
            ),
            cel(
                "!has(self.canary) || !has(self.canary.worker) || !has(self.worker) || "
                "self.canary.worker.image != self.worker.image",
                CANARY_SAME_IMAGE_MESSAGE,
                ".canary.worker.image",
                got="self.canary.worker.image",
            ),
            cel(
                "!has(self.canary) || !has(self.canary.policyVersion) || "
                "self.canary.policyVersion != self.policyRef.version",
                CANARY_SAME_POLICY_MESSAGE,
                ".canary.policyVersion",
                got="self.canary.policyVersion",
            ),
        )
    }

    product_ref: LocalObjectReference = Field(
        description="The Product this Route belongs to (same namespace)."
    )
    policy_ref: PolicyReference = Field(
        description="The PolicyBundle and pinned version applied to requests."
    )
    match: RouteMatch = Field(description="Which requests this Route takes.")
    mode: RouteMode = Field(
        default="sync", description="`sync`: proxied; `async`: queued to Pub/Sub, 202 + status."
    )
    backend: Backend = Field(description="Upstream that serves requests (sync) or that workers call (async).")
    worker: Worker | None = Field(default=None, description="Worker Deployment for async routes.")
    timeout: Duration = Field(
        default="30s", description="Request timeout (sync) or upstream call timeout (async)."
    )
    retries: Retries = Field(
        default_factory=shared_default(Retries), description="Retry policy for sync routes."
    )
    async_: AsyncDelivery = Field(
        default_factory=shared_default(AsyncDelivery),
        alias="async",
        description="Pub/Sub delivery settings for async routes.",
    )
    canary: Canary | None = Field(default=None, description="Progressive rollout of a new version.")
    deletion_policy: DeletionPolicy = Field(
        default="Retain",
        description=(
            "`Retain` (default) keeps Pub/Sub topics and results when the Route is deleted; "
            "`Delete` removes them."
        ),
    )

    @model_validator(mode="after")
    def _mode_rules(self) -> RouteSpec:
        if self.mode == "async" and self.worker is None:
            raise ValueError(f"worker: {ASYNC_NEEDS_WORKER_MESSAGE}")
        if self.mode == "sync" and self.worker is not None:
            raise ValueError(f"worker: {SYNC_FORBIDS_WORKER_MESSAGE}")
        if self.mode == "sync" and self.canary is not None and self.canary.worker is not None:
            raise ValueError(f"canary.worker: {SYNC_CANARY_WORKER_MESSAGE}")
        if self.mode == "sync" and "async_" in self.model_fields_set:
            raise ValueError(f"async: {SYNC_FORBIDS_ASYNC_MESSAGE}")
        if duration_ms(self.timeout) <= 0:
            raise ValueError(f"timeout: {TIMEOUT_POSITIVE_MESSAGE} (got {self.timeout!r})")
        per_try = self.retries.per_try_timeout
        if per_try is not None and duration_ms(per_try) > duration_ms(self.timeout):
            raise ValueError(
                f"retries.perTryTimeout: {PER_TRY_WITHIN_TIMEOUT_MESSAGE} "
                f"(got {per_try!r}, timeout {self.timeout!r})"
            )
        self._canary_changes_something()
        return self

    def _canary_changes_something(self) -> None:
        canary = self.canary
        if canary is None:
            return
        if canary.backend is not None and canary.backend == self.backend:
            raise ValueError(f"canary.backend: {CANARY_SAME_BACKEND_MESSAGE}")
        if canary.worker is not None and self.worker is not None and canary.worker.image == self.worker.image:
            raise ValueError(
                f"canary.worker.image: {CANARY_SAME_IMAGE_MESSAGE} (got {canary.worker.image!r})"
            )
        if canary.policy_version is not None and canary.policy_version == self.policy_ref.version:
            raise ValueError(
                f"canary.policyVersion: {CANARY_SAME_POLICY_MESSAGE} (got {canary.policy_version!r})"
            )


CanaryPhase = Literal["Pending", "Progressing", "Halted", "Promoted", "RolledBack"]
DecisionResult = Literal["advance", "hold", "promote", "rollback", "no-data", "halt", "manual"]
RolloutAction = Literal["promote", "abort", "retry", "pause", "resume"]


class TrackMetrics(ApxModel):
    """Metric values of one track in one analysis window."""

    model_config = ApxModel.model_config | {"extra": "allow"}

    requests: float | None = Field(default=None, description="Requests in the window.")
    success_rate: float | None = Field(default=None, description="Share of requests that succeeded (0-1).")
    latency_p99_ms: float | None = Field(
        default=None, description="p99 latency in milliseconds (from the latency histogram)."
    )


class CanaryDecision(ApxModel):
    """The last analysis decision and the numbers behind it."""

    model_config = ApxModel.model_config | {"extra": "allow"}

    result: DecisionResult = Field(
        description="`advance`, `hold`, `promote`, `rollback`, `no-data`, `halt` or `manual`."
    )
    reason: str = Field(default="", description="Why, with the numbers.")
    at: str | None = Field(default=None, description="When (RFC 3339).")
    canary: TrackMetrics | None = Field(default=None, description="The canary track's numbers.")
    stable: TrackMetrics | None = Field(default=None, description="The stable track's numbers.")


class CanaryRequest(ApxModel):
    """A person's instruction from `apx rollout`, written by the CLI; handled once per `id`."""

    model_config = ApxModel.model_config | {"extra": "allow"}

    action: RolloutAction = Field(description="`promote`, `abort`, `retry`, `pause` or `resume`.")
    id: str = Field(min_length=1, max_length=128, description="Unique id; a request is handled once.")
    full: bool = Field(default=False, description="`promote` only: straight to 100 %.")
    at: str | None = Field(default=None, description="When it was requested (RFC 3339).")


class CanaryCondition(ApxModel):
    """A condition of the canary itself (kept apart from the Route's own conditions)."""

    model_config = ApxModel.model_config | {"extra": "allow"}

    type: str = Field(description="`MetricsAvailable`, `Halted`, `Frozen` or `Paused`.")
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(default="", description="One CamelCase word for machines.")
    message: str = Field(default="", description="What happened.")
    last_transition_time: str | None = Field(
        default=None, description="When `status` last changed (RFC 3339)."
    )


class CanaryStatus(ApxModel):
    """Progress of the canary controller; the translator reads ``weight`` from here.

    Written by the operator's canary loop from ``apx.controllers.canary.decide``;
    every field has a default so statuses written by older versions parse.
    """

    model_config = ApxModel.model_config | {"extra": "allow"}

    phase: CanaryPhase = Field(
        default="Pending", description="`Pending`, `Progressing`, `Halted`, `Promoted` or `RolledBack`."
    )
    revision: str | None = Field(
        default=None, description="Hash of the canary block this progress belongs to."
    )
    step: int = Field(default=0, ge=0, description="Index of the current step.")
    weight: int = Field(default=0, ge=0, le=100, description="Current canary traffic weight in percent.")
    step_started_at: str | None = Field(default=None, description="When the current step began (RFC 3339).")
    healthy_since: str | None = Field(
        default=None,
        description="Since when every check of this step has passed (RFC 3339); null when not healthy.",
    )
    last_check_at: str | None = Field(
        default=None, description="When the last analysis check ran (RFC 3339)."
    )
    failed_checks: int = Field(default=0, ge=0, description="Consecutive failed checks.")
    no_data_checks: int = Field(default=0, ge=0, description="Consecutive checks without enough samples.")
    checks: int = Field(default=0, ge=0, description="Checks run in this revision.")
    paused: bool = Field(default=False, description="No step advances (automatic rollback still protects).")
    frozen: bool = Field(
        default=False,
        description="Too many automated rollbacks: no automatic change until `apx rollout resume`/`retry`.",
    )
    rollbacks: list[str] = Field(
        default_factory=list,
        max_length=10,
        description="Times of automated rollbacks (RFC 3339), newest last, across revisions.",
    )
    request: CanaryRequest | None = Field(
        default=None, description="The latest `apx rollout` request (written by the CLI only)."
    )
    handled_request: str | None = Field(default=None, description="Id of the last request handled.")
    last_decision: CanaryDecision | None = Field(
        default=None, description="The last decision and its numbers."
    )
    conditions: list[CanaryCondition] = Field(
        default_factory=list, description="`MetricsAvailable`, `Halted`, `Frozen`, `Paused`."
    )
    last_transition_time: str | None = Field(
        default=None, description="When `phase` last changed (RFC 3339)."
    )


class WorkerReplicas(ApxModel):
    """Worker replicas of one track of an async Route, summed over its Deployments (dedicated pools too)."""

    # Unknown keys are ignored when a status is parsed (a newer operator may add
    # some) but not preserved by the schema: the shape is exactly what is declared.
    model_config = ApxModel.model_config | {"extra": "ignore"}

    # The operator sends ``null`` while no controller has observed a Deployment
    # yet (``apx.operator.workers``): unknown, which is not 0. A merge-patch
    # removes a key sent as null, so the stored status has no ``available`` then;
    # the schema is not ``nullable`` because no null is ever stored.
    available: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Available replicas (the Deployments' `status.availableReplicas`); "
            "absent while no controller has observed a Deployment yet (unknown, not 0)."
        ),
    )
    desired: int | None = Field(
        default=None, ge=0, description="Desired replicas (the Deployments' `spec.replicas`)."
    )


class RouteWorkers(ApxModel):
    """Available and desired worker replicas of an async Route, per track.

    Written by the operator from the worker Deployments it watches. The Route
    is Ready only when every worker Deployment with desired replicas has an
    available one; otherwise it is `Reconciling` with reason `WorkersUnavailable`.
    """

    model_config = ApxModel.model_config | {"extra": "ignore"}

    stable: WorkerReplicas | None = Field(default=None, description="Workers of the stable track.")
    canary: WorkerReplicas | None = Field(
        default=None, description="Workers of the canary track (a canary with a new worker image)."
    )


class RouteStatus(ApxModel):
    """Observed state of a Route, written by the operator only."""

    model_config = ApxModel.model_config | {"extra": "allow"}

    observed_generation: int | None = Field(default=None, description="Generation last reconciled.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, Reconciling, Stalled.")
    message: str | None = Field(default=None, description="Human summary; names the field at fault.")
    reason: str | None = Field(default=None, description="Reason of the Ready condition (printer column).")
    policy_artifact: str | None = Field(
        default=None, description="`name@version@sha256:…` applied to stable."
    )
    canary_policy_artifact: str | None = Field(
        default=None,
        description=(
            "`name@version@sha256:…` applied to the canary track; "
            "absent when the canary keeps the stable policy."
        ),
    )
    canary_weight: int | None = Field(default=None, description="Canary weight in percent (printer column).")
    canary: CanaryStatus | None = None
    topics: list[str] = Field(default_factory=list, description="Pub/Sub request topics (async Routes).")
    subscriptions: list[str] = Field(
        default_factory=list, description="Pub/Sub subscriptions the workers consume (async Routes)."
    )
    deployments: list[str] = Field(
        default_factory=list, description="Names of the worker Deployments (async Routes)."
    )
    workers: RouteWorkers | None = Field(
        default=None,
        description=(
            "Available and desired worker replicas per track (async Routes); "
            "the Route is Ready only when every worker Deployment has an available replica."
        ),
    )
    rule_set_version: str | None = Field(
        default=None, description="Version (content hash) of the live Redis rule set of the Product."
    )
