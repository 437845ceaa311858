// Real parts for the client's tests: the `tidings` binary (TIDINGS_BIN, or the workspace's
// release build) on an ephemeral port, and `redis-server` on a free port of its own.

import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.TIDINGS_BIN ?? path.resolve(here, "../../../target/release/tidings");
/** How long anything may take before a test fails. */
export const WAIT = 10_000;

/** Resolves with `promise`'s value, or fails naming `what` after `ms`. */
export function within(what, promise, ms = WAIT) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** The next `type` event of `emitter` (a client or a subscription) that passes `test`. */
export function next(emitter, type, test = () => true) {
  return within(
    `a "${type}" event`,
    new Promise((resolve) => {
      const off = emitter.on(type, (detail) => {
        if (!test(detail)) return;
        off();
        resolve(detail);
      });
    }),
  );
}

/** A running `tidings`; `kill()` sends SIGKILL. */
export async function startServer(args = [], env = {}) {
  const clean = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.startsWith("TIDINGS_") && name !== "RUST_LOG"),
  );
  const child = spawn(BIN, ["--listen", "127.0.0.1:0", ...args], {
    env: { ...clean, TIDINGS_LOG: "warn", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let logs = "";
  child.stderr.on("data", (chunk) => (logs += chunk));
  const lines = readline.createInterface({ input: child.stdout });
  const addr = await within(
    "tidings listening",
    new Promise((resolve, reject) => {
      lines.on("line", (line) => {
        if (line.startsWith("listening on ")) resolve(line.slice("listening on ".length).trim());
      });
      child.on("exit", (code) => reject(new Error(`tidings exited (${code}) before listening: ${logs}`)));
    }),
  );
  const exited = new Promise((resolve) => child.on("exit", resolve));
  return {
    addr,
    ws: `ws://${addr}/ws`,
    http: `http://${addr}`,
    logs: () => logs,
    async kill() {
      child.kill("SIGKILL");
      await within("tidings exits", exited);
    },
  };
}

/** A free TCP port on loopback. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

/** A throwaway `redis-server`. */
export async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), "tidings-js-redis-"));
  const child = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir],
    { stdio: "ignore" },
  );
  const exited = new Promise((resolve) => child.on("exit", resolve));
  await within(
    "redis-server listening",
    (async () => {
      for (;;) {
        const ok = await new Promise((resolve) => {
          const socket = net.connect(port, "127.0.0.1", () => {
            socket.end();
            resolve(true);
          });
          socket.on("error", () => resolve(false));
        });
        if (ok) return;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    })(),
  );
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      child.kill("SIGKILL");
      await within("redis exits", exited);
    },
  };
}
