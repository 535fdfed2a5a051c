# syntax=docker/dockerfile:1
# Orca's container image: a release build, then a small Debian runtime running as a non-root
# user. Build and run: README "Container image"; docs/operations.md "Container image".
# hack/check-deploy.sh checks this file against conf/ and deploy/kubernetes/ (no Docker engine
# runs there, so it is not built by the test suite).

# The toolchain of rust-toolchain.toml, exactly.
FROM rust:1.95.0-bookworm AS build
# The image's toolchain; rust-toolchain.toml would also ask for rustfmt and clippy.
ENV RUSTUP_TOOLCHAIN=1.95.0
# pingora's zlib-ng (libz-ng-sys) is built with cmake. Debian's package versions are not
# pinned (hadolint DL3008): the point release's security updates replace them.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and the target dir between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin orca \
    && cp target/release/orca /orca

# bookworm-slim rather than distroless: the Kubernetes preStop hook runs `sleep`. The binary
# needs only glibc and libgcc_s; ca-certificates for HTTPS origins and stores.
FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/cache/orca \
    && chown 65532:65532 /var/cache/orca
COPY --from=build /orca /usr/local/bin/orca
# The shipped configuration is the default; mount your own over /etc/orca (Kubernetes: the
# ConfigMap orca-config).
COPY conf/orca.yaml conf/pingora.yaml /etc/orca/
# Numeric, so Kubernetes' runAsNonRoot can verify it without a passwd entry.
USER 65532:65532
# conf/orca.yaml's cachestore.fs.root (./data/cache) is relative to this directory.
WORKDIR /var/cache/orca
# The only paths Orca writes: the fs cache and /tmp (pingora.yaml's pid_file and
# upgrade_sock). Everything else may be read-only (docker run --read-only).
VOLUME ["/var/cache/orca", "/tmp"]
# edge (clients), internal (peers' fills), ops (/healthz /readyz /metrics): listen.*.
EXPOSE 8443 8444 8442
ENTRYPOINT ["/usr/local/bin/orca"]
CMD ["--config", "/etc/orca/orca.yaml", "-c", "/etc/orca/pingora.yaml"]
