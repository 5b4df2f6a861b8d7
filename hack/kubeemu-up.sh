#!/usr/bin/env bash
# Starts the emulated Kubernetes API server (e2e.kubeemu, built on kmock)
# in the background for the local stack: no real kube-apiserver can run on
# these machines. State lives in .local/kubeemu/ (pid file, log, kubeconfig;
# $KUBEEMU_STATE overrides the folder, e.g. for tests).
# Port: $KUBEEMU_PORT, or a free one. CRDs in crds/ are registered at start
# (override with $KUBEEMU_CRDS). Prints `export KUBECONFIG=...` on success.
# kubectl validates against the emulator's OpenAPI documents (no --validate=false).
# Stop it with hack/kubeemu-down.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
state="${KUBEEMU_STATE:-.local/kubeemu}"
mkdir -p "$state"
if [ ! -x .venv/bin/python ]; then
    echo "kubeemu-up: .venv is missing; run hack/install.sh first" >&2
    exit 1
fi
if [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
    echo "kubeemu-up: already running (pid $(cat "$state/pid"))" >&2
    echo "export KUBECONFIG=$(cd "$state" && pwd)/kubeconfig"
    exit 0
fi
port="${KUBEEMU_PORT:-}"
if [ -z "$port" ]; then
    port="$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
fi
crds="${KUBEEMU_CRDS:-crds}"
args=(--port "$port" --host 127.0.0.1 --kubeconfig "$state/kubeconfig")
if [ -d "$crds" ] && compgen -G "$crds/*.y*ml" >/dev/null; then
    args+=(--crds "$crds")
fi
rm -f "$state/kubeconfig"
nohup .venv/bin/python -m e2e.kubeemu "${args[@]}" >"$state/log" 2>&1 &
echo $! >"$state/pid"
for _ in $(seq 1 100); do
    if .venv/bin/python - "$port" <<'PY' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/version", timeout=1).read()
PY
        if [ -f "$state/kubeconfig" ]; then
            echo "kubeemu listening on http://127.0.0.1:$port (pid $(cat "$state/pid"), log $state/log)" >&2
            echo "export KUBECONFIG=$(cd "$state" && pwd)/kubeconfig"
            exit 0
        fi
    fi
    if ! kill -0 "$(cat "$state/pid")" 2>/dev/null; then
        echo "kubeemu-up: the server exited; its log:" >&2
        cat "$state/log" >&2
        rm -f "$state/pid"
        exit 1
    fi
    sleep 0.1
done
echo "kubeemu-up: no answer on port $port within 10 s; see $state/log" >&2
exit 1
