// Tidings JavaScript client, protocol v1 (docs/protocol.md; the guide is docs/js-client.md).
// One ES module, no build step, no dependency: the npm package `tidings-client` and the script
// every Tidings server serves at `/tidings.js` are this file. It runs in browsers, in Node ≥ 18
// (pass `WebSocket` from the `ws` package where there is no global one) and in Deno and Bun.
//
//   import { Tidings } from "tidings-client"; // or from "https://your-server/tidings.js"
//   const client = new Tidings("wss://example.com/ws", { name: "alice" });
//   const room = client.subscribe("chat:lobby");
//   room.on("publication", (pub) => console.log(pub.info.user, pub.data));
//   await room.ready();
//   await room.publish({ text: "hi" });
//
// It reconnects by itself with jittered exponential back-off (across a list of URLs when given
// one), answers the server's heartbeats, treats a silent server as dead, and after each
// reconnect subscribes again to every channel from the last offset it delivered, so that what
// was published meanwhile is recovered from history — or says plainly that it was not
// (`unrecovered`). A publish made while disconnected waits in the client's outbox with an
// idempotency key, and is sent when the connection is back, on whichever node: the server
// stores it once. Where WebSockets do not work it falls back to an HTTP stream (`/stream`).

/** This client's version. */
const VERSION = "0.1.0";
/** The protocol this client speaks; `connected.version` must say the same. */
const PROTOCOL_VERSION = 1;

const CLOSE_NO_RECONNECT_MIN = 4500;
const CLOSE_NO_RECONNECT_MAX = 4999;
const CLOSE_POLICY_VIOLATION = 1008;
const CLOSE_ABNORMAL = 1006;
const CLOSE_TOKEN_EXPIRED = 4003;
const OPEN = 1;
const CLOSED = 3;
/** Commands one request carries at most (the server's limit). */
const COMMANDS_PER_REQUEST = 100;
/** Bytes of small commands gathered into one request (the server takes 64 KiB beyond one
 * message of the largest size). */
const BATCH_BYTES = 60_000;

/**
 * Codes of the errors the client itself raises; the server's are the protocol's (100–1999,
 * 500–503, docs/protocol.md#error-codes).
 */
export const ClientErrors = Object.freeze({
  /** No reply within `requestTimeoutMs`. */
  TIMEOUT: 1,
  /** The client was closed (`close()`, or the server refused it for good). */
  CLOSED: 2,
  /** The connection was lost with the request in flight; its outcome is unknown. */
  DISCONNECTED: 3,
  /** `publish` while the outbox already holds `outboxLimit` messages. */
  OUTBOX_FULL: 4,
  /** A queued publish was not accepted within `outboxTimeoutMs`. */
  OUTBOX_TIMEOUT: 5,
  /** The server runs another protocol version. */
  PROTOCOL: 6,
  /** `subscribe` to a channel this client already subscribed with other options. */
  ALREADY_SUBSCRIBED: 7,
  /** The subscription ended (`unsubscribe()`, or the server's) before it was in place. */
  UNSUBSCRIBED: 8,
});

/** The error of a rejected request: `code` is the protocol's error code, or a [ClientErrors]. */
export class TidingsError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "TidingsError";
    this.code = code;
  }
}

/**
 * Named events. `on(type, fn)` calls `fn(detail)` and returns a function that stops it;
 * `addEventListener(type, fn)` calls `fn({ detail })`, as DOM code expects. A throwing
 * listener is reported on the console and does not stop the others, nor the client.
 */
class Emitter {
  #listeners = new Map();
  /** type → the caller's function → its `addEventListener` wrapper, on this emitter only. */
  #wrappers = new Map();

