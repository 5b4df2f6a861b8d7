"""Helpers shared by the dataplane services (rate-limit service, async gateway, worker).

``jsonlog`` sets up JSON-lines logging, ``shutdown`` turns SIGTERM/SIGINT into
an ``asyncio.Event``, ``rulesets`` reads the operator's versioned rate-limit
rule sets and the API-key table from Redis with the caching the contract
allows (``apx/controllers/renderers/REDIS_KEYS.md``). Kept small on purpose: a
helper belongs here only when two services use it.
"""
