# syntax=docker/dockerfile:1
#
# idem: worker daemon image. Build with BuildKit (the default in current Docker):
#   docker build -t idem .
# The same image runs every subcommand: `run` (default), `migrate`, `publish`,
# `status`, `reconcile`, `provider-sim`, `demo`.
#
# Runtime: debian:bookworm-slim rather than distroless, on purpose. It keeps
# bash, which the compose file's healthcheck uses to read /readyz (the image has
# no curl or wget, and the binary has no health subcommand), and it lets an
# operator `docker compose exec idem bash`. Kubernetes probes /healthz and
# /readyz over HTTP itself and needs nothing in the image. To trade the shell
# for a smaller image, use gcr.io/distroless/cc-debian12:nonroot as the runtime
# stage (glibc, libgcc and CA certificates included; drop the apt-get and user
# steps, keep USER) and remove the compose healthcheck.
#
# No HEALTHCHECK here: the image also runs `provider-sim`, `migrate` and
# `publish`, which serve no /readyz, so a probe belongs to the service that runs
# `idem run` (docker-compose.yml, deploy/kubernetes/deployment.yaml).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---- builder ---------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /app

# The whole workspace: every member (crates/*, tests) must be present for Cargo
# to load the workspace, and migrations/ is embedded at compile time by
# sqlx::migrate!("../../migrations") in crates/store.
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY tests ./tests
COPY migrations ./migrations

# Registry, git checkouts and the target dir live in cache mounts so rebuilds
# are incremental. A cache mount is not part of the image, so the binary is
# copied out of /app/target in the same RUN step. --locked: Cargo.lock is the
# truth; a build that would change it fails.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/app/target,sharing=locked \
    cargo build --release --locked -p idem \
    && cp /app/target/release/idem /usr/local/bin/idem

# ---- runtime ---------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# ca-certificates: TLS to PostgreSQL, RabbitMQ (lapin reads the system store)
# and the charge provider. Not version-pinned: CA bundles should follow Debian's
# security updates on every rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A fixed, unprivileged uid/gid (10001), matched by runAsUser/runAsGroup in
# deploy/kubernetes/deployment.yaml. No home directory: idem writes no files
# (logs go to stderr), so the root filesystem can be mounted read-only.
RUN groupadd --system --gid 10001 idem \
    && useradd --system --uid 10001 --gid idem --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin idem

# Owned by root, mode 0755: executable by the unprivileged user, not writable.
COPY --from=builder /usr/local/bin/idem /usr/local/bin/idem

LABEL org.opencontainers.image.title="idem" \
      org.opencontainers.image.description="Effectively-once charges from at-least-once RabbitMQ messages (PostgreSQL inbox/outbox)"

USER 10001:10001

# Inside a container the health/metrics listener (/healthz, /readyz, /metrics)
# must bind all interfaces; the binary's default is 127.0.0.1:9464.
ENV IDEM_HTTP_ADDR=0.0.0.0:9464
EXPOSE 9464

# idem is PID 1 and handles SIGTERM itself: it stops taking work, commits the
# inbox batch in hand and waits up to IDEM_SHUTDOWN_GRACE_SECS (15) for charge
# calls in flight. Give it longer than that before SIGKILL (compose
# stop_grace_period, Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM

ENTRYPOINT ["idem"]
CMD ["run"]
