#!/usr/bin/env bash
# Install APX and its dependencies into a self-contained virtual environment.
#
# These are the install steps of the image: the Dockerfile's build stage runs
# `hack/image-install.sh /src /opt/apx`, and tests/unit/test_image.py runs the same
# script into a temporary directory and calls every console script from it.
#
# Steps: build the apx wheel and a wheel of every dependency (from a copy of the
# sources, so the source tree gets no build/ or *.egg-info), install only from those
# wheels (--no-index: what was built is what gets installed), drop pip (not needed at
# run time), then compile bytecode once, in parallel (hence pip's --no-compile): the
# image runs with a read-only root filesystem and PYTHONDONTWRITEBYTECODE=1.
set -euo pipefail

src="${1:?usage: hack/image-install.sh SOURCE_DIR VENV_DIR}"
venv="${2:?usage: hack/image-install.sh SOURCE_DIR VENV_DIR}"
python="${PYTHON:-python3}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Only what the distribution is made of (apx/, see pyproject.toml), nothing else.
mkdir -p "$work/src"
(cd "$src" && tar --exclude=__pycache__ -cf - pyproject.toml README.md apx) |
    tar -xf - -C "$work/src"

"$python" -m venv "$venv"
"$venv/bin/python" -m pip wheel --quiet --wheel-dir "$work/wheels" "$work/src"
"$venv/bin/python" -m pip install --quiet --no-compile --no-index --find-links "$work/wheels" apx
# xds-protos ships an old copy of the opentelemetry.proto modules; the OTLP exporter
# needs opentelemetry-proto's own, whatever order pip installed the two in.
"$venv/bin/python" -m pip install --quiet --no-compile --no-index --find-links "$work/wheels" \
    --force-reinstall --no-deps opentelemetry-proto
"$venv/bin/python" -m pip uninstall --quiet --yes pip
"$venv/bin/python" -m compileall -q -j 0 "$venv/lib"
"$venv/bin/apx" --version
