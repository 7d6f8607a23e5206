// One node process: an in-memory did:plc directory (unless PDS_DID_PLC_URL names one),
// then the reference PDS configured
// from PDS_* env the way the official entry point does. Both listen on 127.0.0.1 only.
// Writes {pdsUrl, plcUrl, pid, version} as JSON to $PDS_STATE_FILE once it is up.
import { createRequire } from 'node:module'
import { HOST, bindTo, startMemoryPlc, stopOnSignals, writeState } from './lifecycle.mjs'

const require = createRequire(import.meta.url)
const { PDS, envToCfg, envToSecrets, readEnv } = await import('@atproto/pds')
const pdsPkg = require('@atproto/pds/package.json')

// With PDS_DID_PLC_URL set, use that directory (shared by several PDSs, plc-server.mjs);
// else start an in-memory one of our own.
let plcServer = null
if (!process.env.PDS_DID_PLC_URL) {
  const plc = await startMemoryPlc()
  plcServer = plc.server
  process.env.PDS_DID_PLC_URL = plc.url
}

const env = readEnv()
env.version ??= pdsPkg.version
const pds = await PDS.create(envToCfg(env), envToSecrets(env))
bindTo(pds.app)
const listener = await pds.start()
const info = {
  pdsUrl: `http://${HOST}:${listener.address().port}`,
  plcUrl: process.env.PDS_DID_PLC_URL,
  pid: process.pid,
  version: pdsPkg.version,
}
writeState(process.env.PDS_STATE_FILE, info)
console.log(`PDS ${pdsPkg.version} listening on ${info.pdsUrl} (PLC ${info.plcUrl})`)
stopOnSignals(pds, plcServer)
