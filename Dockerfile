# The rallypoint daemon's image: `docker build -t rallypoint:0.1.0 .`
# Build stage: the release binary, with the versions of Cargo.lock.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin rallypoint \
    && install -D -m 0755 target/release/rallypoint /out/rallypoint

# Runtime: glibc and libgcc only (distroless), no shell, user nonroot (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/rallypoint /usr/local/bin/rallypoint
USER 65532:65532
# Gossip heartbeats (UDP), the cluster protocol (TCP), the HTTP API (TCP; the daemon
# binds it to 127.0.0.1 unless told otherwise: --http-addr 0.0.0.0:45894).
EXPOSE 45892/udp 45893 45894
ENTRYPOINT ["/usr/local/bin/rallypoint"]
CMD ["run"]
