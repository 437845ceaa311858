// Signed channels with Pusher's own SDKs: the server SDK (`pusher`) signs what pusher-js asks
// for, exactly as an app's auth endpoint would, and the real binary checks it: private,
// presence (members, joins and leaves), encrypted, cache channels, client events, sign-in and
// the user's own channel.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, test } from "node:test";

import Pusher from "pusher";

import { startServer, within } from "../../js/test/support.js";
import { once, pusherClient, subscribed } from "./pusher.js";

const MASTER_KEY = randomBytes(32).toString("base64");
const APP = { appId: "1", key: "app-key", secret: "app-secret" };
let server;
let host;
let port;
let sdk;

before(async () => {
  server = await startServer(["--pusher-app", `${APP.appId}:${APP.key}:${APP.secret}`]);
  [host, port] = server.addr.split(":");
  sdk = new Pusher({ ...APP, host, port, useTLS: false, encryptionMasterKeyBase64: MASTER_KEY });
});
after(async () => {
  await server.kill();
});

/** A pusher-js client whose auth endpoint is `signer` (the app's backend, in-process). */
function client({ user, signer = sdk, signinAs } = {}) {
  const member = user && { user_id: user.id, user_info: user.info };
  return pusherClient(server.addr, { key: APP.key, signer, member, signinAs });
}

/** Resolves with the data and the metadata (`user_id`) of the first `event` on `channel`. */
function onceWithMetadata(channel, event) {
  return within(`${event}`, new Promise((resolve) => channel.bind(event, (data, metadata) => resolve([data, metadata]))));
}

test("a private channel takes a subscription signed with the app's secret and refuses a forged one", async () => {
  const good = client();
  const forged = client({ signer: new Pusher({ ...APP, secret: "not-the-secret" }) });
  const orders = good.subscribe("private-orders");
  await subscribed(orders);
  const refused = await once(forged.subscribe("private-orders"), "pusher:subscription_error");
  assert.equal(refused.status, 401, JSON.stringify(refused));
  assert.match(refused.error, /invalid signature/);
  const heard = once(orders, "shipped");
  await sdk.trigger("private-orders", "shipped", { id: 1 });
  assert.deepEqual(await heard, { id: 1 });
  good.disconnect();
  forged.disconnect();
});

test("a presence channel lists its members once per user and tells joins and leaves", async () => {
  const ann = client({ user: { id: "ann", info: { name: "Ann" } } });
  const room = ann.subscribe("presence-room");
  const members = await subscribed(room);
  assert.equal(members.count, 1);
  assert.equal(members.me.id, "ann");
  assert.deepEqual(members.me.info, { name: "Ann" });

  // Bob's two connections are one member: one join for the first, no leave until the last.
  const added = once(room, "pusher:member_added");
  const bob1 = client({ user: { id: "bob", info: { name: "Bob" } } });
  const bobs = await subscribed(bob1.subscribe("presence-room"));
  assert.deepEqual((await added), { id: "bob", info: { name: "Bob" } });
  assert.equal(bobs.count, 2);
  assert.deepEqual(Object.keys(bobs.members).sort(), ["ann", "bob"]);
  const bob2 = client({ user: { id: "bob", info: { name: "Bob" } } });
  const again = await subscribed(bob2.subscribe("presence-room"));
  assert.equal(again.count, 2);

  const events = [];
  room.bind("pusher:member_added", (m) => events.push(["added", m.id]));
  room.bind("pusher:member_removed", (m) => events.push(["removed", m.id]));
  bob1.disconnect();
  // Ann hears the leave only when bob's last connection goes; the trigger after each step
  // shows what she had heard by then (it travels the same ordered path).
  const marker = async (n) => {
    const heard = once(room, "marker");
    await sdk.trigger("presence-room", "marker", n);
    await heard;
  };
  await marker(1);
  assert.deepEqual(events, []);
  const removed = once(room, "pusher:member_removed");
  bob2.disconnect();
  assert.equal((await removed).id, "bob");
  assert.equal(room.members.count, 1);
  ann.disconnect();
});

