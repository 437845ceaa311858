// The package as users get it: `npm pack`, installed into an empty project, imported by name,
// talking to the real server.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";

import { startServer } from "./support.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server.kill();
});

test("the npm pack tarball installs in an empty project and works there", () => {
  const dir = mkdtempSync(path.join(tmpdir(), "tidings-client-user-"));
  const packed = JSON.parse(
    execFileSync("npm", ["pack", "--json", "--pack-destination", dir], { cwd: root, encoding: "utf8" }),
  );
  const files = packed[0].files.map((f) => f.path).sort();
  assert.deepEqual(files, ["CHANGELOG.md", "README.md", "package.json", "src/tidings.d.ts", "src/tidings.js"]);
  writeFileSync(path.join(dir, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  // Offline: the tarball has no dependencies.
  execFileSync("npm", ["install", "--offline", "--no-audit", "--no-fund", path.join(dir, packed[0].filename)], {
    cwd: dir,
    stdio: "ignore",
  });
  const ws = path.join(root, "node_modules/ws/wrapper.mjs");
  writeFileSync(
    path.join(dir, "app.js"),
    `import { Tidings } from "tidings-client";
     import { WebSocket } from ${JSON.stringify(ws)};
     const client = new Tidings(${JSON.stringify(server.ws)}, { name: "packed", WebSocket });
     const room = client.subscribe("packed");
     const got = new Promise((resolve) => room.on("publication", (pub) => resolve(pub.data)));
     await room.ready();
     await room.publish({ hello: "from the tarball" });
     console.log(JSON.stringify({ version: Tidings.version, got: await got }));
     client.close();`,
  );
  const out = JSON.parse(execFileSync("node", ["app.js"], { cwd: dir, encoding: "utf8", timeout: 10_000 }));
  const manifest = JSON.parse(execFileSync("node", ["-p", "JSON.stringify(require('./package.json'))"], { cwd: root, encoding: "utf8" }));
  assert.deepEqual(out, { version: manifest.version, got: { hello: "from the tarball" } });
});

test("the declarations type-check a sample that uses every public name", () => {
  execFileSync(path.join(root, "node_modules/.bin/tsc"), ["--noEmit", "-p", "test/types"], {
    cwd: root,
    stdio: "inherit",
  });
});

test("the server serves the same file at /tidings.js, to any origin", async () => {
  const response = await fetch(`${server.http}/tidings.js`, { headers: { origin: "https://elsewhere.test" } });
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("access-control-allow-origin"), "*");
  const { readFileSync } = await import("node:fs");
  assert.equal(await response.text(), readFileSync(path.join(root, "src/tidings.js"), "utf8"));
});
