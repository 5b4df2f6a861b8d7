"""Appliers: the only code that performs I/O against Kubernetes, Redis and Pub/Sub.

Called by the operator's reconciler (``apx.operator.reconciler``). Each applier
is idempotent and level-triggered: applying the same desired state twice
changes nothing, and re-running after a crash at any point converges.
"""
