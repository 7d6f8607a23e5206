// A did:plc directory alone (in-memory database), on 127.0.0.1, for several PDS servers
// to share (pds-server.mjs with PDS_DID_PLC_URL set starts none of its own).
// Writes {plcUrl, pid} as JSON to $PLC_STATE_FILE once it is up.
import { startMemoryPlc, stopOnSignals, writeState } from './lifecycle.mjs'

const plc = await startMemoryPlc(Number(process.env.PLC_PORT ?? 0))
const info = { plcUrl: plc.url, pid: process.pid }
writeState(process.env.PLC_STATE_FILE, info)
console.log(`PLC listening on ${info.plcUrl}`)
stopOnSignals(plc.server)
