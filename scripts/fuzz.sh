#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer) for SECONDS each
# (default 60), starting from the committed seeds, and writes a JSON summary:
# per target the seconds, the executions and whether it crashed (with the
# saved input, to replay with `cargo fuzz run TARGET fuzz/artifacts/...`).
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET ...]
#
# Stable Rust works with the default FUZZ_SANITIZER=none; on nightly,
# FUZZ_SANITIZER=address adds AddressSanitizer. The summary goes to
# $FUZZ_SUMMARY, by default target/fuzz-summary.json (under CARGO_TARGET_DIR
# when set), next to the build in target/fuzz; it is removed first, so it is
# always this run's. Exits non-zero if a target crashed or did not run (no
# executions counted). CI (.ci/run) runs every target for 15 s this way.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

seconds="${1:-60}"
[ $# -gt 0 ] && shift
# libFuzzer reads -max_total_time=0 as "no limit": a run must be bounded.
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "fuzz.sh: SECONDS must be a positive whole number, not '$seconds'" >&2
  exit 2
fi
target_root="${CARGO_TARGET_DIR:-$root/target}"
build_dir="$target_root/fuzz"
summary="${FUZZ_SUMMARY:-$target_root/fuzz-summary.json}"
sanitizer="${FUZZ_SANITIZER:-none}"

rm -f "$summary"

if ! cargo fuzz --help >/dev/null 2>&1; then
  echo "installing cargo-fuzz (first run on this machine) ..."
  # A pinned version, its own lock file; a debug build: it only drives cargo and libFuzzer.
  cargo install cargo-fuzz --locked --version 0.13.2 --debug --quiet
fi

cd fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
echo "building ${#targets[@]} fuzz targets (sanitizer: $sanitizer) ..."
cargo fuzz build --sanitizer "$sanitizer" --target-dir "$build_dir"

mkdir -p "$build_dir/logs" "$(dirname "$summary")"
entries=()
failed=0
for target in "${targets[@]}"; do
  log="$build_dir/logs/$target.log"
  corpus="corpus/$target"
  mkdir -p "$corpus" "artifacts/$target"
  seeds=()
  [ -d "seeds/$target" ] && seeds=("seeds/$target")
  marker=$(mktemp)
  echo "fuzzing $target for $seconds s ..."
  started=$SECONDS
  set +e
  cargo fuzz run "$target" "$corpus" "${seeds[@]}" --sanitizer "$sanitizer" \
    --target-dir "$build_dir" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1
  status=$?
  set -e
  elapsed=$((SECONDS - started))
  # libFuzzer's final statistics; "Done N runs" when the run ended normally.
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1 || true)
  [ -z "$execs" ] && execs=$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' | tail -1 || true)
  [ -z "$execs" ] && execs=$(grep -oE '^#[0-9]+' "$log" | tr -d '#' | tail -1 || true)
  # Seconds spent fuzzing (a rebuild before the run, when sources changed, is not counted).
  fuzzed=$(grep -oE '^Done [0-9]+ runs in [0-9]+ second' "$log" | grep -oE '[0-9]+ second' | grep -oE '[0-9]+' | tail -1 || true)
  artifacts=$(find "artifacts/$target" -type f -newer "$marker" | sort)
  rm -f "$marker"
  crashed=false
  if [ "$status" -ne 0 ] || [ -n "$artifacts" ]; then
    crashed=true
    failed=1
    echo "  CRASH in $target (exit $status); log: $log"
  elif [ -z "$execs" ] || [ "$execs" -eq 0 ]; then
    # A target that ran nothing has not passed.
    failed=1
    echo "  $target did not run (no executions counted); log: $log"
  fi
  artifact_list=$(printf '%s\n' "$artifacts" | awk 'NF { printf "%s\"fuzz/%s\"", (n++ ? ", " : ""), $0 }')
  echo "  $target: ${execs:-?} executions in ${fuzzed:-?} s (${elapsed} s with the build)"
  entries+=("$(printf '    {"target": "%s", "seconds": %s, "wall_seconds": %d, "execs": %s, "crashed": %s, "exit_status": %d, "artifacts": [%s], "log": "%s"}' \
    "$target" "${fuzzed:-null}" "$elapsed" "${execs:-null}" "$crashed" "$status" "$artifact_list" "$log")")
done

{
  echo "{"
  echo "  \"seconds_per_target\": $seconds,"
  echo "  \"sanitizer\": \"$sanitizer\","
  echo "  \"targets\": ["
  for i in "${!entries[@]}"; do
    sep=","
    [ "$i" -eq $((${#entries[@]} - 1)) ] && sep=""
    echo "${entries[$i]}$sep"
  done
  echo "  ]"
  echo "}"
} >"$summary"
echo "summary: $summary"
cat "$summary"
exit "$failed"
