// Real parts for the client's tests: the `tidings` binary (TIDINGS_BIN, or the workspace's
// release build) on an ephemeral port, and `redis-server` on a free port of its own.

import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync } from "node:fs";
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

/** Whether `port` on loopback can be listened on now. */
function portFree(port) {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

/** Resolves once something listens on `port`. */
async function listening(what, port) {
  await within(
    what,
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
}

/**
 * A throwaway Redis Cluster: three masters, every slot assigned. Ports come from 20000–29999
 * (below the ephemeral range) with their cluster bus ports (10,000 above) free as well.
 */
export async function startRedisCluster() {
  const ports = [];
  while (ports.length < 3) {
    const port = 20_000 + Math.floor(Math.random() * 10_000);
    if (!ports.includes(port) && (await portFree(port)) && (await portFree(port + 10_000))) ports.push(port);
  }
  const dir = mkdtempSync(path.join(tmpdir(), "tidings-js-cluster-"));
  const children = ports.map((port) => {
    const nodeDir = path.join(dir, String(port));
    mkdirSync(nodeDir);
    const args = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
    args.push("--cluster-enabled", "yes", "--cluster-node-timeout", "2000", "--dir", nodeDir);
    const child = spawn("redis-server", args, { stdio: "ignore" });
    return { child, exited: new Promise((resolve) => child.on("exit", resolve)) };
  });
  for (const port of ports) await listening("cluster node listening", port);
  const nodes = ports.map((port) => `127.0.0.1:${port}`);
  const create = spawn("redis-cli", ["--cluster", "create", ...nodes, "--cluster-replicas", "0", "--cluster-yes"], {
    stdio: "ignore",
  });
  const code = await within("redis-cli --cluster create", new Promise((resolve) => create.on("exit", resolve)), 30_000);
  if (code !== 0) throw new Error(`redis-cli --cluster create exited with ${code}`);
  await within(
    "cluster state ok on every node",
    (async () => {
      for (const port of ports) {
        for (;;) {
          const info = await new Promise((resolve) => {
            const cli = spawn("redis-cli", ["-p", String(port), "CLUSTER", "INFO"]);
            let out = "";
            cli.stdout.on("data", (chunk) => (out += chunk));
            cli.on("exit", () => resolve(out));
          });
          if (info.includes("cluster_state:ok")) break;
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
      }
    })(),
    30_000,
  );
  return {
    url: `redis+cluster://${nodes.join(",")}`,
    async stop() {
      for (const { child } of children) child.kill("SIGKILL");
      await within("cluster nodes exit", Promise.all(children.map(({ exited }) => exited)));
    },
  };
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
  await listening("redis-server listening", port);
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      child.kill("SIGKILL");
      await within("redis exits", exited);
    },
  };
}
