// The client's contract against the real server: states, subscriptions as objects, requests
// as promises, refusals told where they belong.

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { WebSocket } from "ws";

import { ClientErrors, Subscription, Tidings, TidingsError } from "../src/tidings.js";
import { next, startServer, within } from "./support.js";

describe("one server", () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server.kill();
  });

  test("states go connecting → connected → closed, and ready() follows them", async () => {
    const client = new Tidings(server.ws, { name: "ann", WebSocket });
    const states = [];
    client.on("state", ({ state }) => states.push(state));
    assert.equal(client.state, "connecting");
    const connected = next(client, "connected");
    assert.equal(await client.ready(), client);
    assert.equal(client.state, "connected");
    assert.equal((await connected).user, "ann");
    assert.equal(client.connectedInfo.version, Tidings.protocolVersion);
    client.close();
    assert.equal(client.state, "closed");
    assert.deepEqual(states, ["connected", "closed"]);
    await assert.rejects(client.ready(), (err) => err.code === ClientErrors.CLOSED);
    await assert.rejects(client.publish("news", 1), (err) => err.code === ClientErrors.CLOSED);
  });

  test("debug reports each state change", async () => {
    const said = [];
    const client = new Tidings(server.ws, { name: "dbg", WebSocket, debug: (line) => said.push(line) });
    await client.ready();
    client.close();
    assert.deepEqual(said, ["tidings: connecting → connected", "tidings: connected → closed"]);
  });

  test("a subscription is an object with its own events, and subscribing twice returns it", async () => {
    const client = new Tidings(server.ws, { name: "bob", WebSocket });
    const room = client.subscribe("chat:objects");
    assert.ok(room instanceof Subscription);
    assert.equal(room.state, "subscribing");
    assert.equal(client.subscribe("chat:objects"), room, "the same object");
    await room.ready();
    assert.equal(room.state, "subscribed");

    const got = [];
    room.on("publication", (pub) => got.push([pub.offset, pub.data, pub.info.user]));
    const first = await room.publish({ n: 1 });
    const second = await client.publish("chat:objects", { n: 2 });
    assert.equal(second.offset, first.offset + 1);
    await within("two publications", (async () => { while (got.length < 2) await new Promise((r) => setTimeout(r, 10)); })());
    assert.deepEqual(got, [
      [first.offset, { n: 1 }, "bob"],
      [second.offset, { n: 2 }, "bob"],
    ]);

    const history = await room.history({ limit: 10 });
    assert.deepEqual(history.publications.map((p) => p.data), [{ n: 1 }, { n: 2 }]);
    const stats = await room.presenceStats();
    assert.deepEqual(stats, { clients: 1, users: 1 });
    const page = await room.presence();
    assert.deepEqual(page.clients.map((m) => m.user), ["bob"]);

    assert.throws(
      () => client.subscribe("chat:objects", { since: { offset: 0, epoch: "other" } }),
      (err) => err instanceof TidingsError && err.code === ClientErrors.ALREADY_SUBSCRIBED,
    );
    await room.unsubscribe();
    assert.equal(room.state, "unsubscribed");
    assert.equal(client.getSubscription("chat:objects"), null);
    client.close();
  });

  test("a refused subscribe rejects ready() and tells that subscription alone", async () => {
    const client = new Tidings(server.ws, { name: "cy", WebSocket });
    await client.ready();
    const globalErrors = [];
    client.on("error", (err) => globalErrors.push(err));
    const bad = client.subscribe("no spaces allowed");
    const errored = next(bad, "error");
    await assert.rejects(bad.ready(), (err) => err instanceof TidingsError && err.code === 104);
    assert.equal((await errored).code, 104);
    assert.equal(bad.state, "unsubscribed");
    assert.equal(client.getSubscription("no spaces allowed"), null);
    // Another subscription is unaffected.
    await client.subscribe("fine").ready();
    assert.deepEqual(globalErrors, []);
    client.close();
  });

  test("every request is a promise that rejects with the documented code", async () => {
    const client = new Tidings(server.ws, { name: "dee", WebSocket });
    await assert.rejects(client.history("bad channel"), (err) => err.code === 104);
    await assert.rejects(
      client.history("news", { since: { offset: 5, epoch: "gone" } }),
      (err) => err.code === 109,
    );
    await assert.rejects(client.rpc("anything"), (err) => err.code === 113);
    await assert.rejects(client.presence("news"), (err) => err.code === 113);
    client.close();
  });

  test("the client needs no window or location in Node, and says what it lacks", () => {
    assert.equal(typeof globalThis.location, "undefined");
    if (typeof globalThis.WebSocket === "undefined") {
      assert.throws(() => new Tidings(server.ws), /pass one, e\.g\. new Tidings\(url, \{ WebSocket \}\)/);
    }
    assert.match(Tidings.version, /^\d+\.\d+\.\d+$/);
  });

  test("a refused origin is reported with its reason and not retried", async () => {
    let attempts = 0;
    class Foreign extends WebSocket {
      constructor(url) {
        super(url, { origin: "https://evil.test" });
        attempts += 1;
      }
    }
    const client = new Tidings(server.ws, { name: "eve", WebSocket: Foreign, minDelayMs: 10 });
    const closed = await next(client, "closed");
    assert.equal(client.state, "closed");
    assert.equal(closed.httpStatus, 403);
    assert.match(closed.reason, /403/);
    assert.equal(attempts, 1, "no retry loop");
    await assert.rejects(client.ready(), (err) => err.code === ClientErrors.CLOSED);
  });
});

