// The client's contract across two nodes on one Redis: clients on different nodes see one
// channel — its publications (each once, in order), its presence, its history — and a client
// that moves to the other node when its own dies recovers what was published meanwhile.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { WebSocket } from "ws";

import { Tidings } from "../src/tidings.js";
import { next, startRedis, startServer, within } from "./support.js";

/** Both nodes' flags: presence with joins and leaves in `room:`, stated rather than assumed. */
const nodeFlags = (redis) => ["--redis-url", redis.url, "--namespace", "room:presence=true,join-leave=true"];
const options = { WebSocket, minDelayMs: 20, maxDelayMs: 200 };
/** A channel no other test (nor an earlier run on the same Redis) has used. */
const fresh = (prefix) => `${prefix}-${randomUUID().slice(0, 8)}`;

/** A `ws` WebSocket that also keeps the `pub` frames it received, before the client sees them. */
function recordingWebSocket(frames) {
  return class extends WebSocket {
    constructor(...args) {
      super(...args);
      this.on("message", (data) => {
        const frame = JSON.parse(String(data));
        if (frame.pub) frames.push(frame.pub);
      });
    }
  };
}

/** Resolves once `check()` holds, checking after each `type` event of `emitter`. */
function until(what, emitter, type, check) {
  return within(
    what,
    new Promise((resolve) => {
      if (check()) return resolve();
      const off = emitter.on(type, () => {
        if (!check()) return;
        off();
        resolve();
      });
    }),
  );
}

