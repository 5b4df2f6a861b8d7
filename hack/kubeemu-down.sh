#!/usr/bin/env bash
# Stops the emulated Kubernetes API server started by hack/kubeemu-up.sh,
# by the PID in .local/kubeemu/pid (or $KUBEEMU_STATE/pid): SIGTERM, then
# SIGKILL after 10 s.
set -euo pipefail
cd "$(dirname "$0")/.."
state="${KUBEEMU_STATE:-.local/kubeemu}"
if [ ! -f "$state/pid" ]; then
    echo "kubeemu-down: not running (no $state/pid)" >&2
    exit 0
fi
pid="$(cat "$state/pid")"
if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "kubeemu-down: pid $pid ignored SIGTERM; killing it" >&2
        kill -KILL "$pid"
    fi
fi
rm -f "$state/pid"
echo "kubeemu stopped (pid $pid)" >&2
