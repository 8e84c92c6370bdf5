#!/usr/bin/env bash
# Checks the workspace's and the fuzz workspace's lock files against the RustSec
# advisory database, offline, from a local copy of its data files (the build
# machines cannot fetch it). Fails on any vulnerability, and on any unmaintained
# or unsound crate that deny.toml's [advisories] ignore list does not name with
# a reason. See docs/checks.md.
#
#   bash scripts/advisories.sh
#
# The copy: $MIM4_ADVISORY_DB_COPY, by default shared/rustsec-advisory-db beside
# the repository (../shared/rustsec-advisory-db; in CI the clone sits beside a
# read-only copy of shared/). Its SNAPSHOT.md names the database commit and
# date, which this prints. cargo-deny reads a database only from a git
# repository in <db-path>/advisory-db-<hash of its URL>, so one is made from the
# copy in a temporary folder (the copy itself stays untouched).
#
# Without the copy this fails, unless MIM4_SKIP_ADVISORIES=1, which skips the
# check and says so (for a machine that has no shared/ folder).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

copy="${MIM4_ADVISORY_DB_COPY:-$(dirname "$root")/shared/rustsec-advisory-db}"
# The folder name cargo-deny asks for with the default db-urls
# (https://github.com/rustsec/advisory-db); see SNAPSHOT.md.
db_name="advisory-db-3157b0e258782691"

if [[ ! -d $copy/crates || ! -f $copy/SNAPSHOT.md ]]; then
  if [[ ${MIM4_SKIP_ADVISORIES:-} == 1 ]]; then
    echo "advisories: NOT checked: no copy of the RustSec database at $copy (MIM4_SKIP_ADVISORIES=1)" >&2
    exit 0
  fi
  echo "advisories: no copy of the RustSec database at $copy" >&2
  echo "  put one there (see docs/checks.md), point MIM4_ADVISORY_DB_COPY at one," >&2
  echo "  or set MIM4_SKIP_ADVISORIES=1 to skip this check knowingly" >&2
  exit 1
fi

# "as of its commit <sha> (<date>)" in SNAPSHOT.md.
snapshot=$(grep -oE 'commit [0-9a-f]{40} \([0-9]{4}-[0-9]{2}-[0-9]{2}\)' "$copy/SNAPSHOT.md" | head -1 || true)
if [[ -z $snapshot ]]; then
  echo "advisories: $copy/SNAPSHOT.md does not name the commit and date of the copy" >&2
  exit 1
fi
snapshot_date=$(grep -oE '[0-9]{4}-[0-9]{2}-[0-9]{2}' <<<"$snapshot")
echo "advisories: RustSec database copy of $snapshot_date (${snapshot% (*}), from $copy"

if ! command -v cargo-deny >/dev/null 2>&1; then
  echo "installing cargo-deny (first run on this machine) ..."
  # A debug build: about a minute instead of two and a half, and it checks in seconds.
  cargo install cargo-deny --locked --version 0.20.2 --debug --quiet
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# make_db DIR: the git repository cargo-deny reads, made from the copy in
# DIR/advisory-db-<hash>, plus any files already planted under DIR/plant/.
make_db() {
  local db="$1/$db_name"
  mkdir -p "$db"
  cp -r "$copy/." "$db"
  [[ -d $1/plant ]] && cp -r "$1/plant/." "$db"
  chmod -R u+w "$db"
  git -C "$db" init -q
  git -C "$db" add -A
  # A fixed author and date: the same copy gives the same commit.
  GIT_AUTHOR_DATE="${snapshot_date}T00:00:00Z" GIT_COMMITTER_DATE="${snapshot_date}T00:00:00Z" \
    git -C "$db" -c user.name=ci -c user.email=ci@localhost -c commit.gpgsign=false \
    commit -qm "RustSec advisory database, $snapshot"
}

# check DBS MANIFEST: cargo deny's advisories check of MANIFEST's lock file
# against the database in DBS.
check() {
  # --offline: no attempt to fetch the database; --locked: the lock file as it is.
  MIM4_ADVISORY_DBS="$1" cargo deny --offline --locked --log-level warn --manifest-path "$2" \
    --config "$root/deny.toml" check advisories
}

make_db "$work/real"
status=0
for manifest in Cargo.toml fuzz/Cargo.toml; do
  echo "advisories: $(dirname "$manifest")/Cargo.lock"
  # cargo-deny's `cargo metadata` runs offline and wants every package of the
  # lock file (all targets) downloaded: fetch them from the registry first.
  cargo fetch --locked --quiet --manifest-path "$manifest"
  check "$work/real" "$manifest" || status=1
done
if [[ $status -ne 0 ]]; then
  echo "advisories: FAILED (a vulnerability, or an unmaintained/unsound crate not in deny.toml's ignore list)" >&2
  exit 1
fi

# The control: the same check against the copy plus one planted vulnerability
# (its id is not RUSTSEC-0000-0000, which cargo-deny skips as a placeholder)
# in a crate of the lock file (subtle, which the node uses) must fail. A check
# that passes anyway is not reading the database, and then this fails.
plant="$work/control/plant/crates/subtle"
mkdir -p "$plant"
cat >"$plant/RUSTSEC-2099-0001.md" <<'ADVISORY'
```toml
[advisory]
id = "RUSTSEC-2099-0001"
package = "subtle"
date = "2026-12-07"
url = "https://example.org/planted"

[versions]
patched = []
```

# A planted advisory (scripts/advisories.sh control)

Not a real advisory: the advisories check must fail on it.
ADVISORY
make_db "$work/control"
echo "advisories: control, a planted vulnerability in subtle (must fail) ..."
if check "$work/control" Cargo.toml >"$work/control.log" 2>&1; then
  cat "$work/control.log" >&2
  echo "advisories: FAILED: the check passed with a planted vulnerability, so it does not read the database" >&2
  exit 1
fi
if ! grep -q "RUSTSEC-2099-0001" "$work/control.log"; then
  cat "$work/control.log" >&2
  echo "advisories: FAILED: the control failed, but not on the planted advisory" >&2
  exit 1
fi
echo "advisories: control failed on RUSTSEC-2099-0001, as it must"
echo "advisories: ok (no vulnerability; unmaintained/unsound crates only those deny.toml accepts)"
