// Shared by probe.mjs and serve.mjs: argument parsing, the optional fixed
// identity, and the one js-libp2p configuration both fixtures use.
//
// The configuration is deliberately minimal so that the remote needs nothing
// beyond what the interop test checks: TCP, /noise, /yamux/1.0.0,
// /ipfs/id/1.0.0 (+ /ipfs/id/push/1.0.0, which is optional for the remote) and
// /ipfs/ping/1.0.0. No peer discovery, no DHT, no relay, no autonat/upnp, no
// connection monitor (js-libp2p 2.x otherwise pings every connection on its
// own every 10 s and aborts it on failure).

import './polyfill.mjs'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { identify, identifyPush } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { createLibp2p } from 'libp2p'

/**
 * Parses `argv` (without node and script) into positionals and flags.
 * `spec` maps a flag name (without --) to 'string' | 'int' | 'bool'.
 */
export function parseArgs (argv, spec) {
  const positionals = []
  const flags = {}
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (!arg.startsWith('--')) {
      positionals.push(arg)
      continue
    }
    let name = arg.slice(2)
    let value
    const eq = name.indexOf('=')
    if (eq !== -1) {
      value = name.slice(eq + 1)
      name = name.slice(0, eq)
    }
    const kind = spec[name]
    if (kind == null) {
      throw new Error(`unknown option --${name}`)
    }
    if (kind === 'bool') {
      if (value != null) throw new Error(`option --${name} takes no value`)
      flags[name] = true
      continue
    }
    if (value == null) {
      if (i + 1 >= argv.length) throw new Error(`option --${name} needs a value`)
      value = argv[++i]
    }
    if (kind === 'int') {
      if (!/^[0-9]+$/.test(value)) throw new Error(`option --${name} needs a non-negative integer, got ${JSON.stringify(value)}`)
      flags[name] = Number.parseInt(value, 10)
    } else {
      flags[name] = value
    }
  }
  return { positionals, flags }
}

/**
 * An Ed25519 private key from a 32-byte seed given as 64 hex digits, so that a
 * test can know (and put in a trust list) the fixture's PeerId in advance.
 * Without a seed js-libp2p makes a fresh random Ed25519 key.
 */
export async function privateKeyFromSeedHex (hex) {
  if (hex == null) return undefined
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) {
    throw new Error('--seed-hex needs 64 hex digits (a 32-byte Ed25519 seed)')
  }
  return generateKeyPairFromSeed('Ed25519', Uint8Array.from(Buffer.from(hex, 'hex')))
}

/**
 * Creates (and starts) a js-libp2p 2.x node with TCP + noise + yamux,
 * identify (+ push) and ping.
 */
export async function createNode ({ listen = [], privateKey, timeoutMs = 10_000, userAgent, runIdentifyOnConnectionOpen = true }) {
  return createLibp2p({
    ...(privateKey != null ? { privateKey } : {}),
    ...(userAgent != null ? { nodeInfo: { userAgent } } : {}),
    addresses: { listen },
    transports: [tcp()],
    // js-libp2p 2.x key names (1.x called the first one connectionEncryption).
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    peerDiscovery: [],
    connectionMonitor: { enabled: false },
    connectionManager: {
      dialTimeout: timeoutMs,
      inboundUpgradeTimeout: timeoutMs
    },
    services: {
      identify: identify({ timeout: timeoutMs, runOnConnectionOpen: runIdentifyOnConnectionOpen }),
      identifyPush: identifyPush({ timeout: timeoutMs }),
      ping: ping({ timeout: timeoutMs })
    }
  })
}

/** Writes one JSON line to stdout and resolves once it is flushed. */
export function printJson (obj) {
  return new Promise(resolve => {
    process.stdout.write(JSON.stringify(obj) + '\n', () => resolve())
  })
}

export function errorMessage (err) {
  if (err == null) return 'unknown error'
  if (typeof err === 'string') return err
  const name = err.name != null && err.name !== 'Error' ? `${err.name}: ` : ''
  const msg = err.message != null && err.message !== '' ? err.message : String(err)
  const causes = []
  let cause = err.cause
  for (let depth = 0; cause != null && depth < 3; depth++) {
    causes.push(cause.message ?? String(cause))
    cause = cause.cause
  }
  // AggregateError (e.g. every address of a dial failed)
  if (Array.isArray(err.errors) && err.errors.length > 0) {
    causes.push(...err.errors.slice(0, 3).map(e => e?.message ?? String(e)))
  }
  return name + msg + (causes.length > 0 ? ` (${causes.join('; ')})` : '')
}
