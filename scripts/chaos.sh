#!/usr/bin/env bash
# Chaos (docs/testing.md): memos between every operator, consent
# grant/withdraw cycles and the daycare scenario through the SDK while random
# mim4-node processes are SIGKILLed and restarted and (in network namespaces,
# where the machine allows it) operators are partitioned, for DURATION
# (default 60s), on the running testnet
# in ./.mim4-testnet if there is one (started again afterwards), else on a fresh
# temporary 3-operator federation; then drain, stop, and check every store
# offline. Exits non-zero on a violation.
#
#   scripts/chaos.sh [DURATION] [--release] [--seed S] [--operators N]
#
# The JSON report goes to ${CARGO_TARGET_DIR:-target}/reliability/chaos.json.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=60s
if [[ ${1:-} =~ ^[0-9.]+(ms|s|m|min)?$ ]]; then
    duration=$1
    shift
fi
# shellcheck source=scripts/suite-args.sh
source scripts/suite-args.sh "$@"
exec cargo run --locked -q "${profile[@]}" -p mim4-testnet -- \
    chaos --duration "$duration" --json "$out/chaos.json" "${args[@]}"
