# syntax=docker/dockerfile:1
# One image for every aion stage: `docker run aion <subcommand>`.
#   docker build -t aion .
# The CUDA variant (the GPU trainer and enricher) builds on NVIDIA's images:
#   docker build -t aion:cuda --build-arg FEATURES=cuda \
#     --build-arg BUILD_BASE=nvidia/cuda:12.6.3-devel-ubuntu22.04 \
#     --build-arg RUNTIME_BASE=nvidia/cuda:12.6.3-runtime-ubuntu22.04 .
ARG BUILD_BASE=rust:1.95-bookworm
ARG RUNTIME_BASE=debian:bookworm-slim

FROM ${BUILD_BASE} AS build
ENV CARGO_HOME=/usr/local/cargo RUSTUP_HOME=/usr/local/rustup PATH=/usr/local/cargo/bin:$PATH
# A CUDA base image has no Rust: the same toolchain as the rust image, and the C toolchain the
# bundled librdkafka and OpenSSL build with.
RUN if ! command -v cargo >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends ca-certificates curl build-essential perl \
      && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0 --no-modify-path \
      && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
COPY . .
ARG FEATURES=""
# The registry and the target directory are build caches: a source change rebuilds the workspace's
# own crates, not every dependency.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p aion-cli --features "$FEATURES" \
    && cp target/release/aion /usr/local/bin/aion

FROM ${RUNTIME_BASE}
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/aion aion \
    && mkdir -p /var/lib/aion /var/cache/aion/models \
    && chown -R aion:aion /var/lib/aion /var/cache/aion
COPY --from=build /usr/local/bin/aion /usr/local/bin/aion
COPY schemas /usr/share/aion/schemas
ENV AION_STATE_DIR=/var/lib/aion AION_CACHE_DIR=/var/cache/aion
USER aion
VOLUME /var/lib/aion
ENTRYPOINT ["aion"]
