// Sends a fixed set of calls to Portrait through one official Node.js SDK, unmodified, and records what
// the SDK reported (its errors, callbacks and HTTP answers) and, when a proxy is asked for, what went over the wire;
// the report is written to the file named by "out", and each HTTP answer is said on stdout as it comes.
//
// node send.js '{"sdk": "segment"|"rudder", "host": "http://127.0.0.1:PORT", "writeKey": "...", "run": "prefix",
//                "t0": <ms since epoch>, "bulk": 120, "flushAt": 20, "failFirst": 0, "proxy": false,
//                "out": "report.json", "maxRetries": 3, "retryCount": <the SDK's default>}'
// (run with NODE_PATH pointing at the node_modules that hold the SDKs)
// With "proxy" (or "failFirst" > 0) the SDK talks to a recording proxy on loopback that forwards every request to
// the host unchanged; the first "failFirst" requests are answered 503 after Portrait has accepted them (a lost
// acknowledgement), so the SDK sends the same batch again.
'use strict'
const http = require('http')
const zlib = require('zlib')

const cfg = JSON.parse(process.argv[2])
const run = cfg.run
const report = { errors: [], callbacks: { ok: 0, failed: [] }, responses: [], answeredAt: [], wire: [], sent: [] }

// Each HTTP answer's status, and when it came (ms since epoch, for the retry timing); said on stdout at once too, so
// a test can act on it while the SDK is still sending
function recordResponse(status) {
  report.responses.push(status)
  report.answeredAt.push(Date.now())
  process.stdout.write(`answered ${status}\n`)
}

function startProxy(target) {
  const upstream = new URL(target)
  let failed = 0
  const server = http.createServer((req, res) => {
    const chunks = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', () => {
      const raw = Buffer.concat(chunks)
      const encoding = req.headers['content-encoding']
      let body = null
      try {
        body = JSON.parse((encoding === 'gzip' ? zlib.gunzipSync(raw) : raw).toString('utf8'))
      } catch (e) {
        body = { unreadable: String(e) }
      }
      const headers = { ...req.headers, host: upstream.host }
      delete headers.connection
      const forward = http.request({ host: upstream.hostname, port: upstream.port, path: req.url,
                                     method: req.method, headers }, (answer) => {
        const back = []
        answer.on('data', (c) => back.push(c))
        answer.on('end', () => {
          const fail = failed < (cfg.failFirst || 0)
          if (fail) failed++
          report.wire.push({ path: req.url, headers: req.headers, rawBytes: raw.length, body,
                             upstreamStatus: answer.statusCode, answered: fail ? 503 : answer.statusCode })
          if (fail) {
            res.writeHead(503, { 'content-type': 'application/json' })
            res.end('{"code": "injected"}')
          } else {
            res.writeHead(answer.statusCode, { 'content-type': answer.headers['content-type'] || 'application/json' })
            res.end(Buffer.concat(back))
          }
        })
      })
      forward.on('error', (e) => { res.writeHead(502); res.end(String(e)) })
      forward.end(raw)
    })
  })
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)))
}

