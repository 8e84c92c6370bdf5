#!/usr/bin/env bash
# Flood (docs/benchmarks.md): a well-behaved peer B delivers memos at 100/s
# to a node, alone and while peer A floods it with 64 concurrent loops: three
# interleaved rounds of "B alone" then "B + A limited to 200/s", and one
# phase with no per-peer limit for contrast. Prints B's p50/p99 per phase,
# each round's ratio of B's p99 (A limited / alone) and their median (issue 6
# target: <= 2; reported, never asserted). Release build (cargo bench).
#
#   bash scripts/flood.sh
#
# The JSON summary goes to ${CARGO_TARGET_DIR:-target}/reliability/flood.json.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --locked -p mim4-node --bench flood
echo "summary: ${CARGO_TARGET_DIR:-target}/reliability/flood.json"
