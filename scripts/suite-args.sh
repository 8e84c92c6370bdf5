# Sourced by scripts/chaos.sh and scripts/partition.sh: splits the remaining
# arguments into the cargo profile (`--release`) and the tool's own
# arguments, and makes the folder of the suites' JSON summaries.
#   sets: profile=(...) args=(...) out=DIR
profile=()
args=()
for arg in "$@"; do
    case "$arg" in
        --release) profile=(--release) ;;
        *) args+=("$arg") ;;
    esac
done
out="${CARGO_TARGET_DIR:-target}/reliability"
mkdir -p "$out"
