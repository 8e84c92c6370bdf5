#!/usr/bin/env node
// Interop probe: a js-libp2p 2.x node dials one multiaddr over
// TCP + noise + yamux, runs identify against the peer it authenticated, pings
// it three times, and prints ONE JSON line to stdout.
//
//   node probe.mjs <multiaddr[/p2p/PEERID]> [--expect-peer PEERID]
//                  [--timeout-ms N] [--pings N] [--seed-hex HEX64]
//
// Success (exit 0):
//   {"peer_id", "agent_version", "protocol_version", "protocols", "listen_addrs",
//    "ping_ms", "observed_addr", "remote_addr", "encryption", "multiplexer",
//    "connections", "local_peer_id"}
// Failure (exit 1): {"error": "...", "phase": "...", "peer_id"?: "..."}
// Bad usage also exits 1, with "phase": "args".
//
// The run ends by itself within --timeout-ms (default 20000) whatever the
// remote does. Nothing but that one line is written to stdout (js-libp2p logs
// go to stderr, and only with DEBUG=libp2p:* set).

import './polyfill.mjs'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { createNode, errorMessage, parseArgs, printJson, privateKeyFromSeedHex } from './common.mjs'

const USAGE = 'usage: node probe.mjs <multiaddr[/p2p/PEERID]> [--expect-peer PEERID] [--timeout-ms N] [--pings N] [--seed-hex HEX64]'
const DEFAULT_TIMEOUT_MS = 20_000
const DEFAULT_PINGS = 3
// How long stopping the js node may take before we exit regardless.
const STOP_GRACE_MS = 1_000

let phase = 'args'
let remotePeerId
let node
let finished = false
let deadline
const controller = new AbortController()

async function finish (code, obj) {
  if (finished) return
  finished = true
  clearTimeout(deadline)
  await printJson(obj)
  if (node != null) {
    await Promise.race([
      node.stop().catch(() => {}),
      new Promise(resolve => setTimeout(resolve, STOP_GRACE_MS).unref())
    ])
  }
  process.exit(code)
}

function fail (err, code = 1) {
  const out = { error: errorMessage(err), phase }
  if (remotePeerId != null) out.peer_id = remotePeerId.toString()
  return finish(code, out)
}

process.on('uncaughtException', err => { fail(err) })
process.on('unhandledRejection', err => { fail(err) })

async function main () {
  let parsed
  try {
    parsed = parseArgs(process.argv.slice(2), {
      'expect-peer': 'string',
      'timeout-ms': 'int',
      pings: 'int',
      'seed-hex': 'string',
      help: 'bool'
    })
  } catch (err) {
    return fail(new Error(`${err.message}; ${USAGE}`), 1)
  }
  const { positionals, flags } = parsed
  if (flags.help === true) {
    process.stderr.write(USAGE + '\n')
    process.exit(0)
  }
  if (positionals.length !== 1) {
    return fail(new Error(USAGE), 1)
  }
  const timeoutMs = flags['timeout-ms'] ?? DEFAULT_TIMEOUT_MS
  if (timeoutMs < 1) return fail(new Error('--timeout-ms must be at least 1'), 1)
  const pings = flags.pings ?? DEFAULT_PINGS
  if (pings < 1) return fail(new Error('--pings must be at least 1'), 1)

  // From here on the whole run is bounded by timeoutMs.
  deadline = setTimeout(() => {
    controller.abort()
    fail(new Error(`timed out after ${timeoutMs} ms`))
  }, timeoutMs)
  const signal = controller.signal

  let target
  let expected
  try {
    target = multiaddr(positionals[0])
  } catch (err) {
    return fail(new Error(`invalid multiaddr ${JSON.stringify(positionals[0])}: ${errorMessage(err)}`), 1)
  }
  let addrPeer
  try {
    const p2p = target.getPeerId()
    if (p2p != null) addrPeer = peerIdFromString(p2p)
  } catch (err) {
    return fail(new Error(`invalid /p2p/ peer id in ${JSON.stringify(positionals[0])}: ${errorMessage(err)}`), 1)
  }
  if (flags['expect-peer'] != null) {
    try {
      expected = peerIdFromString(flags['expect-peer'])
    } catch (err) {
      return fail(new Error(`invalid --expect-peer ${JSON.stringify(flags['expect-peer'])}: ${errorMessage(err)}`), 1)
    }
  }
  let privateKey
  try {
    privateKey = await privateKeyFromSeedHex(flags['seed-hex'])
  } catch (err) {
    return fail(err, 1)
  }

  phase = 'start'
  node = await createNode({
    privateKey,
    timeoutMs,
    // identify is run explicitly below (identify allows one outbound stream
    // per connection, so an automatic run could race the explicit one).
    runIdentifyOnConnectionOpen: false,
    userAgent: `mim4-interop-probe/0.1.0 js-libp2p/2.x node/${process.versions.node}`
  })

  // Counts connections to the remote peer: more than one means the remote
  // closed the first one and ping had to dial again.
  let connections = 0
  node.addEventListener('connection:open', evt => {
    if (remotePeerId != null ? evt.detail.remotePeer.equals(remotePeerId) : true) connections++
  })

  // The noise handshake authenticates the remote's key (remotePeer). NOTE:
  // js-libp2p 2.10 does NOT compare it with a /p2p/PEERID in the dialled
  // multiaddr (it dials any key behind that address), so both the multiaddr's
  // peer id and --expect-peer are checked here, after the handshake.
  phase = 'dial'
  const connection = await node.dial(target, { signal })
  remotePeerId = connection.remotePeer

  if (addrPeer != null && !remotePeerId.equals(addrPeer)) {
    return fail(new Error(`peer id mismatch: multiaddr names ${addrPeer.toString()}, authenticated ${remotePeerId.toString()}`))
  }
  if (expected != null && !remotePeerId.equals(expected)) {
    return fail(new Error(`peer id mismatch: expected ${expected.toString()}, authenticated ${remotePeerId.toString()}`))
  }

  phase = 'identify'
  const id = await node.services.identify.identify(connection, { signal })

  phase = 'ping'
  const pingMs = []
  for (let i = 0; i < pings; i++) {
    pingMs.push(await node.services.ping.ping(remotePeerId, { signal }))
  }

  phase = 'done'
  return finish(0, {
    peer_id: remotePeerId.toString(),
    agent_version: id.agentVersion ?? null,
    protocol_version: id.protocolVersion ?? null,
    protocols: id.protocols ?? [],
    listen_addrs: (id.listenAddrs ?? []).map(ma => ma.toString()),
    ping_ms: pingMs,
    observed_addr: id.observedAddr != null ? id.observedAddr.toString() : null,
    remote_addr: connection.remoteAddr.toString(),
    encryption: connection.encryption ?? null,
    multiplexer: connection.multiplexer ?? null,
    connections,
    local_peer_id: node.peerId.toString()
  })
}

main().catch(err => fail(err))
