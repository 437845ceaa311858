// Laravel Echo with its `pusher` broadcaster, as a Laravel front end uses it: an auth endpoint
// like Laravel's /broadcasting/auth (here a small HTTP server signing with the `pusher` SDK, as
// Laravel's Pusher broadcaster does), events named as Laravel names them, on public, private
// and presence channels.

import assert from "node:assert/strict";
import http from "node:http";
import { after, before, test } from "node:test";

import Echo from "laravel-echo";
import Pusher from "pusher";
import PusherClient from "pusher-js";

import { startServer, within } from "../../js/test/support.js";

const APP = { appId: "1", key: "app-key", secret: "app-secret" };
let server;
let backend;
let authUrl;
let sdk;

before(async () => {
  server = await startServer(["--pusher-app", `${APP.appId}:${APP.key}:${APP.secret}`]);
  const [host, port] = server.addr.split(":");
  sdk = new Pusher({ ...APP, host, port, useTLS: false });
  // Laravel's /broadcasting/auth: the logged-in user (here the bearer token names them) may
  // join what the app's channel routes allow.
  backend = http.createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      const form = new URLSearchParams(body);
      const user = (req.headers.authorization ?? "").replace("Bearer ", "");
      const channel = form.get("channel_name");
      if (!user || channel.endsWith("-forbidden")) {
        res.writeHead(403).end();
        return;
      }
      const data = channel.startsWith("presence-") ? { user_id: user, user_info: { name: user } } : undefined;
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(sdk.authorizeChannel(form.get("socket_id"), channel, data)));
    });
  });
  await new Promise((resolve) => backend.listen(0, "127.0.0.1", resolve));
  authUrl = `http://127.0.0.1:${backend.address().port}/broadcasting/auth`;
});
after(async () => {
  await server.kill();
  backend.close();
});

/** A Laravel front end's `window.Echo`, logged in as `user`. */
function echo(user) {
  const [host, port] = server.addr.split(":");
  return new Echo({
    broadcaster: "pusher",
    Pusher: PusherClient,
    key: APP.key,
    cluster: "mt1",
    wsHost: host,
    wsPort: Number(port),
    forceTLS: false,
    enabledTransports: ["ws"],
    disableStats: true,
    // What `authEndpoint` does in a browser, with Node's fetch.
    authorizer: (channel) => ({
      authorize: (socketId, callback) => {
        fetch(authUrl, {
          method: "POST",
          headers: { authorization: `Bearer ${user}`, "content-type": "application/x-www-form-urlencoded" },
          body: new URLSearchParams({ socket_id: socketId, channel_name: channel.name }),
        })
          .then(async (response) => (response.ok ? callback(null, await response.json()) : callback(new Error(`HTTP ${response.status}`), null)))
          .catch((err) => callback(err, null));
      },
    }),
  });
}

const subscribed = (channel) => within("subscribed", new Promise((resolve) => channel.subscribed(resolve)));

test("Echo hears a Laravel event on a public and a private channel; a forbidden channel is an error", async () => {
  const ann = echo("ann");
  const orders = ann.channel("orders");
  const mine = ann.private("orders.ann");
  await Promise.all([subscribed(orders), subscribed(mine)]);
  const heard = Promise.all([
    within("public", new Promise((resolve) => orders.listen("OrderShipped", resolve))),
    within("private", new Promise((resolve) => mine.listen(".order.paid", resolve))),
  ]);
  // Laravel names broadcast events by class: App\Events\OrderShipped.
  await sdk.trigger("orders", "App\\Events\\OrderShipped", { id: 1 });
  await sdk.trigger("private-orders.ann", "order.paid", { id: 2 });
  assert.deepEqual(await heard, [{ id: 1 }, { id: 2 }]);
  const refused = within("error", new Promise((resolve) => ann.private("orders-forbidden").error(resolve)));
  assert.ok(await refused);
  ann.disconnect();
});

test("Echo's presence channel: here, joining, leaving, and whispers between members", async () => {
  const ann = echo("ann");
  const bob = echo("bob");
  const here = within("here", new Promise((resolve) => ann.join("room.1").here(resolve)));
  assert.deepEqual(await here, [{ name: "ann" }]);
  const joining = within("joining", new Promise((resolve) => ann.join("room.1").joining(resolve)));
  const bobHere = within("bob here", new Promise((resolve) => bob.join("room.1").here(resolve)));
  assert.deepEqual((await bobHere).map((u) => u.name).sort(), ["ann", "bob"]);
  assert.deepEqual(await joining, { name: "bob" });

  // A whisper is a client event: Bob hears it, Ann (who sent it) does not.
  const echoed = [];
  ann.join("room.1").listenForWhisper("typing", (e) => echoed.push(e));
  const whisper = within("whisper", new Promise((resolve) => bob.join("room.1").listenForWhisper("typing", resolve)));
  ann.join("room.1").whisper("typing", { name: "ann" });
  assert.deepEqual(await whisper, { name: "ann" });
  const back = within("whisper back", new Promise((resolve) => ann.join("room.1").listenForWhisper("typing", (e) => e.name === "bob" && resolve(e))));
  bob.join("room.1").whisper("typing", { name: "bob" });
  await back;
  assert.deepEqual(echoed, [{ name: "bob" }]);

  const leaving = within("leaving", new Promise((resolve) => ann.join("room.1").leaving(resolve)));
  bob.disconnect();
  assert.deepEqual(await leaving, { name: "bob" });
  ann.disconnect();
});
