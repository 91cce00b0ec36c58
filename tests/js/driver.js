// Drives the official phoenix client from pytest: JSON-line commands on stdin, JSON-line events on
// stdout. One process holds one Socket (the `ws` package is its WebSocket implementation).
"use strict";
const readline = require("readline");
const { Socket } = require("phoenix");
const WebSocket = require("ws");

let socket = null;
const channels = new Map();
const emit = (event) => process.stdout.write(JSON.stringify(event) + "\n");

function connect(cmd) {
  socket = new Socket(cmd.url, {
    transport: WebSocket,
    params: cmd.params || {},
    heartbeatIntervalMs: cmd.heartbeatIntervalMs || 30000,
    reconnectAfterMs: () => cmd.reconnectAfterMs || 3600000,
    rejoinAfterMs: () => 3600000,
  });
  socket.onOpen(() => emit({ ev: "socket_open" }));
  socket.onClose((e) => emit({ ev: "socket_close", code: e && e.code, reason: e && e.reason }));
  socket.onError(() => emit({ ev: "socket_error" }));
  socket.connect();
}

function join(cmd) {
  const channel = socket.channel(cmd.topic, cmd.params || {});
  channels.set(cmd.topic, channel);
  channel.onMessage = (event, payload) => {
    if (!event.startsWith("phx_") && !event.startsWith("chan_reply_")) {
      emit({ ev: "message", topic: cmd.topic, event, payload });
    }
    return payload;
  };
  channel.onError(() => emit({ ev: "channel_error", topic: cmd.topic }));
  channel.onClose(() => emit({ ev: "channel_close", topic: cmd.topic }));
  channel
    .join()
    .receive("ok", (response) => emit({ ev: "join_ok", id: cmd.id, topic: cmd.topic, response }))
    .receive("error", (response) => {
      emit({ ev: "join_error", id: cmd.id, topic: cmd.topic, response });
      channel.leave(); // no automatic re-join of a refused topic
    })
    .receive("timeout", () => emit({ ev: "join_timeout", id: cmd.id, topic: cmd.topic }));
}

function push(cmd) {
  const channel = channels.get(cmd.topic);
  if (!channel) return emit({ ev: "push_reply", id: cmd.id, status: "no_channel" });
  channel
    .push(cmd.event, cmd.payload || {}, cmd.timeout || 10000)
    .receive("ok", (response) => emit({ ev: "push_reply", id: cmd.id, status: "ok", response }))
    .receive("error", (response) => emit({ ev: "push_reply", id: cmd.id, status: "error", response }))
    .receive("timeout", () => emit({ ev: "push_reply", id: cmd.id, status: "timeout" }));
}

const handlers = {
  connect,
  join,
  push,
  leave: (cmd) => channels.get(cmd.topic) && channels.get(cmd.topic).leave(),
  disconnect: () => socket && socket.disconnect(() => emit({ ev: "disconnected" })),
  exit: () => process.exit(0),
};

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  try {
    handlers[cmd.cmd](cmd);
  } catch (err) {
    emit({ ev: "driver_error", id: cmd.id, error: String(err) });
  }
});
process.stdin.on("end", () => process.exit(0));
