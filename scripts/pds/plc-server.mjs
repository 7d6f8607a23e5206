// A did:plc directory alone (in-memory database), on 127.0.0.1, for several PDS servers
// to share (pds-server.mjs with PDS_DID_PLC_URL set starts none of its own).
// Writes {plcUrl, pid} as JSON to $PLC_STATE_FILE once it is up.
import { createRequire } from 'node:module'
import { writeFileSync } from 'node:fs'

const require = createRequire(import.meta.url)
const plc = require('@did-plc/server')

const server = plc.PlcServer.create({ db: plc.Database.mock(), port: Number(process.env.PLC_PORT ?? 0) })
const listen = server.app.listen.bind(server.app)
server.app.listen = (port, ...rest) => listen(port, '127.0.0.1', ...rest)
const listener = await server.start()
// Named "localhost": the PDS's identity resolver refuses IP-literal URLs.
const info = { plcUrl: `http://localhost:${listener.address().port}`, pid: process.pid }
if (process.env.PLC_STATE_FILE) writeFileSync(process.env.PLC_STATE_FILE, JSON.stringify(info) + '\n')
console.log(`PLC listening on ${info.plcUrl}`)

let stopping = false
const stop = async () => {
  if (stopping) return
  stopping = true
  setTimeout(() => process.exit(1), 10_000).unref()
  try {
    await server.destroy()
  } finally {
    process.exit(0)
  }
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
