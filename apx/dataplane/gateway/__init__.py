"""The async gateway (``apx-gateway``): takes requests of ``mode: async`` Routes and queues them on Pub/Sub.

Envoy sends it every request of an async Route. It authenticates the caller
with the Route's policy, picks the canary track and the region's topic,
enforces residency and backpressure, publishes the request and answers
``202 Accepted`` with ``Location: /status/{request_id}``; ``/status`` reads
what the worker (``apx.dataplane.worker``) writes to Redis. Modules:
``app`` (HTTP handlers), ``identity`` (JWT / API key), ``split`` (canary
track), ``placement`` (region, topic, residency), ``publisher`` (Pub/Sub),
``metrics``, ``config`` and ``main`` (the console script).
"""
