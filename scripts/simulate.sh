#!/usr/bin/env bash
# The simulation suite (docs/testing.md): SEEDS seeds (default 2000)
# of the deterministic simulation of the core and the delivery logic
# (node/src/core/tests/sim.rs) under seeded crashes, partitions and clock
# offsets, then 50 seeds of the broken receiver that acknowledges before its
# flush, which must be caught losing messages.
#
#   scripts/simulate.sh [SEEDS] [--seed S] [--variant faithful|broken|replay-before-flush]
#
# A failing seed is printed with the command that replays it. The JSON summary
# goes to ${CARGO_TARGET_DIR:-target}/reliability/simulation.json.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=2000
if [[ ${1:-} =~ ^[0-9]+$ ]]; then
    seeds=$1
    shift
fi
export MIM4_SIM_SEEDS=$seeds
while [[ $# -gt 0 ]]; do
    case "$1" in
        --seed) export MIM4_SIM_SEED=$2; shift 2 ;;
        --variant) export MIM4_SIM_VARIANT=$2; shift 2 ;;
        *) echo "usage: scripts/simulate.sh [SEEDS] [--seed S] [--variant faithful|broken|replay-before-flush]" >&2; exit 2 ;;
    esac
done
exec cargo test -p mim4-node --lib core::tests::sim::simulation -- --exact --nocapture
