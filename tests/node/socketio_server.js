// A Node Socket.IO server set up the way its users often set it up, for the doctor's framework
// matrix: `cors` names the page's origin and `allowRequest` enforces it on WebSocket upgrades too
// (cors alone only answers browsers' CORS checks). Usage: node socketio_server.js PORT
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const allowed = 'https://app.example';
const server = http.createServer();
const io = new Server(server, {
  cors: { origin: allowed },
  allowRequest: (req, callback) => callback(null, req.headers.origin === allowed),
});
io.on('connection', (socket) => socket.on('message', (m) => socket.send(m)));
server.listen(Number(process.argv[2]), '127.0.0.1', () => console.log('listening'));
