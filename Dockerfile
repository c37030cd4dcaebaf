# syntax=docker/dockerfile:1
# Image of the position hub: the `gateway` binary (the embedded hub) and `loadgen`.
# Build:  docker build -t position-hub:0.1.0 .
# Stage 1 compiles with the Rust toolchain; stage 2 holds only the two binaries and the C
# runtime they link against (same Debian release as the builder, so the same glibc), and
# runs as an unprivileged user. No CA certificates: the hub speaks plain HTTP only.

FROM rust:1.95.0-slim-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY engine ./engine
COPY gateway ./gateway
COPY sharding ./sharding
COPY loadgen ./loadgen
RUN cargo build --release --locked -p gateway -p loadgen \
    && install -D -m 0755 target/release/gateway /out/gateway \
    && install -D -m 0755 target/release/loadgen /out/loadgen

FROM debian:12.10-slim AS runtime
RUN groupadd --gid 10001 hub \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin hub \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/position-hub
COPY --from=builder /out/gateway /out/loadgen /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/position-hub
ENV HUB_FSPIOP_LISTEN=0.0.0.0:3000 \
    HUB_ADMIN_LISTEN=0.0.0.0:3001 \
    HUB_DATA_DIR=/var/lib/position-hub
EXPOSE 3000 3001
VOLUME ["/var/lib/position-hub"]
ENTRYPOINT ["/usr/local/bin/gateway"]
