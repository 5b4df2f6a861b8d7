#!/usr/bin/env bash
# The main job (`make demo`): start the local stack (Redis, the Pub/Sub
# emulator, the emulated Kubernetes API, the operator), apply samples/, wait
# until everything is Ready, and show where to look. Safe to run twice;
# `make down` stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

echo "== starting the local stack (every service on 127.0.0.1) =="
$PY -m e2e.stack up
# shellcheck disable=SC1091
source .local/stack/stack.env
export KUBECACHEDIR="$PWD/.local/stack/kubecache"

echo
echo "== applying samples/ (validated by kubectl against the emulated API's OpenAPI documents) =="
# The first PolicyBundle version is applied and served before the second, so
# 1.2.0 stays served as N-1 when 1.3.0 lands (see samples/README.md).
# On a second run the bundle already serves 1.3.0 and 1.2.0: re-applying the
# folder briefly offers 1.2.0 again (refused as a version decrease, nothing
# stops serving) and then 1.3.0, which is what is served.
if ! kubectl get policybundle payments-policy >/dev/null 2>&1; then
    kubectl apply -f samples/03-policybundle-payments-1.2.0.yaml
    $PY -m e2e.stack wait -f samples/03-policybundle-payments-1.2.0.yaml --timeout 60
fi
kubectl apply -f samples/
# Waits for what samples/ applied only: other objects in the namespace play no part.
$PY -m e2e.stack wait -f samples/ --timeout 180

echo
echo "== kubectl get apx -A =="
kubectl get apx -A

echo
echo "== where to look =="
redis_port=$(sed -n 's#.*APX_REDIS_URL=redis://127.0.0.1:\([0-9]*\)/.*#\1#p' .local/stack/stack.env)
$PY - <<PYEOF
import os, redis
from google.cloud import pubsub_v1
r = redis.Redis(port=int("$redis_port"), decode_responses=True)
print("Redis rule sets (redis-cli -p $redis_port):")
for key in sorted(r.scan_iter("apx:rules:*:current")):
    print(f"  {key} -> {r.get(key)}")
table = r.get("apx:routetable:{routes}:current")
print(f"  apx:routetable:{{routes}}:current -> {table}")
publisher = pubsub_v1.PublisherClient()
print(f"Pub/Sub topics (emulator at {os.environ['PUBSUB_EMULATOR_HOST']}):")
for topic in sorted(t.name for t in publisher.list_topics(request={"project": "projects/" + os.environ["APX_PUBSUB_PROJECT"]})):
    print(f"  {topic}")
PYEOF
echo "Envoy snapshot:   kubectl get configmap apx-envoy-snapshot -n apx-system -o yaml"
echo "Worker Deployments and policy artifacts:   kubectl get deployments,configmaps -n default"
echo "Operator log:     .local/stack/operator.log"
echo "Environment:      source .local/stack/stack.env   (KUBECONFIG, APX_REDIS_URL, PUBSUB_EMULATOR_HOST)"
echo "Stop everything:  make down"
