// The benchmark's baseline: Bun's WebSocket server, which is uWebSockets inside. Same routes as
// the bench configuration of wsgate: /ws/echo echoes, /ws/fan/{room} publishes to every other
// member of the room (ws.publish skips the sender, like wsgate's deliver_to_sender = false),
// /ws/chat/{room} to every member.
const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(process.env.PORT || 0),
  fetch(req, server) {
    const path = new URL(req.url).pathname;
    if (server.upgrade(req, { data: { path } })) return;
    return new Response("WebSocket only\n", { status: 426 });
  },
  websocket: {
    // The same bound as wsgate's limits.max_message_bytes in the bench configuration.
    maxPayloadLength: 16 * 1024 * 1024,
    idleTimeout: 0,
    open(ws) {
      if (ws.data.path !== "/ws/echo") ws.subscribe(ws.data.path);
    },
    message(ws, msg) {
      const path = ws.data.path;
      if (path === "/ws/echo") ws.send(msg);
      else if (path.startsWith("/ws/fan/")) ws.publish(path, msg);
      else server.publish(path, msg);
    },
  },
});
console.log(`listening ws://127.0.0.1:${server.port}`);
