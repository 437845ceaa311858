// Uses every public name of the client, so that `tsc --noEmit` checks the declarations.
import {
  ClientErrors,
  Subscription,
  Tidings,
  TidingsError,
  type Closed,
  type Connected,
  type Disconnected,
  type HistoryPage,
  type Member,
  type Options,
  type PresencePage,
  type PresenceStats,
  type Publication,
  type Published,
  type State,
  type StreamPosition,
  type SubscriptionState,
  type Transport,
} from "tidings-client";

interface Message {
  text: string;
}

export async function everything(WebSocket: Options["WebSocket"]): Promise<void> {
  const options: Options = {
    name: "ann",
    getToken: async () => "token",
    WebSocket,
    transport: "auto",
    outboxLimit: 10,
    outboxTimeoutMs: 1_000,
    debug: (...args: unknown[]) => void args,
  };
  const client = new Tidings(["ws://127.0.0.1:8000/ws"], options);
  const version: string = Tidings.version;
  const protocol: number = Tidings.protocolVersion;
  const state: State = client.state;
  const transport: Transport = client.transport;
  client.on("state", ({ state, previous }) => void [state, previous]);
  client.on("connected", (info: Connected) => void info.user);
  client.on("disconnected", (why: Disconnected) => void [why.code, why.reason, why.httpStatus]);
  client.on("closed", (why: Closed) => void why.reason);
  client.addEventListener("error", ({ detail }) => void detail.message);
  await client.ready();

  const room: Subscription<Message> = client.subscribe<Message>("chat:lobby");
  const subState: SubscriptionState = room.state;
  const stop = room.on("publication", (pub: Publication<Message>) => void pub.data.text);
  stop();
  room.on("join", ({ info }) => void (info as Member).user);
  room.on("error", (err: TidingsError) => void err.code);
  room.on("unrecovered", ({ reason }) => void reason);
  await room.ready();
  const published: Published = await room.publish({ text: "hi" });
  const at: StreamPosition = { offset: published.offset, epoch: "e" };
  const page: HistoryPage<Message> = await room.history({ limit: 10, since: at });
  const who: PresencePage = await room.presence({ limit: 10 });
  const counts: PresenceStats = await room.presenceStats();
  await room.unsubscribe();

  client.subscribe<Message>("news", (pub) => void pub.offset, { since: at });
  const again: Subscription<Message> | null = client.getSubscription<Message>("news");
  await client.publish("news", { text: "x" }, { idempotencyKey: "k-1" });
  await client.history("news");
  await client.presenceAll("news");
  await client.presenceStats("news");
  const answer: { ok: boolean } = await client.rpc<{ ok: boolean }>("method", { n: 1 });
  client.onJoin("news", ({ info }) => void info.client)();
  client.onLeave("news", ({ info }) => void info.client)();
  try {
    await client.publish("news", 1);
  } catch (err) {
    if (err instanceof TidingsError && err.code === ClientErrors.OUTBOX_FULL) return;
  }
  void [version, protocol, state, transport, subState, page, who, counts, again, answer];
  client.close();
}
