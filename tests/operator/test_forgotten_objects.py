"""What the operator remembers of an object ends with the object: a re-created one starts afresh."""

from __future__ import annotations

import copy

import pytest

from e2e.memory_targets import edited
from tests.operator.test_incremental_pass import _settled

pytestmark = pytest.mark.timeout(120)


@pytest.mark.asyncio
async def test_a_recreated_bundle_does_not_inherit_the_served_versions_of_the_deleted_one() -> None:
    reconciler, kube, _ = await _settled(routes=20, products=2)
    key = next(k for k in sorted(reconciler.objects) if k[0] == "PolicyBundle")
    served = [v["version"] for v in reconciler.objects[key]["status"]["servedVersions"]]
    version = reconciler.objects[key]["spec"]["version"]
    assert version in served

    deleted = reconciler.objects[key]
    reconciler.forget(*key)
    await reconciler.reconcile_once()

    # The same name again: a new object, whose first version has not been served by anyone yet.
    recreated = {k: copy.deepcopy(v) for k, v in deleted.items() if k != "status"}
    recreated["metadata"].update(uid="uid-recreated", resourceVersion=kube.next_version(), generation=1)
    reconciler.observe("PolicyBundle", recreated)
    # A second apply before any pass served the first: nothing to keep as N-1.
    reconciler.observe("PolicyBundle", edited(reconciler, key, kube, version="9.0.0"))
    assert reconciler._policy_history.get(key, {}) == {}
