// Pusher's HTTP API through its Node server SDK (`pusher`): triggers with socket_id exclusion
// and info, batches, channel queries, presence users, terminating a user's connections.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import Pusher from "pusher";

import { startServer, within } from "../../js/test/support.js";
import { once, pusherClient, subscribed } from "./pusher.js";

const APP = { appId: "1", key: "app-key", secret: "app-secret" };
let server;
let host;
let port;
let sdk;

before(async () => {
  server = await startServer(["--pusher-app", `${APP.appId}:${APP.key}:${APP.secret}`, "--pusher-app", "2:key-2:secret-2"]);
  [host, port] = server.addr.split(":");
  sdk = new Pusher({ ...APP, host, port, useTLS: false });
});
after(async () => {
  await server.kill();
});

function client({ user, signinAs, key = APP.key, signer = sdk } = {}) {
  const member = user && { user_id: user, user_info: { name: user } };
  return pusherClient(server.addr, { key, signer, member, signinAs });
}

async function json(response) {
  assert.equal(response.status, 200);
  return response.json();
}

test("a trigger with socket_id skips that connection; info answers the counts", async () => {
  const ann = client({ user: "ann" });
  const bob = client({ user: "bob" });
  const [a, b] = [ann.subscribe("presence-team"), bob.subscribe("presence-team")];
  await Promise.all([subscribed(a), subscribed(b)]);
  const heardByAnn = [];
  a.bind("saved", (data) => heardByAnn.push(data));
  const heard = once(b, "saved");
  const answer = await json(await sdk.trigger("presence-team", "saved", { n: 1 }, { socket_id: ann.connection.socket_id, info: "user_count,subscription_count" }));
  assert.deepEqual(answer, { channels: { "presence-team": { user_count: 2, subscription_count: 2 } } });
  assert.deepEqual(await heard, { n: 1 });
  // A second event that Ann does hear: she heard it, and never the first.
  const second = once(a, "saved");
  await sdk.trigger("presence-team", "saved", { n: 2 });
  await second;
  assert.deepEqual(heardByAnn, [{ n: 2 }]);
  await assert.rejects(sdk.trigger("presence-team", "x", {}, { socket_id: "1.2", info: "bogus" }), (err) => err.status === 400);
  ann.disconnect();
  bob.disconnect();
});

test("a batch triggers each of its events, and says each one's counts", async () => {
  const ann = client({ user: "ann" });
  const [x, y] = [ann.subscribe("batch-x"), ann.subscribe("presence-batch")];
  await Promise.all([subscribed(x), subscribed(y)]);
  const heard = Promise.all([once(x, "one"), once(y, "two")]);
  const answer = await json(await sdk.triggerBatch([
    { channel: "batch-x", name: "one", data: "1", info: "subscription_count" },
    { channel: "presence-batch", name: "two", data: "2", info: "user_count" },
  ]));
  assert.deepEqual(answer, { batch: [{ subscription_count: 1 }, { user_count: 1 }] });
  assert.deepEqual(await heard, [1, 2]);
  const tooMany = Array.from({ length: 11 }, (_, n) => ({ channel: "batch-x", name: "e", data: String(n) }));
  await assert.rejects(sdk.triggerBatch(tooMany), (err) => err.status === 400);
  ann.disconnect();
});

test("channel queries list the app's occupied channels, one channel's state, and a presence channel's users", async () => {
  const ann = client({ user: "ann" });
  const bob = client({ user: "bob" });
  const other = client({ key: "key-2", signer: new Pusher({ appId: "2", key: "key-2", secret: "secret-2", host, port, useTLS: false }), user: "zed" });
  const subs = [ann.subscribe("presence-lobby"), bob.subscribe("presence-lobby"), ann.subscribe("query-a"), bob.subscribe("query-b"), other.subscribe("presence-lobby")];
  await Promise.all(subs.map(subscribed));

  const all = await json(await sdk.get({ path: "/channels" }));
  for (const name of ["presence-lobby", "query-a", "query-b"]) assert.ok(name in all.channels, `${name} in ${JSON.stringify(all)}`);
  const prefixed = await json(await sdk.get({ path: "/channels", params: { filter_by_prefix: "presence-", info: "user_count" } }));
  // App 2's member of its own presence-lobby is not app 1's.
  assert.deepEqual(prefixed.channels["presence-lobby"], { user_count: 2 });
  await assert.rejects(sdk.get({ path: "/channels", params: { info: "user_count" } }), (err) => err.status === 400);

  const lobby = await json(await sdk.get({ path: "/channels/presence-lobby", params: { info: "user_count,subscription_count" } }));
  assert.deepEqual(lobby, { occupied: true, user_count: 2, subscription_count: 2 });
  assert.deepEqual(await json(await sdk.get({ path: "/channels/nobody-here" })), { occupied: false });
  const users = await json(await sdk.get({ path: "/channels/presence-lobby/users" }));
  assert.deepEqual(users.users.map((u) => u.id).sort(), ["ann", "bob"]);
  await assert.rejects(sdk.get({ path: "/channels/query-a/users" }), (err) => err.status === 400);
  await assert.rejects(new Pusher({ ...APP, secret: "x", host, port, useTLS: false }).get({ path: "/channels" }), (err) => err.status === 401);
  for (const c of [ann, bob, other]) c.disconnect();
});

test("terminating a user's connections closes each one signed in as that user, with 4009", async () => {
  const ann1 = client({ signinAs: { id: "ann" } });
  const ann2 = client({ signinAs: { id: "ann" } });
  const bob = client({ signinAs: { id: "bob" } });
  for (const c of [ann1, ann2, bob]) c.signin();
  await Promise.all([ann1, ann2, bob].map((c) => within("sign-in", c.user.signinDonePromise)));
  const closed = [ann1, ann2].map((c) => within("close", new Promise((resolve) => {
    c.connection.bind("error", (e) => e.data?.code === 4009 && resolve(e.data.code));
  })));
  const bobClosed = [];
  bob.connection.bind("state_change", ({ current }) => bobClosed.push(current));
  await json(await sdk.terminateUserConnections("ann"));
  assert.deepEqual(await Promise.all(closed), [4009, 4009]);
  // pusher-js does not reconnect after 4009.
  for (const c of [ann1, ann2]) assert.notEqual(c.connection.state, "connected");
  // Bob is untouched: a trigger still reaches his connection.
  const news = bob.subscribe("after-terminate");
  await subscribed(news);
  assert.deepEqual(bobClosed, []);
  for (const c of [ann1, ann2, bob]) c.disconnect();
});
