#!/usr/bin/env bash
# The project's test command (README "Quick start"): every unit, property and
# integration test of the workspace, including the ones that start real
# mim4-node processes on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
# Integration tests start several nodes each; two test threads keep a 2-core machine responsive.
exec cargo test --workspace --locked -- --test-threads "${MIM4_TEST_THREADS:-2}" "$@"
