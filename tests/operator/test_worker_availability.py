"""How worker Deployments' status turns into an async Route's ``status.workers`` and readiness."""

from __future__ import annotations

from typing import Any

from apx.operator.workers import WorkerAvailability


def _deployment(name: str, track: str, replicas: int, status: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"apx.dev/track": track, "app.kubernetes.io/managed-by": "apx"},
            "annotations": {"apx.dev/route-key": "default/exports"},
        },
        "spec": {"replicas": replicas},
    }
    if status is not None:
        body["status"] = status
    return body


def test_deployment_no_controller_observed_yet_is_unknown_and_does_not_hold_the_route_back() -> None:
    workers = WorkerAvailability()
    assert workers.observe(_deployment("apx-worker-exports-stable", "stable", 2, None))
    summary, waiting = workers.summary("default/exports", ["apx-worker-exports-stable"])
    assert summary == {"stable": {"available": None, "desired": 2}}
    assert waiting is None


def test_observed_deployment_without_available_replicas_holds_the_route_back_until_one_is() -> None:
    workers = WorkerAvailability()
    names = ["apx-worker-exports-stable", "apx-worker-exports-canary"]
    workers.observe(_deployment(names[0], "stable", 2, {"observedGeneration": 1, "availableReplicas": 2}))
    workers.observe(_deployment(names[1], "canary", 1, {"observedGeneration": 1}))  # 0 is omitted
    summary, waiting = workers.summary("default/exports", names)
    assert summary == {"canary": {"available": 0, "desired": 1}, "stable": {"available": 2, "desired": 2}}
    assert waiting is not None and names[1] in waiting and names[0] not in waiting
    # The same state again changes nothing; one available replica lifts the hold.
    assert not workers.observe(_deployment(names[1], "canary", 1, {"observedGeneration": 1}))
    assert workers.observe(
        _deployment(names[1], "canary", 1, {"observedGeneration": 1, "availableReplicas": 1})
    )
    assert workers.summary("default/exports", names)[1] is None
    # A Deployment the Route no longer lists is not counted; a deleted one is forgotten.
    assert workers.summary("default/exports", names[:1])[0] == {"stable": {"available": 2, "desired": 2}}
    assert workers.forget(_deployment(names[1], "canary", 1, None))
    assert "canary" not in workers.summary("default/exports", names)[0]


def test_deployments_that_are_not_workers_are_ignored() -> None:
    workers = WorkerAvailability()
    assert not workers.observe({"metadata": {"name": "apx-operator", "labels": {}}, "spec": {"replicas": 1}})
