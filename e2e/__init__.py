"""End-to-end test infrastructure and suites of APX.

Installed as ``e2e``. The subpackage :mod:`e2e.kubeemu` is the emulated
Kubernetes API server that the local stack (``hack/kubeemu-up.sh``), the e2e
suites and the operator's API-level tests run against when no real cluster is
available; the suites run unchanged against a real cluster when ``KUBECONFIG``
points at one.
"""
