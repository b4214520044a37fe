#!/usr/bin/env bash
# Runs every test: installs what the tests need, then the whole cargo test suite with
# all features.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo test --all-features
