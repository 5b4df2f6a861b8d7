"""kubeemu — the emulated Kubernetes API server of APX's local stack and tests.

No real kube-apiserver can run on the development and CI machines, so the
local stack (``hack/kubeemu-up.sh``), the e2e suites and the operator's
API-level tests talk to this emulator instead; the same suites run unchanged
against a real cluster when ``KUBECONFIG`` points at one.

It is built on kmock 0.8 (by kopf's author). **kmock provides**: the HTTP
serving (``kmock.Server`` over aiohttp), the request model and the routing of
requests to reactions by priority (so tests can still inject faults with the
kmock DSL), the discovery scaffold, ``ResourceInfo``/``ResourcesArray`` for
declared resources, and ``ObjectsArray`` as the object storage
(``emulator.objects``). **This layer adds** what kmock 0.8 lacks to behave like
a real API server for kubectl, the official clients and kopf:
resourceVersion/uid/generation/generateName; 201 on create; PUT with
optimistic concurrency; JSON, merge, strategic-merge (merge plus kubectl's
self-describing directives) and server-side apply (with ``managedFields``);
label and field selectors; pagination; race-free watches from a
resourceVersion with 410 Gone, timeouts and bookmarks; the status
subresource; finalizers and ownerReference garbage collection; namespaces;
CRD registration with schema defaulting, pruning, validation and CEL rules;
server-side tables for ``kubectl get``; bounded memory.

It also publishes the OpenAPI documents of its kinds (:mod:`.openapi`), so
kubectl validates, explains and prints tables as against a real server.

Known differences from a real API server: no authentication or RBAC, no
admission webhooks, no controllers (Deployments never get Pods), JSON only (no
protobuf), strategic merge without Go struct tags, and apply without conflict
detection. See :mod:`.patching` and :mod:`.managed`.

Entry points: ``python -m e2e.kubeemu`` (:mod:`.__main__`),
:func:`.serving.serve` (asyncio), :mod:`.testing` (pytest fixtures).
"""

from .base import WriteOptions
from .emulator import KubeEmulator
from .serving import EmulatorServer, kubeconfig, load_crds, serve, url_of, write_kubeconfig
from .store import Store

__all__ = [
    "EmulatorServer",
    "KubeEmulator",
    "Store",
    "WriteOptions",
    "kubeconfig",
    "load_crds",
    "serve",
    "url_of",
    "write_kubeconfig",
]
