// Echo server for kn_sock's interop tests: Node.js `ws` on 127.0.0.1, port chosen by the OS.
//
// Prints {"port": N} as its first stdout line, then serves until stdin closes (the test
// owning it went away) or SIGTERM. Paths:
//   /deflate[?id=X]  permessage-deflate on, threshold 0 (every message compressed)
//   /plain[?id=X]    permessage-deflate off
//   GET /closes?id=X (plain HTTP) -> JSON of the close ws saw on connection X, or null
// Text commands (anything else is echoed with its own type):
//   close:CODE:REASON      ws.close(CODE, REASON)
//   frag:text|binary:N:SIZE  send one SIZE-byte message as N fragments (fin:false ... fin:true)
//   stats                  JSON {extensions, bytesRead, bytesWritten} of the socket so far
'use strict';

const http = require('http');
const { URL } = require('url');
const { WebSocketServer } = require('ws');

const MAX_PAYLOAD = 8 * 1024 * 1024;
const deflate = new WebSocketServer({
  noServer: true,
  maxPayload: MAX_PAYLOAD,
  perMessageDeflate: { threshold: 0 },
});
const plain = new WebSocketServer({ noServer: true, maxPayload: MAX_PAYLOAD, perMessageDeflate: false });
const closes = new Map();

function pattern(size, binary) {
  const buf = Buffer.alloc(size);
  for (let i = 0; i < size; i++) buf[i] = binary ? (i * 7) & 0xff : 0x61 + (i % 26);
  return buf;
}

function sendFragments(ws, kind, count, size) {
  const binary = kind === 'binary';
  const data = pattern(size, binary);
  const step = Math.ceil(size / count);
  for (let i = 0; i < count; i++) {
    const chunk = data.subarray(i * step, Math.min(size, (i + 1) * step));
    ws.send(binary ? chunk : chunk.toString('latin1'), { binary, fin: i === count - 1 });
  }
}

function onConnection(ws, req) {
  const url = new URL(req.url, 'http://localhost');
  const id = url.searchParams.get('id');
  const socket = req.socket;
  ws.on('message', (data, isBinary) => {
    if (!isBinary) {
      const text = data.toString('utf8');
      if (text.startsWith('close:')) {
        const [, code, ...rest] = text.split(':');
        ws.close(Number(code), rest.join(':'));
        return;
      }
      if (text.startsWith('frag:')) {
        const [, kind, count, size] = text.split(':');
        sendFragments(ws, kind, Number(count), Number(size));
        return;
      }
      if (text === 'stats') {
        ws.send(JSON.stringify({
          extensions: ws.extensions,
          bytesRead: socket.bytesRead,
          bytesWritten: socket.bytesWritten,
        }));
        return;
      }
    }
    ws.send(data, { binary: isBinary });
  });
  ws.on('close', (code, reason) => {
    if (id) closes.set(id, { code, reason: reason.toString('utf8') });
  });
  ws.on('error', (err) => {
    if (id) closes.set(id + ':error', { message: String(err && err.message) });
  });
}

deflate.on('connection', onConnection);
plain.on('connection', onConnection);

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname === '/closes') {
    const id = url.searchParams.get('id');
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ close: closes.get(id) || null, error: closes.get(id + ':error') || null }));
    return;
  }
  res.writeHead(404);
  res.end();
});

server.on('upgrade', (req, socket, head) => {
  const path = new URL(req.url, 'http://localhost').pathname;
  const wss = path === '/deflate' ? deflate : path === '/plain' ? plain : null;
  if (wss === null) {
    socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});

function stop() {
  for (const ws of deflate.clients) ws.terminate();
  for (const ws of plain.clients) ws.terminate();
  server.close();
  process.exit(0);
}
process.stdin.on('end', stop);
process.stdin.resume();
process.on('SIGTERM', stop);
