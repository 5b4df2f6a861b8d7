"""The canary controller's pure core: types, statistics and the decision state machine.

Used by the operator's canary loop (``apx.operator.canary``), the metrics
providers (``apx.controllers.providers``), the ``apx rollout`` CLI and the
benchmarks. Imports no client, no clock and no framework: time comes in as
epoch seconds.
"""
