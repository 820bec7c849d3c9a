# One image for every aion stage: `docker run aion <subcommand>`.
FROM rust:1.95-bookworm AS build
# The bundled librdkafka builds with its own configure + make and the image's C toolchain.
WORKDIR /src
COPY . .
# FEATURES=cuda builds the GPU path of the enricher and the trainer (needs nvcc in the image).
ARG FEATURES=""
RUN cargo build --release --locked -p aion-cli --features "$FEATURES" && cp target/release/aion /usr/local/bin/aion

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/aion /usr/local/bin/aion
COPY schemas /usr/share/aion/schemas
ENV AION_STATE_DIR=/var/lib/aion
VOLUME /var/lib/aion
ENTRYPOINT ["aion"]
