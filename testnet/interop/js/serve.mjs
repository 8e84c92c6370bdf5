#!/usr/bin/env node
// Interop fixture: a js-libp2p 2.x listener (TCP + noise + yamux, identify +
// ping) on 127.0.0.1 with an OS-chosen port. Used to test probe.mjs, and as a
// standard libp2p peer for the Rust node to dial.
//
//   node serve.mjs [--port N] [--max-seconds N] [--seed-hex HEX64]
//
// Once listening it prints ONE JSON line to stdout:
//   {"peer_id": "12D3Koo...", "multiaddrs": ["/ip4/127.0.0.1/tcp/PORT/p2p/12D3Koo..."]}
// then runs until SIGTERM/SIGINT, or exits 0 by itself after --max-seconds
// (default 120). On a start-up failure it prints {"error": "..."} and exits 1.

import './polyfill.mjs'
import { createNode, errorMessage, parseArgs, printJson, privateKeyFromSeedHex } from './common.mjs'

const USAGE = 'usage: node serve.mjs [--port N] [--max-seconds N] [--seed-hex HEX64]'
const STOP_GRACE_MS = 1_000

let node
let stopping = false

async function stop (code) {
  if (stopping) return
  stopping = true
  if (node != null) {
    await Promise.race([
      node.stop().catch(() => {}),
      new Promise(resolve => setTimeout(resolve, STOP_GRACE_MS).unref())
    ])
  }
  process.exit(code)
}

async function main () {
  let parsed
  try {
    parsed = parseArgs(process.argv.slice(2), { port: 'int', 'max-seconds': 'int', 'seed-hex': 'string', help: 'bool' })
  } catch (err) {
    await printJson({ error: `${err.message}; ${USAGE}` })
    process.exit(1)
  }
  const { positionals, flags } = parsed
  if (flags.help === true) {
    process.stderr.write(USAGE + '\n')
    process.exit(0)
  }
  if (positionals.length !== 0) {
    await printJson({ error: USAGE })
    process.exit(1)
  }
  const port = flags.port ?? 0
  const maxSeconds = flags['max-seconds'] ?? 120

  // Hard limit first, so that even a start-up that hangs ends by itself.
  setTimeout(() => { stop(0) }, maxSeconds * 1000)
  process.on('SIGTERM', () => { stop(0) })
  process.on('SIGINT', () => { stop(0) })

  node = await createNode({
    privateKey: await privateKeyFromSeedHex(flags['seed-hex']),
    listen: [`/ip4/127.0.0.1/tcp/${port}`],
    userAgent: `mim4-interop-serve/0.1.0 js-libp2p/2.x node/${process.versions.node}`
  })
  await printJson({
    peer_id: node.peerId.toString(),
    multiaddrs: node.getMultiaddrs().map(ma => ma.toString())
  })
}

main().catch(async err => {
  await printJson({ error: errorMessage(err) })
  stop(1)
})