  on(type, listener) {
    if (!this.#listeners.has(type)) this.#listeners.set(type, new Set());
    this.#listeners.get(type).add(listener);
    return () => this.off(type, listener);
  }

  off(type, listener) {
    this.#listeners.get(type)?.delete(listener);
  }

  once(type, listener) {
    const off = this.on(type, (detail) => {
      off();
      listener(detail);
    });
    return off;
  }

  addEventListener(type, listener) {
    if (!this.#wrappers.has(type)) this.#wrappers.set(type, new Map());
    const wrappers = this.#wrappers.get(type);
    if (wrappers.has(listener)) return; // as the DOM does: once per type and function
    const wrapped = (detail) => listener({ type, detail });
    wrappers.set(listener, wrapped);
    this.on(type, wrapped);
  }

  removeEventListener(type, listener) {
    const wrapped = this.#wrappers.get(type)?.get(listener);
    if (!wrapped) return;
    this.#wrappers.get(type).delete(listener);
    this.off(type, wrapped);
  }

  /** Calls every listener of `type`; returns what they returned. */
  emit(type, detail) {
    const results = [];
    for (const listener of [...(this.#listeners.get(type) ?? [])]) {
      try {
        results.push(listener(detail));
      } catch (err) {
        console.error(`tidings: a "${type}" listener threw`, err);
      }
    }
    return results;
  }
}

/** A promise with its settlers. */
function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // A rejection nobody waits for is not an unhandled one: `ready()` may never be called.
  promise.catch(() => {});
  return { promise, resolve, reject };
}

/** 128 random bits as hex, from the platform's cryptographic generator where there is one. */
function randomId() {
  const bytes = new Uint8Array(16);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i += 1) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * The two-way HTTP fallback, shaped like a WebSocket for the client below: `GET /stream` reads
 * the frames (one JSON object per line), `send` POSTs commands to `/stream`, one request at a
 * time so that they arrive in order whichever server takes each.
 */
class StreamSocket {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.session = null;
    this.queue = [];
    this.sending = false;
    this.abort = new AbortController();
    this.onopen = this.onmessage = this.onclose = null;
    this.read();
  }

  async read() {
    let closed = { code: CLOSE_ABNORMAL, reason: "the stream ended" };
    try {
      const response = await fetch(this.url, { signal: this.abort.signal, cache: "no-store" });
      if (!response.ok) {
        closed = { ...(await refusal(response)), refused: true };
        throw new Error(closed.reason);
      }
      this.session = response.headers.get("tidings-session");
      this.readyState = OPEN;
      this.onopen?.();
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, end);
          buffer = buffer.slice(end + 1);
          // The server's close comes as the last line, with the code a WebSocket would carry.
          if (line.startsWith('{"close":')) closed = JSON.parse(line).close;
          else if (line) {
            // The session id also comes in `connected`, should a proxy drop the header.
            if (!this.session && line.startsWith('{"connected":')) {
              this.session = JSON.parse(line).connected.session ?? null;
            }
            this.onmessage?.({ data: line });
          }
        }
      }
    } catch {
      // Aborted, refused or cut: reported below as a close.
    }
    this.finish(closed);
  }

  send(text) {
    if (this.readyState !== OPEN) return;
    this.queue.push(text);
    if (!this.sending) this.flush();
  }

  async flush() {
    this.sending = true;
    while (this.queue.length > 0 && this.readyState === OPEN) {
      let count = 0;
      let bytes = 0;
      while (count < this.queue.length && count < COMMANDS_PER_REQUEST) {
        bytes += this.queue[count].length;
        if (count > 0 && bytes > BATCH_BYTES) break;
        count += 1;
      }
      const commands = this.queue.splice(0, count).map((text) => JSON.parse(text));
      try {
        const response = await fetch(this.url.origin + this.url.pathname, {
          method: "POST",
          // text/plain: a simple request, no preflight.
          headers: { "content-type": "text/plain" },
          body: JSON.stringify({ session: this.session, commands }),
        });
        if (response.status === 429) {
          // This address sent too much: send the same commands again once allowed.
          this.queue.unshift(...commands.map((command) => JSON.stringify(command)));
          const seconds = Number(response.headers.get("retry-after")) || 1;
          await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
          continue;
        }
        if (!response.ok) throw new Error(`command request answered ${response.status}`);
      } catch (err) {
        // A command lost would leave its caller waiting: start over on a fresh stream.
        this.close(4000, `${err.message ?? err}`);
      }
    }
    this.sending = false;
  }

  close(code, reason) {
    this.abort.abort();
    this.finish({ code, reason });
  }

  finish(closed) {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    this.onclose?.(closed);
  }
}

/**
 * What an HTTP refusal of a handshake says: the server's `{"error":{"code","message"}}` as a
 * close. Refusals that retrying cannot cure (a foreign origin, a rejected token, a wrong path)
 * close for good, as 1008 would; the others (shutting down, full) are retried.
 */
async function refusal(response) {
  let message = `HTTP ${response.status}`;
  let code = "";
  try {
    const body = await response.json();
    message = body?.error?.message ?? message;
    code = body?.error?.code ?? "";
  } catch {
    // Not the server's JSON: a proxy's page. The status is all there is.
  }
  const final = [401, 403, 404].includes(response.status);
  return {
    code: final ? CLOSE_POLICY_VIOLATION : CLOSE_ABNORMAL,
    reason: message,
    httpStatus: response.status,
    errorCode: code,
  };
}

/**
 * One channel of a client. Its state is `subscribing` (also while the client reconnects),
 * `subscribed`, or `unsubscribed` (after `unsubscribe()`, a refusal, or the server's
 * unsubscribe). Events: `publication` (each once, in offset order), `join`, `leave`,
 * `subscribed`, `unsubscribed`, `error` (a refused or failed subscribe), `unrecovered`
 * (publications made while away could not all be recovered: reload what you show).
 */
export class Subscription extends Emitter {
  constructor(client, channel, { since } = {}) {
    super();
    this.client = client;
    this.channel = channel;
    this.state = "subscribing";
    /** The last offset delivered (or the `since` to start after), and its epoch. */
    this.offset = since ? since.offset : null;
    this.epoch = since ? since.epoch : null;
    /** The channel's publications wait for an `ack` (delivery receipts). */
    this.receipts = false;
    this.retry = 0;
    this.waiting = deferred();
  }

  /** Resolves once subscribed; rejects with the server's refusal. */
  ready() {
    if (this.state === "subscribed") return Promise.resolve(this);
    return this.waiting.promise;
  }

  /** Publishes to this channel: see [Tidings.publish]. */
  publish(data, options) {
    return this.client.publish(this.channel, data, options);
  }

  /** Reads this channel's history: see [Tidings.history]. */
  history(options) {
    return this.client.history(this.channel, options);
  }

  /** A page of who is present: see [Tidings.presence]. */
  presence(options) {
    return this.client.presence(this.channel, options);
  }

  /** How many connections and users are present: `{clients, users}`. */
  presenceStats() {
    return this.client.presenceStats(this.channel);
  }

  /** Stops delivery; resolves when the server confirms (at once when disconnected). */
  unsubscribe() {
    return this.client.unsubscribe(this.channel);
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    if (state === "subscribed") {
      this.waiting.resolve(this);
      this.waiting.settled = true;
    } else if (state === "subscribing" && this.waiting.settled) {
      // Subscribing again (after a reconnect): `ready()` waits for this round.
      this.waiting = deferred();
    }
  }

