# syntax=docker/dockerfile:1.7
#
# tap-controller image for linux/amd64 and linux/arm64:
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t REPO/tap-controller:TAG .
#   docker build -t tap-controller:dev .            # the local platform only
#
# The builder runs on the build machine's own platform (no QEMU) and cross-compiles a static musl
# binary for TARGETARCH with cargo-zigbuild: zig is the C compiler and linker for both musl targets,
# which the C parts of aws-lc-sys and ring need. The final image is distroless static (CA
# certificates, /etc/passwd with the nonroot user, nothing else) running as 65532.

ARG RUST_VERSION=1.95

FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-bookworm AS builder
ARG TARGETARCH
# The same tool versions the repository's CI checks the cross build with.
ARG ZIGLANG_VERSION=0.17.1
ARG CARGO_ZIGBUILD_VERSION=0.24.1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && pip3 install --no-cache-dir --break-system-packages \
        "ziglang==${ZIGLANG_VERSION}" "cargo-zigbuild==${CARGO_ZIGBUILD_VERSION}"
RUN case "${TARGETARCH}" in \
        amd64) echo x86_64-unknown-linux-musl ;; \
        arm64) echo aarch64-unknown-linux-musl ;; \
        *) echo "unsupported TARGETARCH=${TARGETARCH} (amd64 or arm64)" >&2; exit 1 ;; \
    esac > /rust-target \
    && rustup target add "$(cat /rust-target)"

WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=tap-controller-target-${TARGETARCH} \
    TARGET="$(cat /rust-target)" \
    && cargo zigbuild --release -p tap-controller --bin tap-controller --target "${TARGET}" \
    && cp "target/${TARGET}/release/tap-controller" /tap-controller \
    # Static or nothing: a dynamic binary would not start on distroless/static.
    && if readelf -l /tap-controller | grep -q "program interpreter"; then \
        echo "tap-controller is dynamically linked" >&2; exit 1; fi

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="tap-controller" \
      org.opencontainers.image.description="Kubernetes controller for TransactionPipeline (tap.dev/v1alpha1) serverless AWS stacks" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder --chown=65532:65532 /tap-controller /tap-controller
USER 65532:65532
# /metrics, /healthz, /readyz
EXPOSE 8080
ENTRYPOINT ["/tap-controller"]
CMD ["run"]
