# syntax=docker/dockerfile:1
# The APX image: one image for apx-operator, apx-ratelimit, apx-gateway, apx-worker and apx.
# Built by `make image` (hack/image-build.sh); see hack/IMAGE.md.
#
# BASE_IMAGE is any Debian bookworm image with python3 and python3-venv. The default,
# apx-base:bookworm, is bootstrapped locally from Debian packages by hack/image-build.sh
# (mmdebstrap), for hosts that cannot pull images; with a registry at hand, e.g.
#   --build-arg BASE_IMAGE=python:3.11-slim-bookworm
# works the same (the venv points at the base's python3, identical in both stages).
ARG BASE_IMAGE=apx-base:bookworm

FROM ${BASE_IMAGE} AS build
# Optional, for the build stage only (pip reads them from the environment; they never reach
# the final image): a package index mirror, and a CA bundle for hosts behind a TLS-inspecting
# proxy (hack/image-build.sh mounts $PIP_CERT read-only and passes its path here).
ARG PIP_INDEX_URL
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY hack/image-install.sh hack/
COPY apx/ apx/
RUN bash hack/image-install.sh /src /opt/apx

FROM ${BASE_IMAGE}
ARG APX_VERSION=0.1.0
LABEL org.opencontainers.image.title="apx" \
      org.opencontainers.image.description="APX operator and dataplane services (apx-operator, apx-ratelimit, apx-gateway, apx-worker)" \
      org.opencontainers.image.version="${APX_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/apx /opt/apx
# Read-only root filesystem: bytecode is compiled at build time and never written, HOME
# and the working directory are /tmp (the chart mounts an emptyDir there).
ENV PATH=/opt/apx/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /tmp
# The distroless "nonroot" numbers; the chart's securityContext.runAsUser/runAsGroup match.
USER 65532:65532
CMD ["apx-operator"]
