// What both launchers (plc-server.mjs, pds-server.mjs) share: servers that listen on
// 127.0.0.1 only, an in-memory did:plc directory, the JSON state file the Python side
// waits for, and one stop on SIGTERM/SIGINT. install.sh copies every *.mjs next to the
// launchers (and into the run folder's hash), so a plain relative import finds this.
import { createRequire } from 'node:module'
import { writeFileSync } from 'node:fs'

const require = createRequire(import.meta.url)

export const HOST = '127.0.0.1'

// Express's app.listen(port) binds every interface; pin it to HOST.
export const bindTo = (app) => {
  const listen = app.listen.bind(app)
  app.listen = (port, ...rest) => listen(port, HOST, ...rest)
}

// An in-memory did:plc directory. Its URL names "localhost": the PDS's identity resolver
// refuses IP-literal URLs.
export const startMemoryPlc = async (port = 0) => {
  const plc = require('@did-plc/server')
  const server = plc.PlcServer.create({ db: plc.Database.mock(), port })
  bindTo(server.app)
  const listener = await server.start()
  return { server, url: `http://localhost:${listener.address().port}` }
}

export const writeState = (file, info) => {
  if (file) writeFileSync(file, JSON.stringify(info) + '\n')
}

// On SIGTERM/SIGINT destroy the servers in order (null ones skipped) and exit; a stop that
// hangs is cut short after 10 s, so the PID the tests signal always goes away.
export const stopOnSignals = (...servers) => {
  let stopping = false
  const stop = async () => {
    if (stopping) return
    stopping = true
    setTimeout(() => process.exit(1), 10_000).unref()
    try {
      for (const server of servers) if (server) await server.destroy()
    } finally {
      process.exit(0)
    }
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}
