// Two (and a third, doomed) nodes on one Redis, one Pusher app, webhooks in Pusher's format to a
// receiver that checks them with the server SDK's own validator: triggers and client events
// cross nodes, presence and counts are right from either node, and each webhook event happens
// once across the nodes, a SIGKILLed node's members included.

import assert from "node:assert/strict";
import http from "node:http";
import { after, before, test } from "node:test";

import Pusher from "pusher";

import { startRedis, startServer, within } from "../../js/test/support.js";
import { once, pusherClient, subscribed } from "./pusher.js";

const APP = { appId: "1", key: "app-key", secret: "app-secret" };
let redis;
let receiver;
let a;
let b;
const received = [];
const bodies = [];

/** The Node SDK pointed at one node. */
function sdkFor(node, secret = APP.secret) {
  const [host, port] = node.addr.split(":");
  return new Pusher({ ...APP, secret, host, port, useTLS: false });
}

before(async () => {
  redis = await startRedis();
  receiver = http.createServer((req, res) => {
    let rawBody = "";
    req.on("data", (chunk) => (rawBody += chunk));
    req.on("end", () => {
      bodies.push({ headers: req.headers, rawBody });
      for (const event of JSON.parse(rawBody).events) received.push(event);
      res.end("ok");
    });
  });
  await new Promise((resolve) => receiver.listen(0, "127.0.0.1", resolve));
  const flags = ["--redis-url", redis.url, "--presence-ttl", "4s", "--pusher-app", `${APP.appId}:${APP.key}:${APP.secret}`, "--pusher-webhook-url", `http://127.0.0.1:${receiver.address().port}/pusher`];
  [a, b] = await Promise.all([startServer(flags), startServer(flags)]);
  a.flags = flags;
});
after(async () => {
  await Promise.all([a?.kill(), b?.kill()]);
  await redis?.stop();
  receiver?.close();
});

function client(node, user) {
  const member = { user_id: user, user_info: { name: user } };
  return pusherClient(node.addr, { key: APP.key, signer: sdkFor(node), member });
}

/** Resolves once the receiver holds a webhook event matching `test`. */
function webhook(what, test, ms = 15_000) {
  return within(what, (async () => {
    for (;;) {
      const found = received.find(test);
      if (found) return found;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  })(), ms);
}

const count = (name, channel, extra = () => true) => received.filter((e) => e.name === name && e.channel === channel && extra(e)).length;

test("across two nodes: triggers, client events, presence and counts, each webhook once", async () => {
  const ann = client(a, "ann");
  const bob = client(b, "bob");
  const onA = ann.subscribe("presence-room");
  await subscribed(onA);
  const added = once(onA, "pusher:member_added");
  const onB = bob.subscribe("presence-room");
  const bobs = await subscribed(onB);
  assert.equal(bobs.count, 2);
  assert.equal((await added).id, "bob");

  // A trigger on either node reaches the subscriber on the other.
  const heardOnA = once(onA, "news");
  await sdkFor(b).trigger("presence-room", "news", { from: "b" });
  assert.deepEqual(await heardOnA, { from: "b" });
  // A client event from A reaches B, with Ann's user id.
  const typing = within("client event", new Promise((resolve) => onB.bind("client-typing", (data, meta) => resolve([data, meta.user_id]))));
  onA.trigger("client-typing", { on: true });
  assert.deepEqual(await typing, [{ on: true }, "ann"]);

  // Counts are the same from either node.
  for (const node of [a, b]) {
    const answer = await (await sdkFor(node).get({ path: "/channels/presence-room", params: { info: "user_count,subscription_count" } })).json();
    assert.deepEqual(answer, { occupied: true, user_count: 2, subscription_count: 2 });
  }

  const missed = bob.subscribe("cache-empty");
  await once(missed, "pusher:cache_miss");

  await webhook("client_event", (e) => e.name === "client_event");
  await webhook("cache_miss", (e) => e.name === "cache_miss");
  bob.disconnect();
  await webhook("bob removed", (e) => e.name === "member_removed" && e.user_id === "bob");
  ann.disconnect();
  await webhook("vacated", (e) => e.name === "channel_vacated" && e.channel === "presence-room");

  assert.equal(count("channel_occupied", "presence-room"), 1, JSON.stringify(received));
  assert.equal(count("member_added", "presence-room", (e) => e.user_id === "ann"), 1);
  assert.equal(count("member_added", "presence-room", (e) => e.user_id === "bob"), 1);
  assert.equal(count("member_removed", "presence-room", (e) => e.user_id === "bob"), 1);
  assert.equal(count("member_removed", "presence-room", (e) => e.user_id === "ann"), 1);
  assert.equal(count("channel_vacated", "presence-room"), 1);
  assert.equal(count("cache_miss", "cache-empty"), 1);
  const clientEvents = received.filter((e) => e.name === "client_event");
  assert.equal(clientEvents.length, 1);
  assert.deepEqual(clientEvents[0], { name: "client_event", channel: "presence-room", event: "client-typing", data: JSON.stringify({ on: true }), socket_id: clientEvents[0].socket_id, user_id: "ann" });
  assert.match(clientEvents[0].socket_id, /^\d+\.\d+$/);

  // Every POST passes the server SDK's own check, and fails it under another secret.
  assert.ok(bodies.length > 0);
  for (const { headers, rawBody } of bodies) {
    assert.equal(headers["x-pusher-key"], APP.key);
    assert.ok(sdkFor(a).webhook({ headers, rawBody }).isValid(), rawBody);
    assert.ok(!sdkFor(a, "another-secret").webhook({ headers, rawBody }).isValid());
  }
});

test("a SIGKILLed node's members are removed within the ghost bound, each once", async () => {
  const doomed = await startServer(a.flags);
  const carol = client(doomed, "carol");
  const dave = client(b, "dave");
  const [onDoomed, onB] = [carol.subscribe("presence-ghosts"), dave.subscribe("presence-ghosts")];
  await Promise.all([subscribed(onDoomed), subscribed(onB)]);
  await webhook("carol added", (e) => e.name === "member_added" && e.user_id === "carol");
  const removed = new Promise((resolve) => onB.bind("pusher:member_removed", resolve));
  const killedAt = Date.now();
  await doomed.kill();
  // pusher-js would retry the dead node: it stops, and says nothing to anyone.
  carol.disconnect();
  // The ghost bound is the presence TTL (4 s here) and a quarter.
  assert.equal((await within("dave hears carol leave", removed, 15_000)).id, "carol");
  await webhook("carol removed", (e) => e.name === "member_removed" && e.user_id === "carol", 15_000);
  const took = Date.now() - killedAt;
  // The leave is told once to Dave and once to the webhook; the user count is right again.
  const users = await (await sdkFor(a).get({ path: "/channels/presence-ghosts/users" })).json();
  assert.deepEqual(users.users, [{ id: "dave" }]);
  assert.equal(count("member_removed", "presence-ghosts", (e) => e.user_id === "carol"), 1);
  assert.ok(took < 15_000, `${took} ms`);
  dave.disconnect();
});
