#!/usr/bin/env bash
# Partition suite (docs/testing.md): three mim4-node processes,
# each in its own network namespace; the income register is cut off from both
# other operators for CUT (default 30s) while consents are granted and
# withdrawn, then Stockholm's node is paused with SIGSTOP for PAUSE (default
# 10s) under traffic. After each heal every outbox must be empty within the
# longest retry delay + 5 s; then every store is checked offline. Needs root
# and iproute2. Exits non-zero on a violation.
#
#   scripts/partition.sh [CUT] [PAUSE] [--release] [--seed S]
#
# The JSON report goes to ${CARGO_TARGET_DIR:-target}/reliability/partition.json.
set -euo pipefail
cd "$(dirname "$0")/.."
is_duration() { [[ ${1:-} =~ ^[0-9.]+(ms|s|m|min)?$ ]]; }
cut=30s
pause=10s
if is_duration "${1:-}"; then
    cut=$1
    shift
fi
if is_duration "${1:-}"; then
    pause=$1
    shift
fi
# shellcheck source=scripts/suite-args.sh
source scripts/suite-args.sh "$@"
exec cargo run --locked -q "${profile[@]}" -p mim4-testnet -- \
    partition --cut "$cut" --pause "$pause" --json "$out/partition.json" "${args[@]}"
