#!/usr/bin/env bash
# Installs what the tests and benchmarks need on a Debian machine. Idempotent: a step
# whose tool is already there does nothing. Run as root (CI runs as root).
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    apt-get install -y -qq --no-install-recommends "$@"
}

# --- event store (tests/event_store.rs, benches/event_store.rs) ---
# A real PostgreSQL server: the tests run initdb and postgres from
# /usr/lib/postgresql/<version>/bin as the `postgres` user (the package creates it).
# Network namespaces and routes for the partition test: `ip` from iproute2.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! id postgres >/dev/null 2>&1; then
    apt_install postgresql-15 || apt_install postgresql
fi
if ! command -v ip >/dev/null 2>&1; then
    apt_install iproute2
fi
