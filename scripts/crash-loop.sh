#!/usr/bin/env bash
# The crash loop (docs/testing.md): RUNS runs (default 50) of a
# fresh 3-operator federation of real mim4-node processes in which two senders
# stream memos to a receiver that is SIGKILLed and restarted at seeded random
# moments; after each run every sled store is checked offline (nothing
# acknowledged lost, nothing applied twice or unasked, every database opens).
#
#   scripts/crash-loop.sh [RUNS] [--release] [--broken] [--seed S] [--kills K] [--keep]
#
# --broken runs mim4-node-broken, the node with the test-only `broken-ack-before-flush` feature
# (acknowledges before flushing; default 5 runs) and succeeds only if the loop
# finds acknowledged messages lost. The JSON summary goes to
# ${CARGO_TARGET_DIR:-target}/reliability/crash-loop.json (crash-loop-broken.json);
# the folders of runs with a violation (node logs, databases) are kept beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=""
if [[ ${1:-} =~ ^[0-9]+$ ]]; then
    runs=$1
    shift
fi
profile=()
name=crash-loop
args=()
for arg in "$@"; do
    case "$arg" in
        --release) profile=(--release) ;;
        --broken) name=crash-loop-broken; args+=(--broken) ;;
        *) args+=("$arg") ;;
    esac
done
if [[ -z $runs ]]; then
    if [[ $name == crash-loop-broken ]]; then runs=5; else runs=50; fi
fi
out="${CARGO_TARGET_DIR:-target}/reliability"
mkdir -p "$out"
rm -rf "$out/$name-runs"
exec cargo run --locked -q "${profile[@]}" -p mim4-testnet -- \
    --dir "$out/$name-runs" crashloop --runs "$runs" --json "$out/$name.json" "${args[@]}"
