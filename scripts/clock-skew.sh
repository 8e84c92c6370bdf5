#!/usr/bin/env bash
# Clock-skew suite (docs/testing.md): envelopes from a sender whose
# clock is off by 14 offsets (in sync, ahead up to and beyond the 30 s skew
# bound, behind up to and beyond their lifetime) sent to a running node over
# the peer transport; inside the window applied, outside refused with
# `clock_skew` / `expired`, and no trace left (the same id sent again in sync
# is applied once). Summary: ${CARGO_TARGET_DIR:-target}/reliability/clock-skew.json.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --locked -q -p mim4-node --test node clock_skew -- --nocapture
