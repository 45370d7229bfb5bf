# syntax=docker/dockerfile:1
#
# Portico's container image: one static (musl) binary on distroless, running as uid 65532.
# The Helm chart (charts/portico) deploys it as ghcr.io/portico-dev/portico:<appVersion>.
#
# Build from the repository root (Docker 23+ or any BuildKit builder; the cache mounts below
# need BuildKit):
#
#   docker build -t ghcr.io/portico-dev/portico:0.1.0 .
#   docker run --rm ghcr.io/portico-dev/portico:0.1.0 version
#
# Multi-arch (each platform builds natively, under QEMU where needed):
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     -t ghcr.io/portico-dev/portico:0.1.0 --push .
#
# Then install the chart with that image (it is the chart's default when the tag equals the
# chart's appVersion):
#
#   helm install portico charts/portico -n portico-system --create-namespace \
#     --set image.repository=ghcr.io/portico-dev/portico --set image.tag=0.1.0
#
# Build arguments: RUST_VERSION (builder toolchain, default 1.95; the workspace needs >= 1.90),
# RUNTIME_IMAGE (default distroless static, non-root; `scratch` works too, the binary needs no
# files: TLS uses rustls with the ring provider and the in-cluster CA, no OpenSSL, no libc).

ARG RUST_VERSION=1.95
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

# ---------------------------------------------------------------------------------------------
# Builder: Debian with the musl C toolchain (ring compiles a little C and assembly).
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
ARG TARGETARCH
# `portico version` facts; the context has no .git (.dockerignore), so pass them:
#   --build-arg PORTICO_GIT_COMMIT=$(git rev-parse --short=12 HEAD) \
#   --build-arg SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)
ARG PORTICO_GIT_COMMIT=""
ARG SOURCE_DATE_EPOCH=""
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
# The Rust target for the platform being built (amd64 unless buildx says otherwise).
RUN case "${TARGETARCH:-amd64}" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported TARGETARCH ${TARGETARCH}" >&2; exit 1 ;; \
    esac > /rust-target \
 && rustup target add "$(cat /rust-target)"
# ring's C and assembly go through musl's compiler wrapper on either architecture.
ENV CC_x86_64_unknown_linux_musl=musl-gcc \
    CC_aarch64_unknown_linux_musl=musl-gcc
WORKDIR /src
# The whole workspace (filtered by .dockerignore): Cargo needs every member's manifest and the
# declared test and bench targets to resolve it, even when it builds the one binary.
COPY . .
# --locked: exactly Cargo.lock's versions. Registry and target directories are cache mounts, so a
# source change rebuilds Portico's crates only. The binary must be static (no program
# interpreter) and must run on its own.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eux; \
    target="$(cat /rust-target)"; \
    cargo build --release --locked --target "$target" --bin portico; \
    install -D -m 0755 "target/$target/release/portico" /out/portico; \
    if readelf -lW /out/portico | grep -q 'program interpreter'; then \
      echo "portico is dynamically linked" >&2; exit 1; \
    fi; \
    /out/portico version

# ---------------------------------------------------------------------------------------------
# Runtime: no shell, no package manager; non-root (65532 is distroless's `nonroot`), numeric so
# the kubelet can check runAsNonRoot.
FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="portico" \
      org.opencontainers.image.description="Kubernetes Service control plane: EndpointSlice/Endpoints controllers, ClusterIP/NodePort allocation, admission webhook" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/portico"
COPY --from=builder --chown=0:0 /out/portico /usr/local/bin/portico
USER 65532:65532
# 9443: admission webhook (HTTPS); 8080: /metrics, /healthz, /readyz (HTTP).
EXPOSE 9443 8080
ENTRYPOINT ["/usr/local/bin/portico"]
CMD ["run"]
