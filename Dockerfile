# The WIF Broker image: both binaries, `wif-broker` (the broker and its admission webhook)
# and `wif-agent` (the sidecar the webhook injects), on a small non-root base.
#
#   docker build -t wif-broker:0.1.0 .
#
# The Helm chart (helm/wif-broker) runs /usr/local/bin/wif-broker for the broker and
# /usr/local/bin/wif-agent in injected sidecars, as user 65532.

# --- build -------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
# aws-lc-rs (the TLS crypto provider) compiles C code; cmake and clang make that reliable.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# One binary at a time: built together, cargo would unify features and the agent would
# link wif-proto's OpenAPI schemas, which only the broker needs (docs/architecture.md).
# The broker without default features: no `dev` feature, so the image's `wif-broker`
# holds no local issuer, Entra emulator or IMDS emulator (`wif-broker dev` says so).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p wif-agent \
 && cargo build --release --locked -p wif-broker --no-default-features \
 && install -D -m 0755 target/release/wif-broker /out/wif-broker \
 && install -D -m 0755 target/release/wif-agent /out/wif-agent

# --- runtime -----------------------------------------------------------------------------
# glibc and libgcc, CA certificates, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/wif-broker /out/wif-agent /usr/local/bin/
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/wif-broker"]
CMD ["serve"]
