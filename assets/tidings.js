// Tidings JavaScript client, protocol v1 (docs/protocol.md). A plain ES module, no build step:
//
//   import { Tidings } from "/tidings.js";
//   const client = new Tidings("ws://127.0.0.1:8000/ws", { name: "alice" });
//   // or, with tokens: new Tidings(url, { getToken: () => fetch("/token").then((r) => r.text()) })
//   client.subscribe("chat:lobby", (pub) => console.log(pub.info.user, pub.data));
//   await client.publish("chat:lobby", { text: "hi" });
//
// It reconnects by itself with jittered exponential back-off (across a list of URLs when given
// one), answers the server's heartbeats, treats a silent server as dead, and after each
// reconnect subscribes again to every channel from the last offset it delivered, so that what
// was published meanwhile is recovered from history — or it says plainly that it was not.
// With `getToken` it authenticates every connection with a fresh token and refreshes the
// token before it expires.
//
// Where WebSockets do not work — a proxy refuses the upgrade, or lets it through and then
// passes nothing — it falls back by itself to an HTTP stream (`/stream`, one frame per line)
// with its commands sent as requests (`POST /stream`); `client.transport` says which is in use.

const CLOSE_NO_RECONNECT_MIN = 4500;
const CLOSE_NO_RECONNECT_MAX = 4999;
const CLOSE_POLICY_VIOLATION = 1008;
const OPEN = 1;
const CLOSED = 3;
/** Commands one request carries at most (the server's limit). */
const COMMANDS_PER_REQUEST = 100;
/** Bytes of small commands gathered into one request (the server takes 64 KiB beyond one
 * message of the largest size). */
const BATCH_BYTES = 60_000;

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
    let closed = { code: 1006, reason: "the stream ended" };
    try {
      const response = await fetch(this.url, { signal: this.abort.signal, cache: "no-store" });
      if (!response.ok) {
        const refused = response.status === 401 || response.status === 403;
        closed = { code: refused ? CLOSE_POLICY_VIOLATION : 1006, reason: await response.text() };
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

/** Error carried by a rejected request: `code` is the protocol's error code. */
export class TidingsError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "TidingsError";
    this.code = code;
  }
}

/**
 * A protocol v1 connection that stays connected.
 *
 * Events (EventTarget; `event.detail` carries the data):
 * - `connected`: `{client, user, version, ping_interval_ms, pong_timeout_ms, authenticated,
 *   expires_in_ms?}`
 * - `disconnected`: `{code, reason, reconnecting, delayMs}`
 * - `error`: `{code, message}` for error pushes (failed commands sent without an id)
 * - `subscribed`: `{channel, offset, epoch, byServer?}` (`byServer`: the backend subscribed
 *   this connection through the server API)
 * - `unsubscribed`: `{channel}` — the backend unsubscribed this connection
 * - `publication`: a publication of a channel the backend subscribed this connection to
 * - `unrecovered`: `{channel, reason}` — publications sent while this client was away could
 *   not be recovered (history too short, or the channel's history was lost); reload state
 * - `join` / `leave`: `{channel, info: {client, user, authenticated, info?}}` — somebody became
 *   present in (or left) a subscribed channel whose namespace pushes joins and leaves; in a
 *   big room they come from one batched push, one event per member, joins first
 * - `presence_incomplete`: `{channel, more}` — a batch left `more` changes out: reload the
 *   member list with `presenceAll` if you keep one
 */
