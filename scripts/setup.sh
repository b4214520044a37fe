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

# ---- Python tools: the Helm chart checks and the OpenAPI checks (pip) ------------
# scripts/chart_check.py (run by tests/chart.rs) lints and renders the chart with Helm's
# Go SDK (helm-python-sdk ships it as a shared library: no helm binary) and validates
# the manifests against the Kubernetes schemas kubernetes-validate ships (no download
# at run time). tests/openapi.rs validates docs/openapi.yaml (openapi-spec-validator)
# and fuzzes a live daemon against it (schemathesis). The versions are the ones
# verified to work together.
python_pip_packages=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0
    openapi-spec-validator==0.9.0 schemathesis==4.32.5)
if ! python3 -c 'import helm_python, kubernetes_validate.version as kv, yaml, openapi_spec_validator
import importlib.metadata as m
assert helm_python.__version__ == "0.2.2" and kv.__version__ == "1.37.0"
assert m.version("schemathesis") == "4.32.5" and m.version("openapi-spec-validator") == "0.9.0"' >/dev/null 2>&1 ||
    ! command -v schemathesis >/dev/null 2>&1; then
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
        apt_install python3 python3-pip
    fi
    # Debian's own python3 refuses installs outside a virtualenv (PEP 668): say we mean it.
    python3 -m pip install --quiet "${python_pip_packages[@]}" ||
        python3 -m pip install --quiet --break-system-packages "${python_pip_packages[@]}"
fi

# ---- Fuzzing (scripts/fuzz.sh): cargo-fuzz from crates.io ------------------------
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz@0.13.2
fi

# ---- Status page: headless Chromium and ChromeDriver (tests/status_page.rs) ------
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    apt_install chromium chromium-driver
fi

echo "setup: ok"
