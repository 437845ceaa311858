// Every `js` sample of docs/js-client.md, run against the real server: each must exit 0 and
// print what its `console.log(…); // expected` comments say.
//
// A sample runs as a Node ES module, with `import "tidings-client"` resolved to src/tidings.js,
// the `ws` package's WebSocket as the global one where Node has none, and before its first line
// `const SERVER = "ws://…/ws"`: the URL of a server the test started. That server runs with
// default flags, unless the sample's first line names others:
//
//   // server: --token-hmac-secret a-secret-of-at-least-32-bytes-long --history-size 10
//
// (flags separated by spaces, no quoting). One server is started per distinct set of flags,
// before the first sample, and shared by the samples that name it. The `tidings` binary is on
// the sample's PATH, for samples that start servers of their own.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";

import { BIN, startServer } from "./support.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const doc = readFileSync(path.join(root, "../../docs/js-client.md"), "utf8");
const samples = doc
  .split("```js\n")
  .slice(1)
  .map((rest) => {
    const source = rest.split("```")[0];
    const flags = /^\/\/ server:(.*)\n/.exec(source)?.[1].trim().split(/\s+/).filter(Boolean) ?? [];
    return { source, flags, key: flags.join(" ") };
  });

/** Flag set (joined by spaces) → its running server. */
const servers = new Map();
/** A folder holding `tidings` (a link to BIN), first on the samples' PATH. */
let binDir;

before(async () => {
  const keys = [...new Set(samples.map((sample) => sample.key))];
  const started = await Promise.all(keys.map((key) => startServer(key ? key.split(" ") : [])));
  keys.forEach((key, i) => servers.set(key, started[i]));
  binDir = mkdtempSync(path.join(tmpdir(), "tidings-docs-bin-"));
  symlinkSync(BIN, path.join(binDir, "tidings"));
});
after(async () => {
  await Promise.all([...servers.values()].map((server) => server.kill()));
  rmSync(binDir, { recursive: true, force: true });
});

test("docs/js-client.md has samples", () => {
  assert.ok(samples.length >= 3, `${samples.length} samples`);
});

for (const [index, { source: sample, key }] of samples.entries()) {
  const label = key ? ` (server: ${key})` : "";
  test(`docs/js-client.md sample ${index + 1}${label} runs and prints what it says`, () => {
    const server = servers.get(key);
    const expected = [...sample.matchAll(/console\.log\(.*\); \/\/ (.*)$/gm)].map((m) => m[1].trim());
    const source =
      `import { WebSocket as NodeWebSocket } from "ws";\n` +
      `globalThis.WebSocket ??= NodeWebSocket;\n` +
      `const SERVER = ${JSON.stringify(server.ws)};\n` +
      sample.replaceAll('from "tidings-client"', `from ${JSON.stringify(path.join(root, "src/tidings.js"))}`);
    const file = path.join(root, `test/.sample-${index + 1}.mjs`);
    writeFileSync(file, source);
    // Nothing of the test's own TIDINGS_* settings reaches a server the sample starts.
    const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith("TIDINGS_")));
    env.PATH = `${binDir}${path.delimiter}${env.PATH ?? ""}`;
    const out = execFileSync("node", [file], { cwd: root, env, encoding: "utf8", timeout: 15_000 });
    assert.deepEqual(out.trim().split("\n"), expected);
  });
}
