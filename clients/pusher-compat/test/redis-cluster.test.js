// Two nodes on a Redis Cluster (three masters, sharded pub/sub), one Pusher app: pusher-js and
// the Node SDK see what they see on one Redis — triggers and client events cross nodes,
// presence and counts are the same from either node, and a dead node's member is removed.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import Pusher from "pusher";

import { startRedisCluster, startServer, within } from "../../js/test/support.js";
import { once, pusherClient, subscribed } from "./pusher.js";

const APP = { appId: "1", key: "app-key", secret: "app-secret" };
let cluster;
let a;
let b;
let flags;

function sdkFor(node) {
  const [host, port] = node.addr.split(":");
  return new Pusher({ ...APP, host, port, useTLS: false });
}

function client(node, user) {
  const member = { user_id: user, user_info: { name: user } };
  return pusherClient(node.addr, { key: APP.key, signer: sdkFor(node), member });
}

before(async () => {
  cluster = await startRedisCluster();
  flags = ["--redis-url", cluster.url, "--presence-ttl", "4s", "--pusher-app", `${APP.appId}:${APP.key}:${APP.secret}`];
  [a, b] = await Promise.all([startServer(flags), startServer(flags)]);
});
after(async () => {
  await Promise.all([a?.kill(), b?.kill()]);
  await cluster?.stop();
});

test("on a Redis Cluster: triggers, client events and presence cross nodes", async () => {
  const ann = client(a, "ann");
  const bob = client(b, "bob");
  const onA = ann.subscribe("presence-room");
  await subscribed(onA);
  const added = once(onA, "pusher:member_added");
  const bobs = await subscribed(bob.subscribe("presence-room"));
  assert.equal(bobs.count, 2);
  assert.equal((await added).id, "bob");

  // Public channels on other shards too: each trigger, on either node, reaches the other.
  const channels = ["news", "sport", "weather", "markets"];
  const heard = channels.map((name) => {
    const channel = ann.subscribe(name);
    return { channel, ready: subscribed(channel) };
  });
  await Promise.all(heard.map(({ ready }) => ready));
  for (const [i, name] of channels.entries()) {
    const got = once(heard[i].channel, "update");
    await sdkFor(b).trigger(name, "update", { name });
    assert.deepEqual(await got, { name });
  }

  const onB = bob.channel("presence-room");
  const typing = within("client event", new Promise((resolve) => onB.bind("client-typing", (data, meta) => resolve([data, meta.user_id]))));
  onA.trigger("client-typing", { on: true });
  assert.deepEqual(await typing, [{ on: true }, "ann"]);

  for (const node of [a, b]) {
    const answer = await (await sdkFor(node).get({ path: "/channels/presence-room/users" })).json();
    assert.deepEqual(answer.users.map((u) => u.id).sort(), ["ann", "bob"]);
  }

  // A node that dies: its member is removed for the others within the presence TTL's bound.
  const doomed = await startServer(flags);
  const carol = client(doomed, "carol");
  const joined = once(onA, "pusher:member_added");
  await subscribed(carol.subscribe("presence-room"));
  assert.equal((await joined).id, "carol");
  const removed = new Promise((resolve) => onA.bind("pusher:member_removed", resolve));
  await doomed.kill();
  carol.disconnect();
  assert.equal((await within("carol removed", removed, 15_000)).id, "carol");
  ann.disconnect();
  bob.disconnect();
});