test("client events reach the channel's other members, never the sender, with the user id on presence", async () => {
  const ann = client({ user: { id: "ann" } });
  const bob = client({ user: { id: "bob" } });
  const [a, b] = [ann.subscribe("presence-chat"), bob.subscribe("presence-chat")];
  await Promise.all([subscribed(a), subscribed(b)]);
  const echoed = [];
  a.bind("client-typing", (data) => echoed.push(data));
  const heard = onceWithMetadata(b, "client-typing");
  assert.ok(a.trigger("client-typing", { typing: true }));
  const [data, metadata] = await heard;
  assert.deepEqual(data, { typing: true });
  assert.equal(metadata.user_id, "ann");
  // Bob answers; by the time Ann hears him, her own event would have reached her first.
  const answer = onceWithMetadata(a, "client-typing");
  b.trigger("client-typing", { typing: false });
  assert.deepEqual(await answer, [{ typing: false }, { user_id: "bob" }]);
  assert.equal(echoed.length, 1, "the sender never hears its own event");

  // On a public channel a client event is refused with an error, and nobody hears it.
  const news = ann.subscribe("news");
  await subscribed(news);
  const error = once(ann.connection, "error");
  news.trigger("client-x", {});
  const refused = await error;
  assert.match(JSON.stringify(refused), /private and presence channels only/);
  ann.disconnect();
  bob.disconnect();
});

test("client events are limited to 10 a second per connection, as Pusher documents", async () => {
  const ann = client();
  const bob = client();
  const [a, b] = [ann.subscribe("private-burst"), bob.subscribe("private-burst")];
  await Promise.all([subscribed(a), subscribed(b)]);
  const heard = [];
  b.bind("client-n", (n) => heard.push(n));
  const errors = [];
  ann.connection.bind("error", (e) => errors.push(e));
  for (let n = 0; n < 30; n += 1) a.trigger("client-n", n);
  const last = once(b, "marker");
  await sdk.trigger("private-burst", "marker", {});
  // The marker was sent after every client event was read: all that passed arrived before it.
  await last;
  await within("the refusals", (async () => {
    while (errors.length + heard.length < 30) await new Promise((r) => setTimeout(r, 10));
  })());
  assert.ok(heard.length >= 10 && heard.length <= 12, `heard ${heard.length}`);
  assert.equal(errors.length, 30 - heard.length);
  assert.equal(errors[0].data.code, 4301, JSON.stringify(errors[0]));
  ann.disconnect();
  bob.disconnect();
});

test("a cache channel replays its last event to a new subscriber, or says cache_miss", async () => {
  const ann = client();
  const miss = once(ann.subscribe("cache-empty"), "pusher:cache_miss");
  await miss;
  await sdk.trigger("cache-prices", "price", { eur: 1 });
  await sdk.trigger("cache-prices", "price", { eur: 2 });
  const prices = ann.subscribe("cache-prices");
  assert.deepEqual(await once(prices, "price"), { eur: 2 });
  ann.disconnect();
});

test("an encrypted channel carries the SDK's ciphertext through, and pusher-js decrypts it", async () => {
  const ann = client();
  const secret = ann.subscribe("private-encrypted-dm");
  await subscribed(secret);
  const heard = once(secret, "note");
  await sdk.trigger("private-encrypted-dm", "note", { text: "only for you" });
  assert.deepEqual(await heard, { text: "only for you" });
  ann.disconnect();
});

test("a signed-in user gets what the server sends to that user; a forged sign-in is refused", async () => {
  const ann = client({ signinAs: { id: "42", user_info: { name: "Ann" } } });
  ann.signin();
  await within("sign-in", ann.user.signinDonePromise);
  // The user's own channel is subscribed by pusher-js after the sign-in.
  await subscribed(ann.user.serverToUserChannel);
  const heard = once(ann.user, "note");
  await sdk.sendToUser("42", "note", { hello: "ann" });
  assert.deepEqual(await heard, { hello: "ann" });

  const forger = client({ signer: new Pusher({ ...APP, secret: "nope" }), signinAs: { id: "42" } });
  const error = once(forger.connection, "error");
  forger.signin();
  const refused = await error;
  assert.equal(refused.data.code, 4009, JSON.stringify(refused));
  // Nor can anyone subscribe to another user's channel without signing in as them.
  // (pusher-js will not name a # channel itself: the raw frame.)
  const stolen = within("refusal", new Promise((resolve) => {
    forger.connection.bind("message", (m) => m.event === "pusher:subscription_error" && resolve(m));
  }));
  forger.send_event("pusher:subscribe", { channel: "#server-to-user-42" });
  const answer = await stolen;
  assert.equal(answer.channel, "#server-to-user-42");
  assert.match(answer.data.error, /sign in as that user/);
  ann.disconnect();
  forger.disconnect();
});
