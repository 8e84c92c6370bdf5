#!/usr/bin/env bash
# Installs the js-libp2p interop fixtures (testnet/interop/js: probe.mjs,
# serve.mjs) exactly as pinned by their package-lock.json, with `npm ci`.
#
# Idempotent and silent when they are already installed: it reinstalls only
# when node_modules is missing or older than package-lock.json / package.json.
# Safe to run from several tests at once (serialised with flock when present).
# stdout stays empty; progress and errors go to stderr.
#
# Exit codes: 0 installed (or already was), 1 install failed,
#             2 node/npm missing or too old.
set -euo pipefail
cd "$(dirname "$0")/../testnet/interop/js"

# The pinned tree (js-libp2p 2.x) declares engines node >= 20 in some
# dependencies (p-queue 9, ms 4); probe.mjs polyfills the one Node 22 API
# they call (Promise.withResolvers).
MIN_NODE_MAJOR=20

say() { printf 'interop-setup: %s\n' "$*" >&2; }

if ! command -v node >/dev/null 2>&1; then
    say "node (Node.js >= ${MIN_NODE_MAJOR}) is not installed; e.g. 'apt-get install nodejs npm'"
    exit 2
fi
if ! command -v npm >/dev/null 2>&1; then
    say "npm is not installed; e.g. 'apt-get install npm'"
    exit 2
fi
node_major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
if ! [[ "$node_major" =~ ^[0-9]+$ ]] || (( node_major < MIN_NODE_MAJOR )); then
    say "node $(node --version 2>/dev/null || echo '?') is too old: need Node.js >= ${MIN_NODE_MAJOR}"
    exit 2
fi

needs_install() {
    # npm ci writes node_modules/.package-lock.json last; use it as the stamp.
    local stamp=node_modules/.package-lock.json
    [[ -f "$stamp" ]] || return 0
    [[ package-lock.json -nt "$stamp" ]] && return 0
    [[ package.json -nt "$stamp" ]] && return 0
    return 1
}

install() {
    needs_install || return 0
    say "installing js-libp2p fixtures in $(pwd) (npm ci)"
    if ! npm ci --no-audit --no-fund --loglevel=error >&2; then
        say "npm ci failed in $(pwd)"
        return 1
    fi
    # A tree that npm ci just wrote is newer than the lock; make that so even
    # when clocks or checkouts left the lock with a future mtime.
    touch node_modules/.package-lock.json
    say "done"
}

if command -v flock >/dev/null 2>&1; then
    exec 9>"node_modules.lock"
    flock 9
fi
install
