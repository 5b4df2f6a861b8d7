"""The worker (``apx-worker``): consumes an async Route's subscriptions and calls its upstream.

One Deployment per Route track (and per dedicated pool), rendered by
``apx.controllers.renderers.kubernetes.workers``, which passes the settings
read by ``config``. ``consumer`` pulls from Pub/Sub with flow control and
batches acknowledgements; ``processor`` runs each message (idempotency by
request id, per-tenant ordering, the upstream call, the result in Redis);
``metrics`` are what the canary analysis queries; ``main`` is the console script.
"""