describe("two nodes on one Redis", () => {
  let redis;
  let a;
  let b;
  before(async () => {
    redis = await startRedis();
    [a, b] = await Promise.all([startServer(nodeFlags(redis)), startServer(nodeFlags(redis))]);
  });
  after(async () => {
    await Promise.all([a?.kill(), b?.kill()]);
    await redis?.stop();
  });

  test("200 publications through node A reach a subscriber on node B once each, in order", async () => {
    const channel = fresh("cluster:order");
    const frames = [];
    const reader = new Tidings(b.ws, { ...options, name: "reader-b", WebSocket: recordingWebSocket(frames) });
    const drops = [];
    reader.on("disconnected", (detail) => drops.push(detail));
    const feed = reader.subscribe(channel);
    const got = [];
    feed.on("publication", (pub) => got.push(pub));
    await feed.ready();

    const writer = new Tidings(a.ws, { ...options, name: "writer-a" });
    const sent = [];
    for (let n = 1; n <= 200; n += 1) sent.push(writer.publish(channel, n));
    const positions = await within("200 publishes accepted", Promise.all(sent));
    // A last one: a duplicate, or anything out of order, would come before it.
    const end = await writer.publish(channel, "end");
    await until("the end marker on node B", feed, "publication", () => got.at(-1)?.data === "end");

    const expected = [...Array.from({ length: 200 }, (_, i) => i + 1), "end"];
    assert.deepEqual(got.map((pub) => pub.data), expected, "each once, in order");
    const offsets = [...positions, end].map((p) => p.offset);
    assert.deepEqual(got.map((pub) => pub.offset), offsets, "the offsets the publishes were given");
    assert.deepEqual(
      offsets,
      Array.from({ length: 201 }, (_, i) => offsets[0] + i),
      "consecutive offsets, in the order of the publishes",
    );
    assert.ok(got.every((pub) => pub.info.user === "writer-a" && pub.epoch === got[0].epoch));
    // What the server sent, before the client's own de-duplication: each once too.
    const wire = frames.filter((pub) => pub.channel === channel).map((pub) => pub.offset);
    assert.deepEqual(wire, offsets, "node B sent each publication once");
    assert.deepEqual(drops, [], "no reconnect (a gap would have caused one)");
    writer.close();
    reader.close();
  });

  test("presence read through node B sees a member connected to node A", async () => {
    const channel = fresh("room:presence");
    const watcher = new Tidings(b.ws, { ...options, name: "watcher-b" });
    const room = watcher.subscribe(channel);
    await room.ready();

    const ann = new Tidings(a.ws, { ...options, name: "ann-a" });
    const joined = next(room, "join", ({ info }) => info.user === "ann-a");
    await ann.subscribe(channel).ready();
    const join = await joined;
    assert.equal(join.channel, channel);
    assert.equal(join.info.client, (await ann.ready()).connectedInfo.client);

    const page = await room.presence();
    assert.deepEqual(page.clients.map((member) => member.user).sort(), ["ann-a", "watcher-b"]);
    assert.equal(page.cursor, null);
    const annOnA = page.clients.find((member) => member.user === "ann-a");
    assert.equal(annOnA.client, ann.connectedInfo.client);
    assert.equal(annOnA.authenticated, false);
    assert.deepEqual(await room.presenceStats(), { clients: 2, users: 2 });

    // And when ann leaves node A, node B says so and counts one.
    const left = next(room, "leave", ({ info }) => info.user === "ann-a");
    ann.close();
    await left;
    assert.deepEqual(await room.presenceStats(), { clients: 1, users: 1 });
    assert.deepEqual((await watcher.presenceAll(channel)).map((member) => member.user), ["watcher-b"]);
    watcher.close();
  });

  test("history read through node B returns what was published through node A, with offsets", async () => {
    const channel = fresh("cluster:history");
    const writer = new Tidings(a.ws, { ...options, name: "writer-a" });
    const positions = [];
    for (let n = 1; n <= 20; n += 1) positions.push(await writer.publish(channel, { n }));

    const reader = new Tidings(b.ws, { ...options, name: "reader-b" });
    const sub = reader.subscribe(channel);
    await sub.ready();
    const history = await sub.history({ limit: 50 });
    assert.deepEqual(
      history.publications.map((pub) => [pub.offset, pub.data.n, pub.info.user]),
      positions.map((p, i) => [p.offset, i + 1, "writer-a"]),
    );
    assert.equal(history.offset, positions.at(-1).offset);
    assert.equal(history.epoch, sub.epoch, "the epoch the subscription on B reported");
    assert.ok(history.publications.every((pub) => pub.epoch === history.epoch && pub.channel === channel));

    // Paging forward from a position, as a reconnecting client does.
    const rest = await sub.history({ since: { offset: positions[9].offset, epoch: history.epoch } });
    assert.deepEqual(
      rest.publications.map((pub) => pub.data.n),
      Array.from({ length: 10 }, (_, i) => i + 11),
    );
    writer.close();
    reader.close();
  });

  test("a client whose node dies moves to the other one and recovers what it missed", async () => {
    const channel = fresh("cluster:move");
    // A third node of the same Redis, for this test alone to kill.
    const doomed = await startServer(nodeFlags(redis));
    // Back-off of at least 250 ms: the gap below is published before it reconnects.
    const mover = new Tidings([doomed.ws, b.ws], { ...options, name: "mover", minDelayMs: 500, maxDelayMs: 1_000 });
    const feed = mover.subscribe(channel);
    const got = [];
    const unrecovered = [];
    const subscribed = [];
    feed.on("publication", (pub) => got.push(pub));
    feed.on("unrecovered", (detail) => unrecovered.push(detail));
    mover.on("unrecovered", (detail) => unrecovered.push(detail));
    feed.on("subscribed", (detail) => subscribed.push(detail));
    await feed.ready();

    const writer = new Tidings(b.ws, { ...options, name: "writer-b" });
    for (let n = 1; n <= 30; n += 1) await writer.publish(channel, n);
    await until("30 publications on the doomed node", feed, "publication", () => got.length === 30);

    const disconnected = next(mover, "disconnected");
    await doomed.kill();
    const lost = await disconnected;
    assert.equal(lost.reconnecting, true);
    // Published while the mover is away: recovered from history on node B.
    const gap = [];
    for (let n = 31; n <= 60; n += 1) gap.push(writer.publish(channel, n));
    await Promise.all(gap);
    assert.notEqual(mover.state, "connected", "the gap was published while the mover was away");

    await until("subscribed again, on node B", feed, "subscribed", () => subscribed.length === 2);
    const again = subscribed[1];
    assert.equal(again.recovered, true, "recovered");
    assert.deepEqual(
      again.publications.map((pub) => pub.data),
      Array.from({ length: 30 }, (_, i) => i + 31),
      "the gap came with the subscribe reply",
    );
    assert.equal(mover.connectedInfo.user, "mover", "the same name on the other node");

    await writer.publish(channel, "end");
    await until("the end marker", feed, "publication", () => got.at(-1)?.data === "end");
    const expected = [...Array.from({ length: 60 }, (_, i) => i + 1), "end"];
    assert.deepEqual(got.map((pub) => pub.data), expected, "each once, in order, across the move");
    const offsets = got.map((pub) => pub.offset);
    assert.deepEqual(offsets, Array.from({ length: 61 }, (_, i) => offsets[0] + i));
    assert.deepEqual(unrecovered, []);
    writer.close();
    mover.close();
  });
});
