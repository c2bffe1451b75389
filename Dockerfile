# syntax=docker/dockerfile:1.7
#
# The control plane's images: one build of the release binaries, one minimal image per service.
#
#   docker build --target scheduler -t hopngo/scheduler:$TAG .
#   (likewise deployer, analyzer, migrator, notifier)
#
# Each runs as the distroless image's non-root user (65532), needs no shell or other program at
# run time, and keeps nothing on its root filesystem: run it with readOnlyRootFilesystem. Every
# service serves gRPC on 0.0.0.0 with TLS (plain HTTP/2 is refused beyond loopback: mount the
# certificate, key and CA and pass --tls-cert/--tls-key/--tls-ca), health on the same port
# (grpc.health.v1, for native gRPC probes) and /metrics, /healthz, /readyz on its admin port.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# The registry and the target directory are caches of the builder, not layers of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p hopngo-scheduler -p hopngo-deployer -p hopngo-analyzer -p hopngo-migrator -p hopngo-notifier \
 && mkdir -p /out \
 && cp target/release/hopngo-scheduler target/release/hopngo-deployer target/release/hopngo-analyzer \
       target/release/hopngo-smoke target/release/hopngo-migrator target/release/hopngo-notifier /out/

# glibc, libgcc, CA certificates, /etc/passwd with `nonroot`; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
USER 65532:65532

FROM runtime AS scheduler
COPY --from=build /out/hopngo-scheduler /usr/local/bin/hopngo-scheduler
ENV HOPNGO_LISTEN=0.0.0.0:50051 HOPNGO_ADMIN_LISTEN=0.0.0.0:9464
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/hopngo-scheduler"]

FROM runtime AS deployer
COPY --from=build /out/hopngo-deployer /usr/local/bin/hopngo-deployer
ENV HOPNGO_DEPLOYER_LISTEN=0.0.0.0:50052 HOPNGO_DEPLOYER_ADMIN_LISTEN=0.0.0.0:9465 HOPNGO_DEPLOYER_BACKEND=kubernetes
EXPOSE 50052 9465
ENTRYPOINT ["/usr/local/bin/hopngo-deployer"]

# The smoke tests the delivery config's `smoke` template runs as a job ride along.
FROM runtime AS analyzer
COPY --from=build /out/hopngo-analyzer /out/hopngo-smoke /usr/local/bin/
ENV HOPNGO_ANALYZER_LISTEN=0.0.0.0:50053 HOPNGO_ANALYZER_ADMIN_LISTEN=0.0.0.0:9466 PATH=/usr/local/bin
EXPOSE 50053 9466
ENTRYPOINT ["/usr/local/bin/hopngo-analyzer"]

FROM runtime AS migrator
COPY --from=build /out/hopngo-migrator /usr/local/bin/hopngo-migrator
ENV HOPNGO_MIGRATOR_LISTEN=0.0.0.0:50054 HOPNGO_MIGRATOR_ADMIN_LISTEN=0.0.0.0:9467
EXPOSE 50054 9467
ENTRYPOINT ["/usr/local/bin/hopngo-migrator"]

FROM runtime AS notifier
COPY --from=build /out/hopngo-notifier /usr/local/bin/hopngo-notifier
ENV HOPNGO_NOTIFIER_LISTEN=0.0.0.0:50055 HOPNGO_NOTIFIER_ADMIN_LISTEN=0.0.0.0:9468
EXPOSE 50055 9468
ENTRYPOINT ["/usr/local/bin/hopngo-notifier"]