export class Tidings extends EventTarget {
  /**
   * @param {string|string[]} urls WebSocket URL(s) of `/ws`; several are tried in turn.
   * @param {{name?: string, token?: string, getToken?: () => Promise<string>,
   *          minDelayMs?: number, maxDelayMs?: number, requestTimeoutMs?: number,
   *          transport?: "auto"|"websocket"|"stream", fallbackAfterMs?: number}} options
   *   `token` is sent in `connect`; `getToken` is asked for a fresh one on every connect and
   *   before the current one expires (`refresh`). `transport` (default `auto`): WebSocket
   *   first, then the HTTP stream when a WebSocket cannot connect, delivers nothing within
   *   `fallbackAfterMs` (3 s), or is cut twice in a row within seconds of connecting.
   */
  constructor(urls, options = {}) {
    super();
    this.urls = Array.isArray(urls) ? urls : [urls];
    this.options = {
      minDelayMs: 300,
      maxDelayMs: 10_000,
      requestTimeoutMs: 10_000,
      transport: "auto",
      fallbackAfterMs: 3_000,
      ...options,
    };
    /** The transport in use or being tried: `websocket` or `stream`. */
    this.transport = this.options.transport === "stream" ? "stream" : "websocket";
    this.wsFailures = 0;
    this.fallbackTimer = null;
    this.ws = null;
    this.urlIndex = 0;
    this.attempt = 0;
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject, timer}
    this.subscriptions = new Map(); // channel -> {handler, offset, epoch}
    this.connectedInfo = null;
    this.closedByUser = false;
    this.deadTimer = null;
    this.reconnectTimer = null;
    this.stableTimer = null;
    this.refreshTimer = null;
    this.presenceHandlers = { join: new Map(), leave: new Map() }; // channel -> Set(handler)
    this.connect();
  }

  /** True while the socket is open and the server has said `connected`. */
  get isConnected() {
    return this.connectedInfo !== null && this.ws?.readyState === OPEN;
  }

  /**
   * Subscribes (now, and again after every reconnect); `handler(pub)` gets each publication,
   * in offset order, once. With `since: {offset, epoch}` it starts right after that position
   * (for example the one a `history` call returned), recovering what came in between. On a
   * channel with delivery receipts, publications are acknowledged once `handler` returned
   * (or the promise it returned settled), in offset order.
   */
  subscribe(channel, handler, { since } = {}) {
    const existing = this.subscriptions.get(channel);
    if (existing) {
      // Same channel again: keep its position (and duplicate filtering), swap the handler.
      existing.handler = handler;
      return;
    }
    this.subscriptions.set(channel, {
      handler,
      offset: since ? since.offset : null,
      epoch: since ? since.epoch : null,
      retry: 0,
    });
    if (this.isConnected) this.sendSubscribe(channel);
  }

  /** Reads a channel's history: `{publications, offset, epoch}`, oldest first. */
  history(channel, { limit, since } = {}) {
    return this.request({ op: "history", channel, limit, since });
  }

  /** Stops delivery of `channel`; resolves when the server confirms. */
  async unsubscribe(channel) {
    this.subscriptions.delete(channel);
    if (this.isConnected) await this.request({ op: "unsubscribe", channel });
  }

  /**
   * Publishes `data` (any JSON value); resolves with `{offset}` once the server accepted it.
   * With `idempotencyKey`, retrying after a lost reply cannot publish twice.
   */
  publish(channel, data, { idempotencyKey } = {}) {
    return this.request({ op: "publish", channel, data, idempotency_key: idempotencyKey });
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

  /**
   * Calls the app's backend (the server's `--proxy-rpc`): resolves with the `data` it
   * answered, or rejects with a TidingsError carrying its code (the app's 400–1999, or 502 when
   * the backend failed).
   */
  async rpc(method, data) {
    const ok = await this.request({ op: "rpc", method, data });
    return ok.data;
  }

  /** How many connections and users are present: `{clients, users}`. */
  presenceStats(channel) {
    return this.request({ op: "presence_stats", channel });
  }

  /**
   * Calls `handler({channel, info})` for each join in `channel` (a subscribed channel whose
   * namespace pushes them). Returns a function that stops it.
   */
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
    this.emit(kind, change);
  }

  /** Closes for good: no reconnect. */
  close() {
    this.closedByUser = true;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.deadTimer);
    clearTimeout(this.stableTimer);
    clearTimeout(this.refreshTimer);
    clearTimeout(this.fallbackTimer);
    this.ws?.close(1000, "client closed");
  }

  /** Sends a command with an id and resolves with its `ok` body or rejects with TidingsError. */
  request(command) {
    if (!this.isConnected) {
      return Promise.reject(new TidingsError(0, "not connected"));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new TidingsError(0, `no reply to ${command.op} within ${this.options.requestTimeoutMs} ms`));
      }, this.options.requestTimeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ id, ...command }));
    });
  }

  connect() {
    const url = new URL(this.urls[this.urlIndex % this.urls.length], location.href);
    const stream = this.transport === "stream";
    if (stream) {
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
    const ws = stream ? new StreamSocket(url) : new WebSocket(url);
    this.ws = ws;
    this.connectedAt = null;
    clearTimeout(this.fallbackTimer);
    ws.onmessage = (event) => this.onFrame(event.data);
    ws.onclose = (event) => this.onClose(event);
    ws.onopen = async () => {
      this.armDeadTimer(15_000);
      if (!stream && this.options.transport === "auto") {
        // A middlebox may let the upgrade through and then pass nothing, not even `connected`.
        this.fallbackTimer = setTimeout(() => {
          if (this.ws === ws && !this.connectedInfo) this.dropConnection(4000, "WebSocket silent");
        }, this.options.fallbackAfterMs);
      }
      if (!withToken) {
        // Without a name in the URL the identity is set by this first command.
        if (!this.options.name) ws.send(JSON.stringify({ op: "connect" }));
        return;
      }
      let token;
      try {
        token = this.options.getToken ? await this.options.getToken() : this.options.token;
      } catch (err) {
        this.emit("error", { code: 0, message: `getToken failed: ${err}` });
        if (this.ws === ws) this.dropConnection(4000, "no token");
        return;
      }
      if (this.ws === ws) ws.send(JSON.stringify({ op: "connect", token }));
    };
  }

  /** Asks `getToken` for a new token once 80% of the current one's life has passed. */
  scheduleRefresh(expiresInMs) {
    clearTimeout(this.refreshTimer);
    if (expiresInMs == null || !this.options.getToken) return;
    // setTimeout fires at once for delays past 2^31-1 ms (~24.8 days): a long-lived token
    // would otherwise be refreshed in a tight loop. Refreshing early is harmless.
    const delayMs = Math.min(2_147_483_647, Math.max(1_000, expiresInMs * 0.8));
    this.refreshTimer = setTimeout(async () => {
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
      this.connectedInfo = frame.connected;
      this.connectedAt = Date.now();
      if (this.transport === "websocket") this.wsWorked = true;
      clearTimeout(this.fallbackTimer);
      // Back-off starts over only once a connection has proved stable, so a server that
      // accepts and drops at once is not hammered.
      clearTimeout(this.stableTimer);
      this.stableTimer = setTimeout(() => {
        this.attempt = 0;
        if (this.transport === "websocket") this.wsFailures = 0;
      }, 5_000);
      this.armDeadTimer();
      this.scheduleRefresh(frame.connected.expires_in_ms);
      this.emit("connected", frame.connected);
      for (const channel of this.subscriptions.keys()) this.sendSubscribe(channel);
    } else if (frame.subscribed) {
      // The application's backend subscribed this connection (server API). Publications of
      // channels nobody passed a handler for arrive as `publication` events.
      const { channel, offset, epoch, receipts = false } = frame.subscribed;
      if (!this.subscriptions.has(channel)) {
        this.subscriptions.set(channel, {
          handler: (pub) => this.emit("publication", pub),
          offset,
          epoch,
          retry: 0,
        });
      }
      this.subscriptions.get(channel).receipts = receipts;
      this.emit("subscribed", { channel, offset, epoch, byServer: true });
    } else if (frame.unsubscribed) {
      this.subscriptions.delete(frame.unsubscribed.channel);
      this.emit("unsubscribed", frame.unsubscribed);
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
      this.emit("error", frame.error);
    }
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
    const handled = sub.handler(pub);
    // Delivery receipts: the server hears a publication was processed once its handler
    // returned (or its promise settled) — in offset order, since an ack is cumulative.
    if (sub.receipts) {
      const entry = { epoch: pub.epoch, offset: pub.offset, done: false };
      sub.processing ??= [];
      sub.processing.push(entry);
      const settled = () => {
        entry.done = true;
        let last = null;
        while (sub.processing.length > 0 && sub.processing[0].done) last = sub.processing.shift();
        if (last) this.ack(pub.channel, last.epoch, last.offset);
      };
      if (handled && typeof handled.then === "function") handled.then(settled, settled);
      else settled();
    }
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
      this.sendAck(channel, sub);
    });
  }

  /** Sends what is acknowledged and not yet sent (again after a reconnect). */
  sendAck(channel, sub) {
    if (!this.isConnected || this.subscriptions.get(channel) !== sub) return;
    if (!sub.acked || sub.ackedEpoch !== sub.epoch || sub.acked <= (sub.ackSent ?? 0)) return;
    this.ws.send(JSON.stringify({ op: "ack", channel, offset: sub.acked }));
    sub.ackSent = sub.acked;
  }

  async sendSubscribe(channel) {
    const ws = this.ws;
    try {
      const known = this.subscriptions.get(channel);
      const since = known && known.offset !== null ? { offset: known.offset, epoch: known.epoch } : undefined;
      const ok = await this.request({ op: "subscribe", channel, since });
      const sub = this.subscriptions.get(channel);
      if (!sub) return;
      sub.retry = 0;
      sub.receipts = ok.receipts === true;
      // An ack made while disconnected goes now.
      sub.ackSent = 0;
      queueMicrotask(() => this.sendAck(channel, sub));
      if (ok.recovered) {
        for (const pub of ok.publications) this.onPublication(pub);
      } else if (ok.recovered === false) {
        this.emit("unrecovered", { channel, reason: ok.reason });
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
      this.emit("subscribed", ok);
    } catch (err) {
      this.emit("error", { code: err.code, message: `subscribe ${channel}: ${err.message}` });
      const sub = this.subscriptions.get(channel);
      if (sub && err.code === 0 && this.ws === ws && this.isConnected) {
        // No reply in time: a late one could carry recovered publications nobody would take.
        // Start over on a fresh connection instead.
        this.dropConnection(4002, "subscribe timed out");
        return;
      }
      // Retry what may succeed later (5xx) on the same connection; a reconnect subscribes
      // again anyway.
      if (sub && err.code >= 500 && this.ws === ws && this.isConnected) {
        const delay = Math.min(this.options.maxDelayMs, this.options.minDelayMs * 2 ** sub.retry++);
        setTimeout(() => {
          if (this.ws === ws && this.isConnected && this.subscriptions.has(channel)) {
            this.sendSubscribe(channel);
          }
        }, delay * (0.5 + Math.random()));
      }
    }
  }

  onClose(event) {
    clearTimeout(this.deadTimer);
    clearTimeout(this.stableTimer);
    clearTimeout(this.refreshTimer);
    clearTimeout(this.fallbackTimer);
    const lived = this.connectedAt === null ? 0 : Date.now() - this.connectedAt;
    this.connectedAt = null;
    this.connectedInfo = null;
    for (const { reject, timer } of this.pending.values()) {
      clearTimeout(timer);
      reject(new TidingsError(0, "connection closed"));
    }
    this.pending.clear();
    const final =
      this.closedByUser ||
      event.code === CLOSE_POLICY_VIOLATION ||
      (event.code >= CLOSE_NO_RECONNECT_MIN && event.code <= CLOSE_NO_RECONNECT_MAX);
    const switched = !final && this.chooseTransport(lived);
    let delayMs = 0;
    if (switched) {
      // Another transport to the same server: try it at once.
      this.reconnectTimer = setTimeout(() => this.connect(), 0);
    } else if (!final) {
      // Full jitter: a restarting server is not hit by every client in the same instant.
      const ceiling = Math.min(this.options.maxDelayMs, this.options.minDelayMs * 2 ** this.attempt);
      delayMs = Math.round(this.options.minDelayMs / 2 + Math.random() * ceiling);
      this.attempt += 1;
      this.urlIndex += 1;
      this.reconnectTimer = setTimeout(() => this.connect(), delayMs);
    }
    this.emit("disconnected", {
      code: event.code,
      reason: event.reason,
      reconnecting: !final,
      delayMs,
      transport: this.transport,
    });
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
      if (this.wsFailures < enough) return false;
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
    clearTimeout(this.deadTimer);
    const info = this.connectedInfo;
    const limit = ms ?? (info ? info.ping_interval_ms + info.pong_timeout_ms : 35_000);
    this.deadTimer = setTimeout(() => this.dropConnection(4001, "server silent"), limit);
  }

  /**
   * Abandons the current socket at once and reconnects (with back-off). A dead peer never
   * completes the closing handshake, so this does not wait for the browser's onclose.
   */
  dropConnection(code, reason) {
    const ws = this.ws;
    if (!ws) return;
    ws.onmessage = ws.onclose = ws.onopen = null;
    ws.close(code, reason);
    this.onClose({ code, reason });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
