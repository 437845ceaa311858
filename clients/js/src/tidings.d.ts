// Types of the Tidings JavaScript client (src/tidings.js). docs/js-client.md is the guide.

/** A position in a channel's stream: where a client has read up to. */
export interface StreamPosition {
  offset: number;
  epoch: string;
}

/** What a publish resolves with: the offset the server stored it at. */
export interface Published {
  offset: number;
}

/** Who published, as the server says it. */
export interface ClientInfo {
  client: string;
  user: string;
}

/** One publication of a channel. */
export interface Publication<T = unknown> {
  channel: string;
  offset: number;
  epoch: string;
  data: T;
  info: ClientInfo;
}

/** A connection present in a channel. */
export interface Member {
  client: string;
  user: string;
  authenticated: boolean;
  info?: unknown;
}

export interface PresenceChange {
  channel: string;
  info: Member;
}

export interface Connected {
  client: string;
  user: string;
  version: number;
  ping_interval_ms: number;
  pong_timeout_ms: number;
  authenticated: boolean;
  expires_in_ms?: number;
  /** Stream transports only: the session's id. */
  session?: string;
}

export interface Disconnected {
  code: number;
  reason: string;
  reconnecting: boolean;
  delayMs: number;
  transport: Transport;
  /** When the server refused the handshake over HTTP: its status. */
  httpStatus?: number;
}

export interface Closed {
  code: number;
  reason: string;
  httpStatus?: number;
}

export interface SubscribedDetail {
  channel: string;
  offset: number;
  epoch: string;
  /** The backend subscribed this connection through the server API. */
  byServer: boolean;
  subscription: Subscription;
  recovered?: boolean;
  receipts?: boolean;
}

export interface HistoryPage<T = unknown> {
  publications: Publication<T>[];
  offset: number;
  epoch: string;
}

export interface PresencePage {
  clients: Member[];
  cursor: string | null;
}

export interface PresenceStats {
  clients: number;
  users: number;
}

export type State = "connecting" | "connected" | "disconnected" | "closed";
export type SubscriptionState = "subscribing" | "subscribed" | "unsubscribed";
export type Transport = "websocket" | "stream";

/** Any constructor shaped like the standard WebSocket (the `ws` package's in Node). */
export type WebSocketConstructor = new (url: string) => {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
};

export interface Options {
  /**
   * A display name, for servers that let anonymous clients in. Without one the server picks
   * a guest name, which the client then keeps when it reconnects.
   */
  name?: string;
  /** A connection token (JWT), sent in `connect`. */
  token?: string;
  /** Asked for a fresh token on every connect and before the current one expires. */
  getToken?: () => Promise<string> | string;
  /** Where there is no global WebSocket (Node 18–21): the `ws` package's. */
  WebSocket?: WebSocketConstructor;
  /** `auto` (default): WebSocket, falling back to the HTTP stream when it does not work. */
  transport?: "auto" | "websocket" | "stream";
  minDelayMs?: number;
  maxDelayMs?: number;
  requestTimeoutMs?: number;
  fallbackAfterMs?: number;
  /** Publishes held while disconnected, at most (default 1000). */
  outboxLimit?: number;
  /** How long a queued publish may wait to be accepted (default 60 000 ms). */
  outboxTimeoutMs?: number;
  /** Log state changes: `true` for `console.debug`, or a function. */
  debug?: boolean | ((...args: unknown[]) => void);
}

/** Codes of the errors the client raises itself. */
export declare const ClientErrors: {
  readonly TIMEOUT: 1;
  readonly CLOSED: 2;
  readonly DISCONNECTED: 3;
  readonly OUTBOX_FULL: 4;
  readonly OUTBOX_TIMEOUT: 5;
  readonly PROTOCOL: 6;
  readonly ALREADY_SUBSCRIBED: 7;
  readonly UNSUBSCRIBED: 8;
};

export declare class TidingsError extends Error {
  constructor(code: number, message: string);
  /** The protocol's error code (docs/protocol.md), or one of `ClientErrors`. */
  readonly code: number;
}

