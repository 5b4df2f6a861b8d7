"""The APX rate-limit service (``apx-ratelimit``): Envoy's global rate-limit gRPC API over Redis.

Modules, in call order: ``main`` (console script: flags, logging, SIGTERM),
``server`` (gRPC ``RateLimitService`` and health), ``limiter`` (one decision:
descriptors → rule → one ``EVALSHA`` checking every limit), ``scripts`` (the
Lua), ``leases`` (concurrency slots and prepaid credits for the async gateway
and workers, which see requests end), ``metrics``. The rule sets it reads are
the operator's (``apx/controllers/renderers/REDIS_KEYS.md``), read through
``apx.dataplane.common.rulesets``. README.md in this folder is the short guide.
"""
