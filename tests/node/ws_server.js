// A Node `ws` server set up the way its users often set it up, for the doctor's framework matrix:
// verifyClient admits one Origin, handleProtocols picks chat.v1. Usage: node ws_server.js PORT
'use strict';
const { WebSocketServer } = require('ws');

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port: Number(process.argv[2]),
  verifyClient: (info) => info.origin === 'https://app.example',
  handleProtocols: (protocols) => (protocols.has('chat.v1') ? 'chat.v1' : false),
});
wss.on('connection', (ws) => ws.on('message', (m) => ws.send(m)));
wss.on('listening', () => console.log('listening'));
