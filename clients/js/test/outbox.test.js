// The outbox across a node's death: two nodes on Redis, a publisher on the one that dies.
// Every message is delivered exactly once, in order, and every promise resolves with it.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { WebSocket } from "ws";

import { Tidings } from "../src/tidings.js";
import { startRedis, startServer, within } from "./support.js";

let redis;
before(async () => {
  redis = await startRedis();
});
after(async () => {
  await redis.stop();
});

test("messages published around a node's death are delivered exactly once, in order", async () => {
  const a = await startServer(["--redis-url", redis.url]);
  const b = await startServer(["--redis-url", redis.url]);
  const options = { WebSocket, minDelayMs: 20, maxDelayMs: 200 };
  // The reader stays on b; the publisher is on a first, then b.
  const reader = new Tidings(b.ws, { name: "reader", ...options });
  const feed = reader.subscribe("outbox:feed");
  const got = [];
  feed.on("publication", (pub) => got.push(pub.data));
  await feed.ready();

  const publisher = new Tidings([a.ws, b.ws], { name: "writer", ...options });
  await publisher.ready();
  const sent = [];
  for (let n = 1; n <= 50; n += 1) sent.push(publisher.publish("outbox:feed", n));
  // Sent, and a's replies not yet read: some are stored on a and their replies lost.
  await a.kill();
  for (let n = 51; n <= 100; n += 1) sent.push(publisher.publish("outbox:feed", n));
  const positions = await within("every publish accepted", Promise.all(sent), 20_000);
  const offsets = positions.map((p) => p.offset);
  assert.equal(new Set(offsets).size, 100, "one offset each");
  // A last message after the others: a duplicate of any of them would come before it.
  const delivered = new Promise((resolve) => feed.on("publication", (pub) => pub.data === "end" && resolve()));
  await publisher.publish("outbox:feed", "end");
  await within("every message delivered", delivered);
  const expected = [...Array.from({ length: 100 }, (_, i) => i + 1), "end"];
  assert.deepEqual(got, expected, "each once, in order");
  assert.deepEqual(
    [...offsets].sort((x, y) => x - y),
    offsets,
    "offsets follow the order of the publishes",
  );
  publisher.close();
  reader.close();
  await b.kill();
});
