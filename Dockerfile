# syntax=docker/dockerfile:1
#
# idem: worker daemon image. Build with BuildKit (the default in current Docker):
#   docker build -t idem .
# The same image runs every subcommand: `run` (default), `migrate`, `publish`,
# `status`, `provider-sim`, `demo`.

# ---- builder ---------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /app

# The whole workspace: every member (crates/*, tests) must be present for Cargo
# to load the workspace, and migrations/ is embedded at compile time by
# sqlx::migrate!("../../migrations") in crates/store.
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY tests ./tests
COPY migrations ./migrations

# Registry and target dir live in cache mounts so rebuilds are incremental.
# A cache mount is not part of the image, so the binary is copied out of
# /app/target in the same RUN step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/app/target,sharing=locked \
    cargo build --release --locked -p idem \
    && cp /app/target/release/idem /usr/local/bin/idem

# ---- runtime ---------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 idem \
    && useradd --system --uid 10001 --gid idem --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin idem

# Owned by root, mode 0755: executable by the unprivileged user, not writable.
COPY --from=builder /usr/local/bin/idem /usr/local/bin/idem

USER 10001:10001

# Inside a container the health/metrics listener (/healthz, /readyz) must bind
# all interfaces; the binary's default is 127.0.0.1:9464.
ENV IDEM_HTTP_ADDR=0.0.0.0:9464
EXPOSE 9464

ENTRYPOINT ["idem"]
CMD ["run"]