type Listener<T> = (detail: T) => unknown;

export interface ClientEvents {
  state: { state: State; previous: State };
  connected: Connected;
  disconnected: Disconnected;
  closed: Closed;
  error: { code: number; message: string };
  subscribed: SubscribedDetail;
  unsubscribed: { channel: string; byServer: boolean };
  publication: Publication;
  unrecovered: { channel: string; reason: string };
  join: PresenceChange;
  leave: PresenceChange;
  presence_incomplete: { channel: string; more: number };
  transport: { transport: Transport };
}

export interface SubscriptionEvents<T> {
  publication: Publication<T>;
  join: PresenceChange;
  leave: PresenceChange;
  subscribed: SubscribedDetail;
  unsubscribed: { channel: string; byServer?: boolean; reason?: string };
  error: TidingsError;
  unrecovered: { channel: string; reason: string };
}

declare class Emitter<Events> {
  /** Calls `listener(detail)` for each event; returns a function that stops it. */
  on<K extends keyof Events>(type: K, listener: Listener<Events[K]>): () => void;
  off<K extends keyof Events>(type: K, listener: Listener<Events[K]>): void;
  once<K extends keyof Events>(type: K, listener: Listener<Events[K]>): () => void;
  /** DOM style: `listener({ type, detail })`. */
  addEventListener<K extends keyof Events>(
    type: K,
    listener: (event: { type: K; detail: Events[K] }) => unknown,
  ): void;
  removeEventListener<K extends keyof Events>(
    type: K,
    listener: (event: { type: K; detail: Events[K] }) => unknown,
  ): void;
}

export declare class Subscription<T = unknown> extends Emitter<SubscriptionEvents<T>> {
  readonly channel: string;
  readonly state: SubscriptionState;
  /** The last offset delivered, and its epoch (`null` before the first). */
  readonly offset: number | null;
  readonly epoch: string | null;
  readonly receipts: boolean;
  ready(): Promise<this>;
  publish(data: T, options?: { idempotencyKey?: string }): Promise<Published>;
  history(options?: { limit?: number; since?: StreamPosition }): Promise<HistoryPage<T>>;
  presence(options?: { limit?: number; cursor?: string | null }): Promise<PresencePage>;
  presenceStats(): Promise<PresenceStats>;
  unsubscribe(): Promise<void>;
}

export declare class Tidings extends Emitter<ClientEvents> {
  static readonly version: string;
  static readonly protocolVersion: number;
  constructor(urls: string | string[], options?: Options);
  readonly state: State;
  readonly transport: Transport;
  readonly isConnected: boolean;
  /** What the server said in its last `connected`; `null` while not connected. */
  readonly connectedInfo: Connected | null;
  readonly subscriptions: ReadonlyMap<string, Subscription>;
  ready(): Promise<this>;
  close(): void;
  subscribe<T = unknown>(channel: string, options?: { since?: StreamPosition }): Subscription<T>;
  subscribe<T = unknown>(
    channel: string,
    onPublication: (publication: Publication<T>) => unknown,
    options?: { since?: StreamPosition },
  ): Subscription<T>;
  getSubscription<T = unknown>(channel: string): Subscription<T> | null;
  unsubscribe(channel: string): Promise<void>;
  publish<T = unknown>(
    channel: string,
    data: T,
    options?: { idempotencyKey?: string },
  ): Promise<Published>;
  history<T = unknown>(
    channel: string,
    options?: { limit?: number; since?: StreamPosition },
  ): Promise<HistoryPage<T>>;
  presence(channel: string, options?: { limit?: number; cursor?: string | null }): Promise<PresencePage>;
  presenceAll(channel: string): Promise<Member[]>;
  presenceStats(channel: string): Promise<PresenceStats>;
  rpc<R = unknown>(method: string, data?: unknown): Promise<R>;
  onJoin(channel: string, handler: (change: PresenceChange) => unknown): () => void;
  onLeave(channel: string, handler: (change: PresenceChange) => unknown): () => void;
}
