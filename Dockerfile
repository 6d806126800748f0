# sidekey container image: a static build, then a distroless runtime with no shell.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && strip target/release/sidekey

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="sidekey" \
      org.opencontainers.image.description="Credential sidecar: injects API tokens into outbound HTTP requests" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /src/target/release/sidekey /usr/local/bin/sidekey
USER 65532:65532
EXPOSE 8080 9901
ENV SIDEKEY_CONFIG=/etc/sidekey/sidekey.toml
ENTRYPOINT ["/usr/local/bin/sidekey"]
CMD ["run"]
