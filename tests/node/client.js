// Node `ws` peer for wsgate's integration tests. Usage: node client.js MODE URL...
//   echo URL                text and binary round trips, 1 byte to 1 MiB
//   chat URL_A URL_B URL_C  A and B share a room, C is elsewhere: each sees only its room
//   echo-proto URL P1,P2     echo with offered subprotocols; prints the selected one
//   hold URL                connect, print "open", then print the close code and reason as JSON
//   members URL N COUNT     N members of one room: print "open" once all are in, then check that
//                           each gets COUNT messages "PUBLISHER:SEQ" with every publisher's SEQ
//                           counting up from 0; print "members ok"
//   deflate URL             with ws's default permessage-deflate offer: JSON-like text and binary
//                           round trips; print the negotiated extensions as JSON
'use strict';
const WebSocket = require('ws');

function open(url, protocols) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, protocols);
    ws.once('open', () => resolve(ws));
    ws.once('unexpected-response', (_req, res) => reject(new Error(`refused: ${res.statusCode} ${res.headers['wsgate-reason']}`)));
    ws.once('error', reject);
  });
}

// Every message is queued as it arrives, so none is lost between two awaits.
function inbox(ws) {
  const queue = [];
  const waiters = [];
  ws.on('message', (data, isBinary) => {
    const m = { data, isBinary };
    if (waiters.length) waiters.shift().resolve(m); else queue.push(m);
  });
  ws.on('close', (code) => { while (waiters.length) waiters.shift().reject(new Error(`closed ${code}`)); });
  return () => (queue.length ? Promise.resolve(queue.shift()) : new Promise((resolve, reject) => waiters.push({ resolve, reject })));
}

async function echo(url) {
  const ws = await open(url);
  const next = inbox(ws);
  const text = 'héllo ✓';
  ws.send(text);
  let m = await next();
  if (m.isBinary || m.data.toString() !== text) throw new Error('text echo mismatch');
  for (const size of [1, 125, 126, 65535, 65536, 1 << 20]) {
    const buf = Buffer.alloc(size);
    for (let i = 0; i < size; i++) buf[i] = (i * 31) & 0xff;
    ws.send(buf);
    m = await next();
    if (!m.isBinary || !buf.equals(m.data)) throw new Error(`binary echo mismatch at ${size}`);
  }
  ws.close(1000);
  console.log('echo ok');
}

async function chat(a, b, c) {
  const [wa, wb, wc] = await Promise.all([open(a), open(b), open(c)]);
  const [na, nb] = [inbox(wa), inbox(wb)];
  let stray = null;
  wc.on('message', (d) => { stray = d.toString(); });
  wa.send('from A');
  if ((await nb()).data.toString() !== 'from A') throw new Error('B did not get A');
  // A also receives its own message (deliver_to_sender = true by default)
  if ((await na()).data.toString() !== 'from A') throw new Error('A did not get its own message');
  wb.send('from B');
  if ((await na()).data.toString() !== 'from B') throw new Error('A did not get B');
  await new Promise((r) => setTimeout(r, 300));
  if (stray !== null) throw new Error(`another room received ${stray}`);
  for (const w of [wa, wb, wc]) w.close(1000);
  console.log('chat ok');
}

async function echoProto(url, protocols) {
  // What a browser does: a token rides in Sec-WebSocket-Protocol next to the real subprotocol.
  const ws = await open(url, protocols.split(','));
  const next = inbox(ws);
  ws.send('via subprotocol');
  if ((await next()).data.toString() !== 'via subprotocol') throw new Error('echo mismatch');
  console.log(`protocol ${ws.protocol}`);
  ws.close(1000);
}

async function hold(url) {
  const ws = await open(url);
  console.log('open');
  ws.on('close', (code, reason) => {
    console.log(JSON.stringify({ code, reason: reason.toString() }));
    process.exit(0);
  });
}

async function members(url, n, count) {
  const all = [];
  for (let i = 0; i < Number(n); i++) all.push(await open(url));
  const done = all.map((ws, i) => new Promise((resolve, reject) => {
    const next = {};
    let got = 0;
    ws.on('message', (data) => {
      const [who, seq] = data.toString().split(':');
      const want = next[who] || 0;
      if (Number(seq) !== want) reject(new Error(`member ${i}: ${who} sent ${want} next, got ${seq}`));
      next[who] = want + 1;
      if (++got === Number(count)) resolve();
    });
    ws.on('close', (code) => reject(new Error(`member ${i} closed ${code} after ${got}`)));
  }));
  console.log('open');
  await Promise.all(done);
  for (const ws of all) ws.terminate();
  console.log('members ok');
}

async function deflate(url) {
  const ws = await open(url);
  const next = inbox(ws);
  const text = JSON.stringify({ user: 'alice', items: Array.from({ length: 200 }, (_, i) => ({ id: i, text: 'hello world' })) });
  ws.send(text);
  let m = await next();
  if (m.isBinary || m.data.toString() !== text) throw new Error('text echo mismatch');
  const bin = Buffer.alloc(65536, 7);
  ws.send(bin);
  m = await next();
  if (!m.isBinary || !Buffer.from(m.data).equals(bin)) throw new Error('binary echo mismatch');
  console.log(JSON.stringify({ extensions: ws.extensions }));
  ws.close(1000);
}

const [mode, ...urls] = process.argv.slice(2);
const run = { echo, chat, hold, members, deflate, 'echo-proto': echoProto }[mode];
if (!run) {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
run(...urls).catch((e) => {
  console.error(e.message);
  process.exit(1);
});