  /** Ended by the application or the server; a `ready()` still waiting rejects. */
  ended(byServer) {
    this.state = "unsubscribed";
    if (!this.waiting.settled) {
      this.waiting.settled = true;
      const by = byServer ? "the server" : "unsubscribe()";
      this.waiting.reject(new TidingsError(ClientErrors.UNSUBSCRIBED, `${this.channel}: ended by ${by} before it was in place`));
    }
    this.emit("unsubscribed", { channel: this.channel, byServer });
  }

  refused(error) {
    this.state = "unsubscribed";
    this.waiting.settled = true;
    this.waiting.reject(error);
    this.emit("error", error);
    this.emit("unsubscribed", { channel: this.channel, reason: error.message });
  }
}

/**
 * A protocol v1 connection that stays connected.
 *
 * `state`: `connecting` → `connected` → `disconnected` → `connecting` … until `closed` (by
 * `close()`, or by a refusal retrying cannot cure). Events (`on(type, fn)` calls `fn(detail)`):
 * - `state`: `{state, previous}` on every change
 * - `connected`: the server's `{client, user, version, ping_interval_ms, pong_timeout_ms,
 *   authenticated, expires_in_ms?}`
 * - `disconnected`: `{code, reason, reconnecting, delayMs, transport, httpStatus?}`
 * - `closed`: `{code, reason}` — for good
 * - `error`: `{code, message}` for error pushes of no subscription (failed commands sent
 *   without an id) and failures of `getToken`
 * - `subscribed`: `{channel, subscription, byServer}` — also when the backend subscribed this
 *   connection through the server API; `unsubscribed`: `{channel, byServer}`
 * - `publication`: every publication delivered, of any channel
 * - `join`, `leave`: `{channel, info}`; `presence_incomplete`: `{channel, more}`
 * - `transport`: `{transport}` when the client switches between WebSocket and HTTP stream
 */
export class Tidings extends Emitter {
  static version = VERSION;
  static protocolVersion = PROTOCOL_VERSION;

