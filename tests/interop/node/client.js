// Scripted Node.js `ws` client for kn_sock's interop tests.
//
//   node client.js URL [--no-deflate] [--close=client|server]
//
// Runs a fixed exchange against an echo server (kn_sock's, in the tests) and prints ONE JSON
// line on stdout: {"ok": bool, "extensions": "...", "steps": {name: true | "why it failed"},
// "close": {"code", "reason"}, "wire": {...}}. Exits 0 when it could report, 1 on a hang
// (bounded by a 30 s watchdog) or a crash. With --close=client it closes with 4001
// "node says bye"; with --close=server it sends "close:4002:server says bye" and the echo
// server is expected to close with that code and reason.
'use strict';

const crypto = require('crypto');
const WebSocket = require('ws');

const args = process.argv.slice(2);
const url = args.find((a) => !a.startsWith('--'));
const deflate = !args.includes('--no-deflate');
const closeMode = (args.find((a) => a.startsWith('--close=')) || '--close=client').slice(8);
const report = { ok: false, extensions: null, steps: {}, close: null, wire: {} };

const watchdog = setTimeout(() => {
  report.error = 'watchdog: no result within 30 s';
  process.stdout.write(JSON.stringify(report) + '\n');
  process.exit(1);
}, 30000);

const ws = new WebSocket(url, {
  perMessageDeflate: deflate ? { threshold: 0 } : false,
  maxPayload: 8 * 1024 * 1024,
});
const inbox = [];
const waiting = [];
ws.on('message', (data, isBinary) => {
  const item = { data, isBinary };
  if (waiting.length) waiting.shift()(item);
  else inbox.push(item);
});
const closed = new Promise((resolve) => {
  ws.on('close', (code, reason) => resolve({ code, reason: reason.toString('utf8') }));
});
ws.on('error', (err) => {
  report.error = String(err && err.message);
});

function next() {
  if (inbox.length) return Promise.resolve(inbox.shift());
  return new Promise((resolve) => waiting.push(resolve));
}

function same(item, expected, binary) {
  if (item.isBinary !== binary) return `expected ${binary ? 'binary' : 'text'}, got the other`;
  const want = Buffer.isBuffer(expected) ? expected : Buffer.from(expected, 'utf8');
  if (!Buffer.from(item.data).equals(want)) return `payload differs (${item.data.length} vs ${want.length} bytes)`;
  return true;
}

async function step(name, sendIt, expected, binary) {
  sendIt();
  report.steps[name] = same(await next(), expected, binary);
}

async function run() {
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  report.extensions = ws.extensions;
  const text = 'héllo from node ✓ — ' + '🙂'.repeat(3);
  await step('text', () => ws.send(text), text, false);
  await step('empty-text', () => ws.send(''), '', false);
  const small = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  await step('binary', () => ws.send(small), small, true);
  await step('empty-binary', () => ws.send(Buffer.alloc(0)), Buffer.alloc(0), true);
  await step('fragmented-text', () => {
    ws.send('frag', { fin: false });
    ws.send('mented ', { fin: false });
    ws.send('tëxt', { fin: true });
  }, 'fragmented tëxt', false);
  const parts = [crypto.randomBytes(1000), crypto.randomBytes(70000), crypto.randomBytes(5)];
  await step('fragmented-binary', () => {
    parts.forEach((p, i) => ws.send(p, { binary: true, fin: i === parts.length - 1 }));
  }, Buffer.concat(parts), true);
  const big = crypto.randomBytes(1024 * 1024);
  await step('1MiB-binary', () => ws.send(big), big, true);
  const before = { read: ws._socket.bytesRead, written: ws._socket.bytesWritten };
  const compressible = 'kn_sock interop '.repeat(65536); // 1 MiB of text
  await step('1MiB-compressible-text', () => ws.send(compressible), compressible, false);
  report.wire = {
    compressibleWritten: ws._socket.bytesWritten - before.written,
    compressibleRead: ws._socket.bytesRead - before.read,
  };
  if (closeMode === 'server') ws.send('close:4002:server says bye');
  else ws.close(4001, 'node says bye');
  report.close = await closed;
  report.ok = Object.values(report.steps).every((v) => v === true);
}

run().then(
  () => {
    clearTimeout(watchdog);
    process.stdout.write(JSON.stringify(report) + '\n');
    process.exit(0);
  },
  (err) => {
    clearTimeout(watchdog);
    report.error = String((err && err.stack) || err);
    process.stdout.write(JSON.stringify(report) + '\n');
    process.exit(1);
  },
);
