// Every `js` sample of docs/js-client.md, run against the real server: each must exit 0 and
// print what its `console.log(…); // expected` comments say.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";

import { startServer } from "./support.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const doc = readFileSync(path.join(root, "../../docs/js-client.md"), "utf8");
const samples = doc.split("```js\n").slice(1).map((rest) => rest.split("```")[0]);

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server.kill();
});

test("docs/js-client.md has samples", () => {
  assert.ok(samples.length >= 3, `${samples.length} samples`);
});

for (const [index, sample] of samples.entries()) {
  test(`docs/js-client.md sample ${index + 1} runs and prints what it says`, () => {
    const expected = [...sample.matchAll(/console\.log\(.*\); \/\/ (.*)$/gm)].map((m) => m[1].trim());
    const source =
      `import { WebSocket as NodeWebSocket } from "ws";\n` +
      `globalThis.WebSocket ??= NodeWebSocket;\n` +
      `const SERVER = ${JSON.stringify(server.ws)};\n` +
      sample.replaceAll('from "tidings-client"', `from ${JSON.stringify(path.join(root, "src/tidings.js"))}`);
    const file = path.join(root, `test/.sample-${index + 1}.mjs`);
    writeFileSync(file, source);
    const out = execFileSync("node", [file], { cwd: root, encoding: "utf8", timeout: 15_000 });
    assert.deepEqual(out.trim().split("\n"), expected);
  });
}
