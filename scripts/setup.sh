#!/usr/bin/env bash
# Installs what the test suite needs. Idempotent: each step checks first and installs
# only what is missing. Run as root (or with sudo available) on a Debian-like machine.
set -euo pipefail

apt_updated=0
# apt_install PKG... : installs the packages with apt-get (updating the lists once).
apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo="sudo"
        else
            echo "setup: need root to install $* (missing); skipping" >&2
            return 0
        fi
    fi
    if [ "$apt_updated" -eq 0 ]; then
        $sudo apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

# ---- Rust toolchain (the build itself) -------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install a Rust toolchain (rustup) first" >&2
    exit 1
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            rustup component add "$component"
        else
            echo "setup: cargo $component missing and no rustup to add it" >&2
            exit 1
        fi
    fi
done

# ---- Gossip / network namespaces (tests across hosts): ip, bridges, veth ---------
if ! command -v ip >/dev/null 2>&1; then
    apt_install iproute2
fi

# ---- Event store example: PostgreSQL server binaries (initdb, postgres) ----------
# The tests run initdb and postgres from /usr/lib/postgresql/<version>/bin as the
# `postgres` user (the package creates it).
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! id postgres >/dev/null 2>&1; then
    apt_install postgresql-15 || apt_install postgresql
fi

# ---- DNS strategy: the tests run a real DNS server in-process (hickory-server, a
# dev-dependency): nothing to install.

# ---- Helm chart checks: pip packages (helm-python-sdk, kubernetes-validate) -------
# (added with the chart part)

# ---- Status page: headless Chromium and ChromeDriver (tests/status_page.rs) ------
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    apt_install chromium chromium-driver
fi

echo "setup: ok"
