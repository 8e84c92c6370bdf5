#!/usr/bin/env bash
# Hostile input (docs/hostile-input.md): the corpus of 10,000
# hostile envelopes in eleven categories, sent over gRPC and over libp2p to an
# in-process node (node/tests/node/corpus.rs; each refusal's code and reason
# checked, the node healthy afterwards, resident memory before and after),
# then the Ed25519 edge cases through the node's verification
# (node/src/core/tests/ed25519.rs: ed25519-speccheck, Wycheproof EdDSA,
# small-order keys, also in trust lists). Exits non-zero if either fails.
#
#   bash scripts/hostile.sh          # MIM4_CORPUS_SEED=S picks another corpus
#
# JSON summaries: ${CARGO_TARGET_DIR:-target}/reliability/corpus-grpc.json,
# corpus-libp2p.json and ed25519.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${CARGO_TARGET_DIR:-target}/reliability"
# `--workspace` as in scripts/test.sh, so both share one build.
status=0
cargo test --workspace --locked --test node corpus:: -- --nocapture || status=1
cargo test --workspace --locked --lib core::tests::ed25519:: || status=1
echo "summaries: $out/corpus-grpc.json $out/corpus-libp2p.json $out/ed25519.json"
exit "$status"
