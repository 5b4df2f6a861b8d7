#!/usr/bin/env bash
# Creates .venv (if missing) and installs APX with its development extras.
# Called by `make install`, and so by the README's two commands. Idempotent:
# a second run only re-checks that the install is current.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.apx-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[dev]'
    # xds-protos ships an old copy of the opentelemetry.proto modules, and which
    # copy ends up on disk depends on the order pip installs them in; the OTLP
    # exporter needs opentelemetry-proto's own (InstrumentationScope).
    otel_proto="$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
    .venv/bin/python -m pip install --quiet --force-reinstall --no-deps "opentelemetry-proto==$otel_proto"
    touch "$stamp"
fi
# The test support (e2e/: the emulated Kubernetes API, the local stack, the e2e harness)
# is not part of the apx distribution; the development venv imports it from this tree.
purelib="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$PWD" >"$purelib/apx-dev-tree.pth"
