# syntax=docker/dockerfile:1
#
# todeviced as a container image: a static binary on distroless, run as the
# image's unprivileged "nonroot" user.
#
#   docker build --build-arg VERSION="$(git describe --always --dirty)" -t todeviced .
#
# No HEALTHCHECK: the final image has no shell, curl or wget to run one (that
# is the point of distroless). Orchestrators probe the metrics listener over
# HTTP instead: /healthz for liveness, /readyz for readiness (Kubernetes
# httpGet probes on port 9108; Kubernetes ignores Docker's HEALTHCHECK anyway).

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
# Modules first, so this layer is rebuilt only when go.mod or go.sum change.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
# CGO_ENABLED=0: a static binary that needs no libc in the final image.
# -trimpath: no build-machine paths in the binary; -s -w: no symbol tables.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/todeviced ./cmd/todeviced
# The state directory (signing key) must exist, owned by the runtime user,
# and the final image has no shell to create it with.
RUN mkdir -p /out/data

# static-debian12 holds CA certificates (federation over TLS), tzdata and an
# /etc/passwd with nonroot = uid/gid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/todeviced /todeviced
COPY --from=build --chown=65532:65532 /out/data /data
WORKDIR /data
USER 65532:65532
# Inside a container the loopback defaults would be unreachable; the signing
# key lives in the volume so it survives a new container.
ENV TODEVICED_LISTEN=0.0.0.0:8008 \
    TODEVICED_METRICS_LISTEN=0.0.0.0:9108 \
    TODEVICED_SIGNING_KEY=/data/signing.key
VOLUME ["/data"]
# 8008: client, federation and internal API; 9108: /metrics, /healthz, /readyz.
EXPOSE 8008 9108
ENTRYPOINT ["/todeviced"]
