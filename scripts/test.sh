#!/usr/bin/env bash
# Runs every test: installs what the tests need, then the whole cargo test suite with
# all features, then each fuzz target for a short bounded time (FUZZ_SECONDS, default
# 20 s each).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo test --all-features
scripts/fuzz.sh
