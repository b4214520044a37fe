#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/) for a bounded time, from the committed seed
# corpora (fuzz/seeds/<target>, written by `cargo run --example fuzz_seeds`: real sealed
# handshakes, encoded frame streams, gossip heartbeats, the configurations of docs/daemon.md)
# plus the working corpus it grows (fuzz/corpus/<target>, not committed).
# A crash fails the run; its input is left in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh                        # every target, FUZZ_SECONDS (default 20) each
#   scripts/fuzz.sh sealed_handshake 600   # one target, ten minutes
#
# Needs cargo-fuzz (scripts/setup.sh installs it). Built without a sanitizer
# (`-s none`): the targets are safe Rust, and this toolchain is stable; libFuzzer's
# coverage guidance and the targets' own assertions do the work.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${FUZZ_SECONDS:-20}"
targets=(sealed_handshake sealed_records handshake frame_decoder gossip_packet config_loader)
if [ $# -ge 1 ]; then
    targets=("$1")
fi
if [ $# -ge 2 ]; then
    seconds="$2"
fi

cargo fuzz build -s none -O
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "fuzz: $t for ${seconds}s"
    cargo fuzz run -s none -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 2>&1 |
        grep -E '^(#[0-9]+ +DONE|Done|stat::number_of_executed_units|==[0-9]+== ERROR|thread .* panicked|SUMMARY)' || true
    if [ -n "$(ls -A "artifacts/$t" 2>/dev/null)" ]; then
        echo "fuzz: $t found a crash: $(ls "artifacts/$t")" >&2
        exit 1
    fi
done
echo "fuzz: ok"