// The calls, the same for both SDKs (each SDK's own call shapes).
function calls() {
  const at = (seconds) => new Date(cfg.t0 + seconds * 1000)
  const list = [
    ['page', { anonymousId: `${run}-anon`, name: 'Home', category: 'Shop', properties: { path: '/', title: 'Home' },
               context: { page: { url: 'https://shop.example/' } }, timestamp: at(0) }],
    ['track', { anonymousId: `${run}-anon`, event: 'Product Viewed', timestamp: at(1),
                properties: { sku: 'SKU-1', price: 19.99, tags: ['a', 'b'], nested: { x: 1, ok: true },
                              note: 'zażółć 🎉' } }],
    ['screen', { anonymousId: `${run}-device`, name: 'Cart', properties: { items: 2 }, timestamp: at(2) }],
    ['identify', { userId: `${run}-user`, anonymousId: `${run}-anon`, timestamp: at(3),
                   traits: { email: `${run}@example.com`, name: 'Ann Node', plan: 'pro', age: 33 },
                   context: { ip: '203.0.113.7', locale: 'pl-PL', campaign: { source: 'newsletter' } },
                   integrations: { All: true, Mixpanel: false } }],
    ['track', { userId: `${run}-user`, event: 'Order Completed', messageId: `${run}-order`, timestamp: at(4),
                properties: { order_id: 'O-1', revenue: 49.9, currency: 'PLN',
                              products: [{ sku: 'SKU-1', quantity: 2 }] } }],
    ['group', { userId: `${run}-user`, groupId: `${run}-company`, traits: { name: 'ACME', employees: 20 },
                timestamp: at(5) }],
    ['alias', { userId: `${run}-user`, previousId: `${run}-device`, timestamp: at(6) }],
  ]
  for (let i = 0; i < (cfg.bulk || 0); i++) {
    list.push(['track', { userId: `${run}-user`, event: 'Bulk Event', properties: { i }, messageId: `${run}-bulk-${i}` }])
  }
  return list
}

function recordCallback(err) {
  if (err) report.callbacks.failed.push(String(err && (err.message || err)))
  else report.callbacks.ok++
}

async function withSegment(host) {
  const { Analytics } = require('@segment/analytics-node')
  const analytics = new Analytics({ writeKey: cfg.writeKey, host, flushAt: cfg.flushAt || 15, flushInterval: 200,
                                    maxRetries: cfg.maxRetries ?? 3 })
  analytics.on('error', (e) => report.errors.push({ code: e.code, reason: String(e.reason) }))
  analytics.on('http_response', (r) => recordResponse(r.status))
  for (const [kind, message] of calls()) {
    analytics[kind](message, recordCallback)
    report.sent.push({ kind, message })
  }
  await analytics.closeAndFlush({ timeout: 30000 })
}

async function withRudder(host) {
  const Analytics = require('@rudderstack/rudder-sdk-node')
  const axios = require('axios')
  const axiosInstance = axios.create()
  axiosInstance.interceptors.response.use(
    (r) => { recordResponse(r.status); return r },
    (e) => { recordResponse(e.response ? e.response.status : String(e.code)); return Promise.reject(e) })
  const client = new Analytics(cfg.writeKey, { dataPlaneUrl: host, flushAt: cfg.flushAt || 20, flushInterval: 200,
                                               axiosInstance, logLevel: 'error', retryCount: cfg.retryCount,
                                               errorHandler: (e) => report.errors.push({ reason: String(e) }) })
  for (const [kind, message] of calls()) {
    client[kind](message, recordCallback)
    report.sent.push({ kind, message })
  }
  // flush() sends one batch of at most flushAt messages: repeat until the queue is empty and nothing is in flight.
  for (let i = 0; i < 1000 && (client.queue.length || i === 0); i++) {
    await client.flush().catch((e) => report.errors.push({ reason: String(e) }))
  }
  if (client.pendingFlush) await client.pendingFlush.catch(() => {})
}

async function main() {
  const proxy = cfg.proxy || cfg.failFirst ? await startProxy(cfg.host) : null
  const host = proxy ? `http://127.0.0.1:${proxy.address().port}` : cfg.host
  if (cfg.sdk === 'segment') await withSegment(host)
  else if (cfg.sdk === 'rudder') await withRudder(host)
  else throw new Error(`unknown sdk ${cfg.sdk}`)
  // every call's callback has run once delivery is over (or given up)
  for (let i = 0; i < 300 && report.callbacks.ok + report.callbacks.failed.length < report.sent.length; i++) {
    await new Promise((r) => setTimeout(r, 50))
  }
  if (proxy) proxy.close()
  require('fs').writeFileSync(cfg.out, JSON.stringify(report))
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack || e))
  process.exit(1)
})
