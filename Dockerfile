# sidekey container image: a release build on Debian bookworm, then a distroless runtime
# (glibc, CA certificates, no shell, no package manager) running as an unprivileged user.
#
#   docker build -t sidekey:0.1.0 .
#   docker run --rm -v "$PWD/my-sidekey.toml:/etc/sidekey/sidekey.toml:ro" sidekey:0.1.0
#   docker run --rm -v "$PWD/my-sidekey.toml:/etc/sidekey/sidekey.toml:ro" sidekey:0.1.0 check
# The proxy listens on loopback: in a pod, the app's containers share it and nothing else can
# reach the credentials. Publishing its port (`-p 8080:8080`, clients outside this container's
# network namespace) needs `proxy = "0.0.0.0:8080"` and `allow_non_loopback = true` under
# [listen] (refused otherwise): whoever reaches the port uses the routes' tokens, so publish it
# only to those clients (`-p 127.0.0.1:8080:8080`, a private network).
#
# Health: HEALTHCHECK runs `sidekey health` (no shell or curl in the image): exit 0 when
# /readyz answers 200 at the config's listen.admin. Kubernetes ignores it and probes the admin
# listener itself (examples/kubernetes/). Lint: tests/servers/lint/run.sh.
#
# Base images: by tag, not digest. No digest could be verified where this file was written (no
# container engine or registry access), and a digest copied unverified is worse than a tag. To
# pin (recommended for release builds), resolve the tags and append the digests:
#   docker buildx imagetools inspect rust:1-bookworm                      # or: crane digest ...
#   docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot
#   FROM rust:1-bookworm@sha256:<digest> AS build
#   FROM gcr.io/distroless/cc-debian12:nonroot@sha256:<digest>
# and bump them the same way (or with Renovate/Dependabot's docker manager) for security fixes.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own: built against placeholder sources, so a change
# to sidekey's code reuses this layer and compiles only sidekey. Cargo.toml, Cargo.lock or
# build.rs changing rebuilds it. (benches/ because Cargo.toml declares [[bench]] targets,
# which cargo resolves on every build.)
COPY Cargo.toml Cargo.lock build.rs ./
COPY proxy/link-order.txt ./proxy/link-order.txt
RUN mkdir -p benches \
 && echo 'fn main() {}' > proxy/main.rs \
 && touch proxy/lib.rs \
 && echo 'fn main() {}' > benches/hot_path.rs \
 && echo 'fn main() {}' > benches/load.rs \
 && cargo build --release --locked --bin sidekey \
 && rm -rf proxy/main.rs proxy/lib.rs benches \
    target/release/sidekey target/release/.fingerprint/sidekey-* \
    target/release/deps/sidekey-* target/release/deps/libsidekey-*
# Only what the build reads, so edits to docs, tests or examples reuse the cached layers.
COPY proxy ./proxy
COPY benches ./benches
RUN cargo build --release --locked --bin sidekey \
 && strip target/release/sidekey \
 && ./target/release/sidekey --version

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="sidekey" \
      org.opencontainers.image.description="Credential sidecar: injects API tokens into outbound HTTP requests" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /src/target/release/sidekey /usr/local/bin/sidekey
# The config is mounted here (a ConfigMap, a bind mount); `sidekey run` reads SIDEKEY_CONFIG.
ENV SIDEKEY_CONFIG=/etc/sidekey/sidekey.toml
# distroless's "nonroot" user, numerically, so runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
# 8080: the proxy (data plane), 9901: the admin API (/healthz, /readyz, /metrics).
# Inside a pod the proxy listens on 127.0.0.1 only; see examples/kubernetes/configmap.yaml.
EXPOSE 8080 9901
# SIGTERM drains: /readyz turns 503, the proxy stops accepting, in-flight requests get
# [shutdown] grace (default 20s), then exit 0. A second signal exits at once.
STOPSIGNAL SIGTERM
# Ready (every required token has a value, not draining) at the config's listen.admin; a 2 s
# budget of its own.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/sidekey", "health"]
ENTRYPOINT ["/usr/local/bin/sidekey"]
CMD ["run"]
