#!/usr/bin/env bash
# Build the APX image from the Dockerfile. Called by `make image`; see hack/IMAGE.md.
#
#   IMAGE        repository (default apx/apx, the chart's image.repository)
#   IMAGE_TAG    tag (default: Chart.yaml's appVersion, the chart's default image.tag)
#   BASE_IMAGE   base of both stages (default apx-base:bookworm). When it is the default and
#                absent, it is bootstrapped here from Debian packages with mmdebstrap and
#                imported (no image registry needed). Set it to e.g. python:3.11-slim-bookworm
#                where a registry is reachable.
#   BUILDER      buildah (default when installed: --isolation chroot, which needs no
#                cgroups or user namespaces), podman or docker.
#   PIP_CERT, PIP_INDEX_URL   passed to the build stage's pip only (see the Dockerfile).
set -euo pipefail
cd "$(dirname "$0")/.."

app_version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' charts/apx/Chart.yaml)"
image="${IMAGE:-apx/apx}"
tag="${IMAGE_TAG:-$app_version}"
base="${BASE_IMAGE:-apx-base:bookworm}"
builder="${BUILDER:-$(command -v buildah >/dev/null && echo buildah || echo podman)}"

# buildah shares podman's image store; podman (or docker) can tell and import images.
store="$([ "$builder" = docker ] && echo docker || echo podman)"
if [ "$base" = "apx-base:bookworm" ] && ! "$store" image inspect "$base" >/dev/null 2>&1; then
    echo "bootstrapping $base from Debian bookworm packages (mmdebstrap)" >&2
    mmdebstrap --variant=apt --include=python3,python3-venv,ca-certificates bookworm - |
        "$store" import - "$base"
fi

case "$builder" in
buildah) build=(buildah bud --isolation chroot --layers) ;;
podman) build=(podman build) ;;
docker) build=(docker build) ;;
*) echo "unknown BUILDER $builder (buildah, podman or docker)" >&2; exit 2 ;;
esac
# A CA bundle the build stage's pip must trust (a TLS-inspecting proxy): mounted for RUN
# steps only, so it is not part of any layer. buildah and podman only.
if [ -n "${PIP_CERT:-}" ] && [ "$builder" != docker ]; then
    build+=(--volume "$(realpath "$PIP_CERT"):/run/apx-build-ca.crt:ro" --build-arg PIP_CERT=/run/apx-build-ca.crt)
fi
if [ -n "${PIP_INDEX_URL:-}" ]; then
    build+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
fi
"${build[@]}" --build-arg "BASE_IMAGE=$base" --build-arg "APX_VERSION=$app_version" \
    -t "$image:$tag" -f Dockerfile .
echo "built $image:$tag" >&2
