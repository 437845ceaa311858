// Verifies a Tidings webhook in Node.js (no dependencies): `header` is the request's
// Tidings-Signature, `body` the raw body as a Buffer — before any JSON parsing.
import { createHmac, timingSafeEqual } from "node:crypto";

export function verifyTidingsSignature(secret, header, body, toleranceSeconds = 300) {
  const fields = Object.fromEntries(header.split(",").map((part) => part.split("=", 2)));
  const sentAt = Number.parseInt(fields.t, 10);
  if (!Number.isFinite(sentAt) || Math.abs(Date.now() / 1000 - sentAt) > toleranceSeconds) {
    return false;
  }
  const expected = createHmac("sha256", secret).update(`${sentAt}.`).update(body).digest();
  const given = Buffer.from(fields.v1 ?? "", "hex");
  return given.length === expected.length && timingSafeEqual(given, expected);
}
