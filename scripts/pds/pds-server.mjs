// One node process: an in-memory did:plc directory (unless PDS_DID_PLC_URL names one),
// then the reference PDS configured
// from PDS_* env the way the official entry point does. Both listen on 127.0.0.1 only.
// Writes {pdsUrl, plcUrl, pid, version} as JSON to $PDS_STATE_FILE once it is up.
import { createRequire } from 'node:module'
import { writeFileSync } from 'node:fs'

const require = createRequire(import.meta.url)
const plc = require('@did-plc/server')
const { PDS, envToCfg, envToSecrets, readEnv } = await import('@atproto/pds')
const pdsPkg = require('@atproto/pds/package.json')

const host = '127.0.0.1'
const bindTo = (app) => {
  const listen = app.listen.bind(app)
  app.listen = (port, ...rest) => listen(port, host, ...rest)
}

// With PDS_DID_PLC_URL set, use that directory (shared by several PDSs, plc-server.mjs);
// else start an in-memory one of our own.
let plcServer = null
if (!process.env.PDS_DID_PLC_URL) {
  plcServer = plc.PlcServer.create({ db: plc.Database.mock(), port: 0 })
  bindTo(plcServer.app)
  const plcListener = await plcServer.start()
  // The PDS's identity resolver refuses IP-literal URLs, so the PLC is named "localhost".
  process.env.PDS_DID_PLC_URL = `http://localhost:${plcListener.address().port}`
}

const env = readEnv()
env.version ??= pdsPkg.version
const pds = await PDS.create(envToCfg(env), envToSecrets(env))
bindTo(pds.app)
const listener = await pds.start()
const info = {
  pdsUrl: `http://${host}:${listener.address().port}`,
  plcUrl: process.env.PDS_DID_PLC_URL,
  pid: process.pid,
  version: pdsPkg.version,
}
if (process.env.PDS_STATE_FILE) writeFileSync(process.env.PDS_STATE_FILE, JSON.stringify(info) + '\n')
console.log(`PDS ${pdsPkg.version} listening on ${info.pdsUrl} (PLC ${info.plcUrl})`)

let stopping = false
const stop = async () => {
  if (stopping) return
  stopping = true
  setTimeout(() => process.exit(1), 10_000).unref()
  try {
    await pds.destroy()
    if (plcServer) await plcServer.destroy()
  } finally {
    process.exit(0)
  }
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
