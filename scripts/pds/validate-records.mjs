// The reference lexicon validator (@atproto/lexicon, as installed with the PDS) over records.
//
//   node validate-records.mjs LEXICON_DIR < records.json
//     stdin: JSON [{"uri", "collection", "value": {...record JSON...}}]; record JSON goes
//     through jsonToLex first ({"$bytes"} -> bytes, {"$link"} -> CID), as the PDS does.
//   node validate-records.mjs LEXICON_DIR --firehose WS_URL --until-path DID/COLL/RKEY [--prefix NSID.]
//     replays the PDS's event stream from the start (subscribeRepos, cursor=0) and judges
//     every record created or updated in a collection starting with the prefix (default
//     science.alt.dataset.), overwritten and deleted versions included, up to the commit
//     that writes DID's record COLL/RKEY (a marker the caller wrote just before).
//
// Writes JSON [{"uri", "collection", "cid", "valid": bool, "error"?}] on stdout.
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { Lexicons, jsonToLex } = require('@atproto/lexicon')

function lexiconFiles(dir) {
  const out = []
  for (const name of readdirSync(dir)) {
    const path = join(dir, name)
    if (statSync(path).isDirectory()) out.push(...lexiconFiles(path))
    else if (name.endsWith('.json')) out.push(path)
  }
  return out
}

function parseArgs(argv) {
  const args = { dir: argv[0], prefix: 'science.alt.dataset.' }
  for (let i = 1; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '')
    args[key.replace(/-(\w)/g, (_, c) => c.toUpperCase())] = argv[i + 1]
  }
  return args
}

const args = parseArgs(process.argv.slice(2))
if (!args.dir) {
  console.error('usage: node validate-records.mjs LEXICON_DIR [--firehose WS_URL --until-path P]')
  process.exit(2)
}
const lexicons = new Lexicons()
for (const path of lexiconFiles(args.dir)) {
  const doc = JSON.parse(readFileSync(path, 'utf8'))
  if (doc.lexicon === 1 && typeof doc.id === 'string') lexicons.add(doc)
}

function judge(uri, collection, cid, lexValue) {
  try {
    lexicons.assertValidRecord(collection, lexValue)
    return { uri, collection, cid, valid: true }
  } catch (err) {
    return { uri, collection, cid, valid: false, error: String(err?.message ?? err) }
  }
}

async function fromFirehose() {
  const WebSocket = require('ws')
  const { cborDecodeMulti } = require('@atproto/common')
  const { readCar, cborToLexRecord } = require('@atproto/repo')
  const results = []
  const ws = new WebSocket(`${args.firehose}/xrpc/com.atproto.sync.subscribeRepos?cursor=0`)
  let chain = Promise.resolve()
  await new Promise((resolve, reject) => {
    let done = false
    const finish = (err) => {
      if (done) return
      done = true
      ws.terminate()
      err ? reject(err) : resolve()
    }
    const handle = async (data) => {
      const [header, body] = cborDecodeMulti(new Uint8Array(data))
      if (header.op === -1) throw new Error(`firehose error: ${JSON.stringify(body)}`)
      if (header.t !== '#commit') return
      const { blocks } = body.blocks ? await readCar(body.blocks) : { blocks: null }
      for (const op of body.ops) {
        const path = `${body.repo}/${op.path}`
        const collection = op.path.split('/')[0]
        if (op.action !== 'delete' && collection.startsWith(args.prefix)) {
          const uri = `at://${path}`
          const bytes = blocks && op.cid ? blocks.get(op.cid) : undefined
          if (bytes === undefined) {
            results.push({ uri, collection, cid: String(op.cid), valid: false,
              error: 'the record block is missing from its firehose commit' })
          } else {
            results.push(judge(uri, collection, String(op.cid), cborToLexRecord(bytes)))
          }
        }
        if (path === args.untilPath) finish()
      }
    }
    ws.on('message', (data) => {
      chain = chain.then(() => (done ? undefined : handle(data))).catch(finish)
    })
    ws.on('error', finish)
    ws.on('close', () => finish(done ? undefined : new Error('firehose closed before the marker')))
  })
  return results
}

function fromStdin() {
  const records = JSON.parse(readFileSync(0, 'utf8'))
  return records.map(({ uri, collection, cid, value }) => {
    let lexValue
    try {
      lexValue = jsonToLex(value)
    } catch (err) {
      return { uri, collection, cid, valid: false, error: `not lexicon JSON: ${err?.message ?? err}` }
    }
    return judge(uri, collection, cid, lexValue)
  })
}

const results = args.firehose ? await fromFirehose() : fromStdin()
process.stdout.write(JSON.stringify(results))