describe("the outbox", () => {
  test("publishes wait while disconnected, are bounded, and settle on close or timeout", async () => {
    // A port nobody listens on: the client never connects.
    const client = new Tidings("ws://127.0.0.1:9/ws", {
      name: "fay",
      WebSocket,
      outboxLimit: 2,
      outboxTimeoutMs: 300,
      minDelayMs: 50,
      maxDelayMs: 100,
    });
    const timedOut = client.publish("news", 1);
    await assert.rejects(timedOut, (err) => err.code === ClientErrors.OUTBOX_TIMEOUT);
    const waiting = [client.publish("news", 2), client.publish("news", 3)];
    await assert.rejects(client.publish("news", 4), (err) => err.code === ClientErrors.OUTBOX_FULL);
    client.close();
    for (const queued of waiting) {
      await assert.rejects(queued, (err) => err.code === ClientErrors.CLOSED);
    }
  });
});

describe("edges", () => {
  const SECRET = "a-secret-of-at-least-32-bytes-long";
  const part = (json) => Buffer.from(JSON.stringify(json)).toString("base64url");
  const mint = (claims) => {
    const unsigned = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
    return `${unsigned}.${createHmac("sha256", SECRET).update(unsigned).digest("base64url")}`;
  };
  let open;
  let tokens;
  before(async () => {
    [open, tokens] = await Promise.all([startServer(), startServer(["--token-hmac-secret", SECRET])]);
  });
  after(async () => {
    await Promise.all([open.kill(), tokens.kill()]);
  });

  test("a guest keeps the name the server gave it when it reconnects", async () => {
    const client = new Tidings(open.ws, { WebSocket });
    const first = await next(client, "connected");
    assert.match(first.user, /^guest-[a-z]{6}$/);
    client.ws.close();
    const again = await next(client, "connected");
    assert.equal(again.user, first.user);
    assert.notEqual(again.client, first.client, "a new connection");
    client.close();
  });

  test("the HTTP stream carries the token a one-way reader cannot send", async () => {
    let asked = 0;
    const getToken = async () => {
      asked += 1;
      return mint({ sub: "stream-user", exp: Date.now() / 1000 + 60 });
    };
    const client = new Tidings(tokens.ws, { transport: "stream", getToken });
    const connected = await next(client, "connected");
    assert.deepEqual([connected.user, connected.authenticated, client.transport], ["stream-user", true, "stream"]);
    const sub = client.subscribe("edges:stream");
    await sub.ready();
    const heard = next(sub, "publication");
    await sub.publish("over the stream");
    assert.equal((await heard).data, "over the stream");
    assert.equal(asked, 1);
    client.close();
  });

  test("a getToken that fails is retried on the same transport, not taken for a broken WebSocket", async () => {
    let calls = 0;
    const getToken = async () => {
      calls += 1;
      if (calls === 1) throw new Error("backend down");
      return mint({ sub: "patient", exp: Date.now() / 1000 + 60 });
    };
    const errors = [];
    const client = new Tidings(tokens.ws, { WebSocket, getToken, minDelayMs: 50 });
    client.on("error", (error) => errors.push(error.message));
    const transports = [];
    client.on("transport", ({ transport }) => transports.push(transport));
    const connected = await next(client, "connected");
    assert.equal(connected.user, "patient");
    assert.deepEqual(errors, ["getToken failed: backend down"]);
    assert.deepEqual([client.transport, transports], ["websocket", []]);
    client.close();
  });

  test("ready() of a subscription ended before it was in place rejects with UNSUBSCRIBED", async () => {
    const client = new Tidings(open.ws, { WebSocket, name: "quitter" });
    const sub = client.subscribe("edges:gone");
    const ready = sub.ready();
    const unsubscribed = next(sub, "unsubscribed");
    await client.unsubscribe("edges:gone");
    await assert.rejects(ready, (err) => err instanceof TidingsError && err.code === ClientErrors.UNSUBSCRIBED);
    assert.deepEqual(await unsubscribed, { channel: "edges:gone", byServer: false });
    assert.equal(sub.state, "unsubscribed");
    client.close();
  });

  test("one function listening on two subscriptions is removed from one alone", async () => {
    const client = new Tidings(open.ws, { WebSocket, name: "listener" });
    const [a, b] = [client.subscribe("edges:a"), client.subscribe("edges:b")];
    const heard = [];
    const listener = (event) => heard.push(event.detail.channel);
    a.addEventListener("publication", listener);
    b.addEventListener("publication", listener);
    a.removeEventListener("publication", listener);
    await Promise.all([a.ready(), b.ready()]);
    const onB = next(b, "publication");
    await a.publish("to a");
    await b.publish("to b");
    await onB;
    assert.deepEqual(heard, ["edges:b"]);
    client.close();
  });
});

test("an expired fixed token closes the client once, without a retry loop", async () => {
  const SECRET = "a-secret-of-at-least-32-bytes-long";
  const part = (json) => Buffer.from(JSON.stringify(json)).toString("base64url");
  const unsigned = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub: "brief", exp: Date.now() / 1000 + 1 })}`;
  const token = `${unsigned}.${createHmac("sha256", SECRET).update(unsigned).digest("base64url")}`;
  const server = await startServer(["--token-hmac-secret", SECRET]);
  try {
    const client = new Tidings(server.ws, { WebSocket, token, minDelayMs: 20 });
    let connects = 0;
    client.on("connected", () => (connects += 1));
    const closed = await within("closed", new Promise((resolve) => client.on("closed", resolve)), 5_000);
    assert.equal(closed.code, 4003, JSON.stringify(closed));
    assert.equal(connects, 1);
    assert.equal(client.state, "closed");
  } finally {
    await server.kill();
  }
});
