"""APX contracts: what the operator writes and the dataplane reads, typed, one encoder and decoder each.

Installed as ``apx.contracts``. Imported by the operator's renderers and
appliers (``apx.controllers``) and by the dataplane services
(``apx.dataplane``); it imports nothing of the project and does no I/O, so
both sides can depend on it without depending on each other.

* ``redis_keys``: every Redis key name and prefix, the hash-tag rules, the
  tenant and API-key identifiers used inside keys (the only place a Redis key
  string is built).
* ``documents``: the canonical JSON encoding and content versions of the
  versioned Redis hashes.
* ``rule_set``: the rate-limit rule-set fields (``meta``, ``plan:``,
  ``tenant:``, ``default``, ``route:``) and counter lifetimes.
* ``route_table``: the route-table entries the async gateway serves from, with
  the defaults readers apply to fields an older writer left out.
* ``pubsub_attributes``: the message attributes the gateway publishes and the
  worker reads (request identity, trace context, baggage keys).
* ``headers``: HTTP header names and the Envoy rate-limit domain/descriptor keys.
* ``residency``: which regions a data-residency setting allows.

``apx/controllers/renderers/REDIS_KEYS.md`` describes the Redis side in prose.
"""
