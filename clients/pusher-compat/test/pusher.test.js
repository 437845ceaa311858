// Pusher's own SDKs, installed from npm, against the real binary: pusher-js (the browser and
// Node client) and pusher (the Node server SDK). What is served so far: public channels,
// events triggered through the signed HTTP API, each app's channels its own.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import Pusher from "pusher";
import PusherClient from "pusher-js";
import { WebSocket } from "ws";

import { startServer, within } from "../../js/test/support.js";

const APP = { appId: "1", key: "app-key", secret: "app-secret" };
let server;
let host;
let port;

before(async () => {
  server = await startServer(["--pusher-app", `${APP.appId}:${APP.key}:${APP.secret}`, "--pusher-app", "2:other-key:other-secret"]);
  [host, port] = server.addr.split(":");
});
after(async () => {
  await server.kill();
});

function client(key = APP.key) {
  return new PusherClient(key, { wsHost: host, wsPort: Number(port), forceTLS: false, enabledTransports: ["ws"], cluster: "mt1", disableStats: true });
}

function sdk(overrides = {}) {
  return new Pusher({ ...APP, host, port, useTLS: false, ...overrides });
}

/** Resolves with the first call of `event` on `channel`. */
function once(channel, event) {
  return within(`${event} on ${channel.name}`, new Promise((resolve) => channel.bind(event, resolve)));
}

test("pusher-js connects, subscribes and receives what the server SDK triggers, on every channel named", async () => {
  const pusher = client();
  const orders = pusher.subscribe("orders");
  const odd = pusher.subscribe("news,a;b=c");
  await Promise.all([once(orders, "pusher:subscription_succeeded"), once(odd, "pusher:subscription_succeeded")]);
  assert.match(pusher.connection.socket_id, /^\d+\.\d+$/);
  const received = Promise.all([once(orders, "created"), once(odd, "created")]);
  const answer = await sdk().trigger(["orders", "news,a;b=c"], "created", { id: 7 });
  assert.equal(answer.status, 200);
  assert.deepEqual(await received, [{ id: 7 }, { id: 7 }]);
  pusher.disconnect();
});

test("each app's channels are its own", async () => {
  const mine = client();
  const theirs = client("other-key");
  const a = mine.subscribe("shared");
  const b = theirs.subscribe("shared");
  await Promise.all([once(a, "pusher:subscription_succeeded"), once(b, "pusher:subscription_succeeded")]);
  const heardByOther = [];
  b.bind("ping", (data) => heardByOther.push(data));
  const heard = once(a, "ping");
  await sdk().trigger("shared", "ping", "for app 1");
  assert.equal(await heard, "for app 1");
  // App 2's subscriber hears its own app's event, and never app 1's.
  const own = once(b, "ping");
  await sdk({ appId: "2", key: "other-key", secret: "other-secret" }).trigger("shared", "ping", "for app 2");
  assert.equal(await own, "for app 2");
  assert.deepEqual(heardByOther, ["for app 2"]);
  mine.disconnect();
  theirs.disconnect();
});

test("a request signed with another secret is 401, an unknown app 404", async () => {
  await assert.rejects(sdk({ secret: "wrong" }).trigger("orders", "x", {}), (err) => err.status === 401 && /signature/i.test(err.body));
  await assert.rejects(sdk({ appId: "9" }).trigger("orders", "x", {}), (err) => err.status === 404);
});

test("an unknown key is closed with Pusher's 4001", async () => {
  const pusher = client("no-such-key");
  const error = await within("error", new Promise((resolve) => pusher.connection.bind("error", resolve)));
  assert.equal(error.data?.code ?? error.error?.data?.code, 4001, JSON.stringify(error));
  pusher.disconnect();
});

test("a native client reaches no Pusher app's channel", async () => {
  const ws = new WebSocket(`ws://${server.addr}/ws?name=native`);
  const frames = [];
  const replies = within("three replies", new Promise((resolve) => {
    ws.on("message", (data) => {
      frames.push(JSON.parse(data));
      if (frames.filter((f) => f.id).length === 3) resolve();
    });
  }));
  await within("open", new Promise((resolve) => ws.on("open", resolve)));
  ws.send(JSON.stringify({ id: 1, op: "subscribe", channel: "pusher:1/orders" }));
  ws.send(JSON.stringify({ id: 2, op: "history", channel: "pusher:1/orders" }));
  ws.send(JSON.stringify({ id: 3, op: "publish", channel: "pusher:1/orders", data: { event: "forged", data: "x" } }));
  await replies;
  for (const id of [1, 2, 3]) {
    const reply = frames.find((f) => f.id === id);
    assert.equal(reply.error?.code, 110, JSON.stringify(reply));
  }
  ws.close();
});
