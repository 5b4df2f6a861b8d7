"""Renderers: one per target (Envoy, Redis, Pub/Sub, Kubernetes), each a pure function of the IR."""