  /**
   * @param {string|string[]} urls WebSocket URL(s) of `/ws`; several are tried in turn. In a
   *   browser a relative URL is resolved against the page.
   * @param {object} options see docs/js-client.md#options
   */
  constructor(urls, options = {}) {
    super();
    this.urls = Array.isArray(urls) ? urls : [urls];
    if (this.urls.length === 0) throw new TypeError("Tidings: no URL");
    this.options = {
      minDelayMs: 300,
      maxDelayMs: 10_000,
      requestTimeoutMs: 10_000,
      transport: "auto",
      fallbackAfterMs: 3_000,
      outboxLimit: 1_000,
      outboxTimeoutMs: 60_000,
      debug: false,
      ...options,
    };
    this.WebSocket = this.options.WebSocket ?? globalThis.WebSocket;
    if (!this.WebSocket && this.options.transport !== "stream") {
      throw new TypeError(
        "Tidings: this runtime has no global WebSocket; pass one, e.g. " +
          "new Tidings(url, { WebSocket }) with `import { WebSocket } from \"ws\"`",
      );
    }
    /** `connecting`, `connected`, `disconnected` or `closed`. */
    this.state = "connecting";
    /** The transport in use or being tried: `websocket` or `stream`. */
    this.transport = this.options.transport === "stream" ? "stream" : "websocket";
    this.wsFailures = 0;
    this.ws = null;
    this.urlIndex = 0;
    this.attempt = 0;
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject, timer, command}
    /** channel → Subscription */
    this.subscriptions = new Map();
    /** Publishes not yet accepted, in the order they were made. */
    this.outbox = [];
    this.connectedInfo = null;
    this.closedBy = null;
    /** Indices of the URLs that refused the handshake since the last connection. */
    this.refusedBy = new Set();
    this.timers = {};
    this.presenceHandlers = { join: new Map(), leave: new Map() };
    this.connect();
  }

  /** True while the server has said `connected` on an open connection. */
  get isConnected() {
    return this.connectedInfo !== null && this.ws?.readyState === OPEN;
  }

  /** Resolves once connected; rejects if the client is closed first. */
  ready() {
    if (this.isConnected) return Promise.resolve(this);
    if (this.state === "closed") return Promise.reject(this.closedError());
    return new Promise((resolve, reject) => {
      const offs = [
        this.on("connected", () => {
          offs.forEach((off) => off());
          resolve(this);
        }),
        this.on("closed", () => {
          offs.forEach((off) => off());
          reject(this.closedError());
        }),
      ];
    });
  }

  closedError() {
    const { reason = "closed" } = this.closedBy ?? {};
    return new TidingsError(ClientErrors.CLOSED, `the client is closed: ${reason}`);
  }

  /**
   * Subscribes to `channel` (now, and again after every reconnect) and returns its
   * [Subscription]. With `since: {offset, epoch}` delivery starts right after that position
   * (one a `history` call returned, say), recovering what came in between. Subscribing again
   * to a channel returns the same object; with a different `since` it throws
   * (`ALREADY_SUBSCRIBED`). A function as second argument is a `publication` listener.
   */
  subscribe(channel, handlerOrOptions, maybeOptions) {
    const handler = typeof handlerOrOptions === "function" ? handlerOrOptions : null;
    const options = (handler ? maybeOptions : handlerOrOptions) ?? {};
    let sub = this.subscriptions.get(channel);
    if (sub) {
      const { since } = options;
      if (since && (since.offset !== sub.offset || since.epoch !== sub.epoch) && sub.offset !== null) {
        throw new TidingsError(
          ClientErrors.ALREADY_SUBSCRIBED,
          `already subscribed to ${channel}; unsubscribe first to start from another position`,
        );
      }
    } else {
      sub = new Subscription(this, channel, options);
      this.subscriptions.set(channel, sub);
      if (this.isConnected) this.sendSubscribe(sub);
    }
    if (handler) sub.on("publication", handler);
    return sub;
  }

  /** The subscription to `channel`, if any. */
  getSubscription(channel) {
    return this.subscriptions.get(channel) ?? null;
  }

  /** Reads a channel's history: `{publications, offset, epoch}`, oldest first. */
  history(channel, { limit, since } = {}) {
    return this.request({ op: "history", channel, limit, since });
  }

  /** Stops delivery of `channel`; resolves when the server confirms. */
  async unsubscribe(channel) {
    const sub = this.subscriptions.get(channel);
    this.subscriptions.delete(channel);
    sub?.ended(false);
    if (this.isConnected) await this.request({ op: "unsubscribe", channel });
  }

  /**
   * Publishes `data` (any JSON value); resolves with `{offset}` once the server stored it. Made while disconnected, or cut off by a lost connection, it waits in
   * the outbox (at most `outboxLimit`) and is sent again when a connection is back — with the
   * same idempotency key, so the server stores it once whichever node it reaches. Rejects on
   * overflow, on `close()`, after `outboxTimeoutMs`, or with the server's refusal.
   */
  publish(channel, data, { idempotencyKey } = {}) {
    if (this.state === "closed") return Promise.reject(this.closedError());
    if (this.outbox.length >= this.options.outboxLimit) {
      return Promise.reject(
        new TidingsError(
          ClientErrors.OUTBOX_FULL,
          `the outbox already holds ${this.outbox.length} messages (outboxLimit)`,
        ),
      );
    }
    const command = {
      op: "publish",
      channel,
      data,
      idempotency_key: idempotencyKey ?? `js-${randomId()}`,
    };
    return new Promise((resolve, reject) => {
      const entry = { command, resolve, reject, id: null };
      entry.timer = setTimeout(() => {
        this.dropFromOutbox(entry);
        const within = this.options.outboxTimeoutMs;
        reject(new TidingsError(ClientErrors.OUTBOX_TIMEOUT, `not accepted within ${within} ms`));
      }, this.options.outboxTimeoutMs);
      this.outbox.push(entry);
      if (this.isConnected) this.sendFromOutbox(entry);
    });
  }

  /** Sends an outbox entry on the current connection. */
  sendFromOutbox(entry) {
    const id = this.nextId++;
    entry.id = id;
    this.pending.set(id, {
      command: entry.command,
      resolve: (ok) => {
        this.dropFromOutbox(entry);
        entry.resolve(ok);
      },
      reject: (err) => {
        entry.id = null;
        // Lost with the connection, or the broker could not take it now: the same key
        // again, on the next connection, cannot store it twice.
        if (err.code === ClientErrors.DISCONNECTED || err.code === ClientErrors.TIMEOUT) return;
        if (err.code === 503 || err.code === 500) {
          setTimeout(() => {
            if (this.outbox.includes(entry) && entry.id === null && this.isConnected) {
              this.sendFromOutbox(entry);
            }
          }, this.options.minDelayMs);
          return;
        }
        this.dropFromOutbox(entry);
        entry.reject(err);
      },
    });
    this.send({ id, ...entry.command });
  }

  dropFromOutbox(entry) {
    clearTimeout(entry.timer);
    const index = this.outbox.indexOf(entry);
    if (index >= 0) this.outbox.splice(index, 1);
    if (entry.id !== null) this.pending.delete(entry.id);
  }

  /**
   * Who is present in `channel`: `{clients: [{client, user, authenticated, info?}], cursor}`,
   * at most `limit` (100; up to 1000) ordered by client id. Pass `cursor` back for the next
   * page until it is null, or use `presenceAll`.
   */
  presence(channel, { limit, cursor } = {}) {
    return this.request({ op: "presence", channel, limit, cursor: cursor ?? undefined });
  }

  /** Everyone present in `channel`, following the pages. */
  async presenceAll(channel) {
    const clients = [];
    let cursor = null;
    do {
      const page = await this.presence(channel, { limit: 1000, cursor });
      clients.push(...page.clients);
      cursor = page.cursor;
    } while (cursor);
    return clients;
  }

  /** How many connections and users are present: `{clients, users}`. */
  presenceStats(channel) {
    return this.request({ op: "presence_stats", channel });
  }

  /**
   * Calls the app's backend (the server's `--proxy-rpc`): resolves with the `data` it
   * answered, or rejects with a TidingsError carrying its code (the app's 400–1999, or 502 when
   * the backend failed).
   */
  async rpc(method, data) {
    const ok = await this.request({ op: "rpc", method, data });
    return ok.data;
  }

  /** Calls `handler({channel, info})` for each join in `channel`; returns a stop function. */
  onJoin(channel, handler) {
    return this.onPresence("join", channel, handler);
  }

  /** As `onJoin`, for leaves. */
  onLeave(channel, handler) {
    return this.onPresence("leave", channel, handler);
  }

  onPresence(kind, channel, handler) {
    const handlers = this.presenceHandlers[kind];
    if (!handlers.has(channel)) handlers.set(channel, new Set());
    handlers.get(channel).add(handler);
    return () => handlers.get(channel)?.delete(handler);
  }

  presenceChanged(kind, change) {
    for (const handler of this.presenceHandlers[kind].get(change.channel) ?? []) handler(change);
    this.subscriptions.get(change.channel)?.emit(kind, change);
    this.emit(kind, change);
  }

  /** Closes for good: no reconnect; queued publishes and waiting requests are rejected. */
  close() {
    this.finish({ code: 1000, reason: "client closed" });
    this.ws?.close(1000, "client closed");
  }

  /** Ends the client for good, saying why. */
  finish(closedBy) {
    if (this.state === "closed") return;
    this.closedBy = closedBy;
    for (const timer of Object.values(this.timers)) clearTimeout(timer);
    const error = this.closedError();
    for (const entry of [...this.outbox]) {
      this.dropFromOutbox(entry);
      entry.reject(error);
    }
    for (const { reject, timer } of this.pending.values()) {
      clearTimeout(timer);
      reject(error);
    }
    this.pending.clear();
    this.setState("closed");
    this.emit("closed", closedBy);
  }

  setState(state) {
    const previous = this.state;
    if (previous === state) return;
    this.state = state;
    if (this.options.debug) {
      const log = typeof this.options.debug === "function" ? this.options.debug : console.debug;
      log(`tidings: ${previous} → ${state}`, this.closedBy ?? "");
    }
    this.emit("state", { state, previous });
  }

  send(command) {
    this.ws.send(JSON.stringify(command));
  }

  /**
   * Sends a command with an id and resolves with its `ok` body, or rejects with a
   * TidingsError. While disconnected it waits for the connection (within `requestTimeoutMs`).
   */
  async request(command) {
    if (!this.isConnected) {
      const timeout = this.options.requestTimeoutMs;
      let timer;
      const late = new Promise((_, reject) => {
        timer = setTimeout(
          () => reject(new TidingsError(ClientErrors.TIMEOUT, `not connected within ${timeout} ms`)),
          timeout,
        );
      });
      try {
        await Promise.race([this.ready(), late]);
      } finally {
        clearTimeout(timer);
      }
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        const within = this.options.requestTimeoutMs;
        reject(new TidingsError(ClientErrors.TIMEOUT, `no reply to ${command.op} within ${within} ms`));
      }, this.options.requestTimeoutMs);
      this.pending.set(id, { resolve, reject, timer, command });
      this.send({ id, ...command });
    });
  }

  url() {
    const base = globalThis.location?.href;
    const url = new URL(this.urls[this.urlIndex % this.urls.length], base);
    if (this.transport === "stream") {
      // The stream lives beside the WebSocket route: /ws → /stream.
      url.protocol = url.protocol === "wss:" || url.protocol === "https:" ? "https:" : "http:";
      url.pathname = url.pathname.replace(/\/ws$/, "") + "/stream";
    } else {
      if (url.protocol === "http:") url.protocol = "ws:";
      if (url.protocol === "https:") url.protocol = "wss:";
    }
    const withToken = Boolean(this.options.getToken || this.options.token);
    // Tokens travel in the first command, not the URL, which proxies and servers log.
    if (this.options.name && !withToken) url.searchParams.set("name", this.options.name);
    return url;
  }

  connect() {
    if (this.state === "closed") return;
    this.setState("connecting");
    const withToken = Boolean(this.options.getToken || this.options.token);
    if (this.transport !== "stream" || !withToken) return this.open(null);
    // A stream's reader cannot send `connect`: its token goes with the request, in the query
    // (a header would need a CORS preflight the route does not answer).
    const attempt = (this.attemptSeq = (this.attemptSeq ?? 0) + 1);
    const current = () => this.state !== "closed" && this.attemptSeq === attempt;
    this.token().then(
      (token) => current() && this.open(token),
      (err) => current() && this.tokenFailed(err, false),
    );
  }

  /** The token for a connection: `getToken()`'s, or the `token` option. */
  async token() {
    return this.options.getToken ? await this.options.getToken() : this.options.token;
  }

  /**
   * `getToken` failed: reported, and tried again with back-off — on the same transport, since
   * the transport is not what failed.
   */
  tokenFailed(err, socketOpen) {
    this.emit("error", { code: 0, message: `getToken failed: ${err?.message ?? err}` });
    if (socketOpen) this.dropConnection(4000, "no token", true);
    else this.onClose({ code: 4000, reason: "no token", tokenFailed: true }, null);
  }

  /** Opens the socket (a stream's with `streamToken` in its URL). */
  open(streamToken) {
    const stream = this.transport === "stream";
    const url = this.url();
    if (streamToken) url.searchParams.set("token", streamToken);
    const ws = stream ? new StreamSocket(url) : new this.WebSocket(url.href);
    this.ws = ws;
    this.opened = false;
    this.connectedAt = null;
    clearTimeout(this.timers.fallback);
    ws.onmessage = (event) => this.onFrame(event.data);
    ws.onclose = (event) => this.onClose(event, url);
    // `ws` (Node) names the HTTP status of a refused handshake in its error; browsers say
    // nothing, and the refusal is asked for over HTTP (`probe`).
    this.handshakeStatus = null;
    ws.onerror = (event) => {
      const status = /server response: (\d{3})/.exec(event?.message ?? "")?.[1];
      if (status) this.handshakeStatus = Number(status);
    };
    ws.onopen = async () => {
      this.opened = true;
      this.armDeadTimer(15_000);
      if (!stream && this.options.transport === "auto") {
        // A middlebox may let the upgrade through and then pass nothing, not even `connected`.
        this.timers.fallback = setTimeout(() => {
          if (this.ws === ws && !this.connectedInfo) this.dropConnection(4000, "WebSocket silent");
        }, this.options.fallbackAfterMs);
      }
      // A stream came with its token: the server says `connected` by itself.
      if (streamToken) return;
      const withToken = Boolean(this.options.getToken || this.options.token);
      if (!withToken) {
        // Without a name in the URL the identity is set by this first command.
        if (!this.options.name) ws.send(JSON.stringify({ op: "connect" }));
        return;
      }
      let token;
      try {
        token = await this.token();
      } catch (err) {
        if (this.ws === ws) this.tokenFailed(err, true);
        return;
      }
      if (this.ws === ws) ws.send(JSON.stringify({ op: "connect", token }));
    };
  }

  /** Asks `getToken` for a new token once 80% of the current one's life has passed. */
  scheduleRefresh(expiresInMs) {
    clearTimeout(this.timers.refresh);
    if (expiresInMs == null || !this.options.getToken) return;
    // setTimeout fires at once for delays past 2^31-1 ms (~24.8 days): a long-lived token
    // would otherwise be refreshed in a tight loop. Refreshing early is harmless.
    const delayMs = Math.min(2_147_483_647, Math.max(1_000, expiresInMs * 0.8));
    this.timers.refresh = setTimeout(async () => {
      try {
        const token = await this.options.getToken();
        const ok = await this.request({ op: "refresh", token });
        this.scheduleRefresh(ok.expires_in_ms);
      } catch (err) {
        // The server closes with 4003 at expiry; the reconnect then fetches a new token.
        this.emit("error", { code: err.code ?? 0, message: `token refresh failed: ${err.message}` });
      }
    }, delayMs);
  }

  onFrame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    this.armDeadTimer();
    if (typeof frame.id === "number") {
      const waiter = this.pending.get(frame.id);
      if (!waiter) return;
      this.pending.delete(frame.id);
      clearTimeout(waiter.timer);
      if (frame.error) waiter.reject(new TidingsError(frame.error.code, frame.error.message));
      else waiter.resolve(frame.ok);
    } else if (frame.pub) {
      this.onPublication(frame.pub);
    } else if (frame.ping) {
      // On the stream the server counts a ping its connection took as life: no request.
      if (this.transport !== "stream") this.ws.send('{"op":"pong"}');
    } else if (frame.connected) {
      this.onConnected(frame.connected);
    } else if (frame.subscribed) {
      this.onSubscribedByServer(frame.subscribed);
    } else if (frame.unsubscribed) {
      const { channel } = frame.unsubscribed;
      const sub = this.subscriptions.get(channel);
      this.subscriptions.delete(channel);
      sub?.ended(true);
      this.emit("unsubscribed", { channel, byServer: true });
    } else if (frame.join) {
      this.presenceChanged("join", frame.join);
    } else if (frame.leave) {
      this.presenceChanged("leave", frame.leave);
    } else if (frame.presence_batch) {
      const { channel, joined, left, more = 0 } = frame.presence_batch;
      for (const info of joined) this.presenceChanged("join", { channel, info });
      for (const info of left) this.presenceChanged("leave", { channel, info });
      // More changed than one batch lists: whoever keeps a member list should reload it.
      if (more > 0) this.emit("presence_incomplete", { channel, more });
    } else if (frame.error) {
      const sub = frame.error.channel ? this.subscriptions.get(frame.error.channel) : null;
      if (sub) sub.emit("error", new TidingsError(frame.error.code, frame.error.message));
      else this.emit("error", frame.error);
    }
  }

  onConnected(connected) {
    if (connected.version !== PROTOCOL_VERSION) {
      const reason = `the server speaks protocol ${connected.version}; this client speaks ${PROTOCOL_VERSION}`;
      this.finish({ code: CLOSE_POLICY_VIOLATION, reason, protocol: true });
      this.ws.close(1000, "protocol version");
      return;
    }
    this.connectedInfo = connected;
    this.connectedAt = Date.now();
    // A guest keeps the name the server gave it when it reconnects, on any node.
    const withToken = Boolean(this.options.getToken || this.options.token);
    if (!connected.authenticated && !withToken && !this.options.name) this.options.name = connected.user;
    this.refusedBy.clear();
    if (this.transport === "websocket") this.wsWorked = true;
    clearTimeout(this.timers.fallback);
    // Back-off starts over only once a connection has proved stable, so a server that
    // accepts and drops at once is not hammered.
    clearTimeout(this.timers.stable);
    this.timers.stable = setTimeout(() => {
      this.attempt = 0;
      if (this.transport === "websocket") this.wsFailures = 0;
    }, 5_000);
    this.armDeadTimer();
    this.scheduleRefresh(connected.expires_in_ms);
    this.setState("connected");
    this.emit("connected", connected);
    for (const sub of this.subscriptions.values()) this.sendSubscribe(sub);
    // After the subscribes, so that a subscriber's own message comes after its recovery.
    for (const entry of this.outbox) if (entry.id === null) this.sendFromOutbox(entry);
  }

  /** The application's backend subscribed this connection (server API). */
  onSubscribedByServer({ channel, offset, epoch, receipts = false }) {
    let sub = this.subscriptions.get(channel);
    if (!sub) {
      sub = new Subscription(this, channel, { since: { offset, epoch } });
      this.subscriptions.set(channel, sub);
    }
    sub.receipts = receipts;
    sub.setState("subscribed");
    const detail = { channel, offset, epoch, byServer: true, subscription: sub };
    sub.emit("subscribed", detail);
    this.emit("subscribed", detail);
  }

  onPublication(pub) {
    const sub = this.subscriptions.get(pub.channel);
    if (!sub) return;
    const sameEpoch = sub.epoch === pub.epoch && sub.offset !== null;
    // Never hand the application the same offset twice, nor an older one.
    if (sameEpoch && pub.offset <= sub.offset) return;
    if (sameEpoch && pub.offset > sub.offset + 1) {
      // A gap (a reply lost to a timeout, say): reconnect and recover from the last offset
      // handed over rather than skip what is missing.
      this.dropConnection(4002, "gap detected");
      return;
    }
    sub.epoch = pub.epoch;
    sub.offset = pub.offset;
    // Receipts wait for what the listeners return (a promise: until it settles).
    const results = sub.emit("publication", pub);
    this.emit("publication", pub);
    if (sub.receipts) this.acknowledgeWhenDone(sub, pub, results);
  }

  /**
   * Delivery receipts: the server hears a publication was processed once its listeners
   * returned (or the promises they returned settled) — in offset order, as an ack is
   * cumulative.
   */
  acknowledgeWhenDone(sub, pub, results) {
    const entry = { epoch: pub.epoch, offset: pub.offset, done: false };
    sub.processing ??= [];
    sub.processing.push(entry);
    const settled = () => {
      entry.done = true;
      let last = null;
      while (sub.processing.length > 0 && sub.processing[0].done) last = sub.processing.shift();
      if (last) this.ack(pub.channel, last.epoch, last.offset);
    };
    const promises = results.filter((r) => r && typeof r.then === "function");
    if (promises.length > 0) Promise.allSettled(promises).then(settled);
    else settled();
  }

  /** Acknowledges `channel` up to `offset`: cumulative, so a burst sends one `ack`. */
  ack(channel, epoch, offset) {
    const sub = this.subscriptions.get(channel);
    if (!sub || sub.epoch !== epoch) return;
    if (sub.ackedEpoch !== epoch) {
      sub.ackedEpoch = epoch;
      sub.acked = 0;
      sub.ackSent = 0;
    }
    if (offset <= sub.acked) return;
    sub.acked = offset;
    if (sub.ackQueued) return;
    sub.ackQueued = true;
    queueMicrotask(() => {
      sub.ackQueued = false;
      this.sendAck(sub);
    });
  }

  /** Sends what is acknowledged and not yet sent (again after a reconnect). */
  sendAck(sub) {
    if (!this.isConnected || this.subscriptions.get(sub.channel) !== sub) return;
    if (!sub.acked || sub.ackedEpoch !== sub.epoch || sub.acked <= (sub.ackSent ?? 0)) return;
    this.send({ op: "ack", channel: sub.channel, offset: sub.acked });
    sub.ackSent = sub.acked;
  }

  async sendSubscribe(sub) {
    const ws = this.ws;
    const { channel } = sub;
    sub.setState("subscribing");
    try {
      const since = sub.offset !== null ? { offset: sub.offset, epoch: sub.epoch } : undefined;
      const ok = await this.request({ op: "subscribe", channel, since });
      if (this.subscriptions.get(channel) !== sub) return;
      sub.retry = 0;
      sub.receipts = ok.receipts === true;
      // An ack made while disconnected goes now.
      sub.ackSent = 0;
      queueMicrotask(() => this.sendAck(sub));
      if (ok.recovered) {
        for (const pub of ok.publications) this.onPublication(pub);
      } else if (ok.recovered === false) {
        const detail = { channel, reason: ok.reason };
        sub.emit("unrecovered", detail);
        this.emit("unrecovered", detail);
        // Start afresh from where the channel stands, even if that is "behind" us (a
        // failover that lost writes): the reason has told the application to reload.
        sub.offset = ok.offset;
        sub.epoch = ok.epoch;
      }
      // From here on, live publications continue from the position the server reported.
      if (sub.offset === null || sub.epoch !== ok.epoch || ok.offset > sub.offset) {
        sub.offset = ok.offset;
        sub.epoch = ok.epoch;
      }
      sub.setState("subscribed");
      const detail = { ...ok, channel, byServer: false, subscription: sub };
      sub.emit("subscribed", detail);
      this.emit("subscribed", detail);
    } catch (err) {
      if (this.subscriptions.get(channel) !== sub) return;
      const lost = err.code === ClientErrors.DISCONNECTED || err.code === ClientErrors.CLOSED;
      if (lost) return; // The next connection subscribes again.
      if (err.code === ClientErrors.TIMEOUT) {
        // No reply in time: a late one could carry recovered publications nobody would take.
        // Start over on a fresh connection instead.
        sub.emit("error", err);
        if (this.ws === ws && this.isConnected) this.dropConnection(4002, "subscribe timed out");
        return;
      }
      if (err.code >= 500 && err.code < 600) {
        // Retry what may succeed later on the same connection; a reconnect subscribes again
        // anyway.
        sub.emit("error", err);
        const delay = Math.min(this.options.maxDelayMs, this.options.minDelayMs * 2 ** sub.retry++);
        setTimeout(() => {
          if (this.ws === ws && this.isConnected && this.subscriptions.get(channel) === sub) {
            this.sendSubscribe(sub);
          }
        }, delay * (0.5 + Math.random()));
        return;
      }
      // Refused (rules, token, backend): told to this subscription alone.
      this.subscriptions.delete(channel);
      sub.refused(err);
    }
  }

  async onClose(event, url) {
    for (const name of ["dead", "stable", "refresh", "fallback"]) clearTimeout(this.timers[name]);
    const lived = this.connectedAt === null ? 0 : Date.now() - this.connectedAt;
    const opened = this.opened;
    this.connectedAt = null;
    this.connectedInfo = null;
    for (const { reject, timer } of this.pending.values()) {
      clearTimeout(timer);
      reject(new TidingsError(ClientErrors.DISCONNECTED, "connection lost before the reply"));
    }
    this.pending.clear();
    for (const sub of this.subscriptions.values()) if (sub.state === "subscribed") sub.setState("subscribing");
    if (this.state === "closed") return;
    let closed = { code: event.code, reason: event.reason ?? "", httpStatus: event.httpStatus };
    if (!opened && event.code === CLOSE_ABNORMAL && this.transport === "websocket") {
      // A refused handshake looks like 1006 with no reason to a WebSocket; the server's
      // refusal says why over plain HTTP.
      const status = this.handshakeStatus;
      const probed = await this.probe(url);
      if (this.state === "closed") return;
      if (probed) closed = probed;
      else if ([401, 403, 404].includes(status)) {
        const reason = `the server refused the WebSocket handshake with HTTP ${status}`;
        closed = { code: CLOSE_POLICY_VIOLATION, reason, httpStatus: status };
      }
    } else if (event.refused) {
      closed = { code: event.code, reason: event.reason, httpStatus: event.httpStatus };
    }
    let final =
      closed.code === CLOSE_POLICY_VIOLATION ||
      (closed.code >= CLOSE_NO_RECONNECT_MIN && closed.code <= CLOSE_NO_RECONNECT_MAX) ||
      // An expired token comes back expired: only `getToken` can bring a fresh one.
      (closed.code === CLOSE_TOKEN_EXPIRED && !this.options.getToken);
    if (final && closed.httpStatus) {
      // One node's refusal of the handshake (its origin list, say) is final only once every
      // URL has refused it: another node may let this page in.
      this.refusedBy.add(this.urlIndex % this.urls.length);
      final = this.refusedBy.size >= this.urls.length;
    }
    if (final) {
      this.emit("disconnected", { ...closed, reconnecting: false, delayMs: 0, transport: this.transport });
      this.finish(closed);
      return;
    }
    // A token that could not be had says nothing about the transport.
    const switched = event.tokenFailed ? false : this.chooseTransport(lived);
    let delayMs = 0;
    if (switched) {
      // Another transport to the same server: try it at once.
      this.timers.reconnect = setTimeout(() => this.connect(), 0);
    } else {
      // Full jitter: a restarting server is not hit by every client in the same instant.
      const ceiling = Math.min(this.options.maxDelayMs, this.options.minDelayMs * 2 ** this.attempt);
      delayMs = Math.round(this.options.minDelayMs / 2 + Math.random() * ceiling);
      this.attempt += 1;
      this.urlIndex += 1;
      this.timers.reconnect = setTimeout(() => this.connect(), delayMs);
    }
    this.setState("disconnected");
    this.emit("disconnected", { ...closed, reconnecting: true, delayMs, transport: this.transport });
  }

  /** Asks the route over plain HTTP why a WebSocket handshake failed; null if it cannot say. */
  async probe(url) {
    if (typeof fetch !== "function") return null;
    const http = new URL(url.href);
    http.protocol = http.protocol === "wss:" ? "https:" : "http:";
    try {
      const response = await fetch(http, { cache: "no-store" });
      // 400: the route is there and is not refusing us, only a non-WebSocket request.
      if (response.ok || response.status === 400) return null;
      return await refusal(response);
    } catch {
      return null; // Unreachable, or unreadable across origins: nothing more to say.
    }
  }

  /**
   * After a connection ended, picks the next transport (with `transport: "auto"`); true if it
   * changed at once. A WebSocket that never said `connected` (two in a row once WebSockets
   * have worked here), or two in a row cut within seconds, means something between here and
   * the server stops them: use the stream. A stream that never connected either means the
   * server is away, not the WebSocket: try WebSocket again next time.
   */
  chooseTransport(lived) {
    if (this.options.transport !== "auto") return false;
    if (this.transport === "websocket") {
      if (lived < 5_000) this.wsFailures += 1;
      // Once WebSockets have worked here, one failure is more likely the server restarting
      // than a proxy: it takes two in a row.
      const enough = this.wsWorked ? 2 : 1;
      if (this.wsFailures < enough || typeof fetch !== "function") return false;
      this.transport = "stream";
      this.emit("transport", { transport: this.transport });
      return lived === 0;
    }
    if (lived === 0) {
      this.transport = "websocket";
      this.wsFailures = 0;
      this.emit("transport", { transport: this.transport });
    }
    return false;
  }

  /** Drops a connection that has been silent longer than the server's heartbeat allows. */
  armDeadTimer(ms) {
    clearTimeout(this.timers.dead);
    const info = this.connectedInfo;
    const limit = ms ?? (info ? info.ping_interval_ms + info.pong_timeout_ms : 35_000);
    this.timers.dead = setTimeout(() => this.dropConnection(4001, "server silent"), limit);
  }

  /**
   * Abandons the current socket at once and reconnects (with back-off). A dead peer never
   * completes the closing handshake, so this does not wait for the socket's onclose.
   */
  dropConnection(code, reason, tokenFailed = false) {
    const ws = this.ws;
    if (!ws) return;
    ws.onmessage = ws.onclose = ws.onopen = null;
    try {
      ws.close(code, reason);
    } catch {
      // Already closing.
    }
    this.onClose({ code, reason, tokenFailed }, null);
  }
}
