"""A minimal backend for Tidings, standard library only.

Run: WEBHOOK_SECRET=... python3 backend.py [PORT]   (prints "listening on PORT")
Then start Tidings with, for example:
  tidings --proxy-connect http://127.0.0.1:PORT/connect --proxy-header Cookie \
          --proxy-subscribe http://127.0.0.1:PORT/subscribe \
          --proxy-publish http://127.0.0.1:PORT/publish \
          --proxy-refresh http://127.0.0.1:PORT/refresh --proxy-rpc http://127.0.0.1:PORT/rpc \
          --namespace room:proxy-subscribe=true,proxy-publish=true \
          --webhook-url http://127.0.0.1:PORT/webhook --webhook-secret "$WEBHOOK_SECRET"
"""

import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The app's own sessions: cookie value -> user. A real app reads its session store.
SESSIONS = {"s3cret-ann": "ann", "s3cret-bob": "bob"}
STAFF = {"bob"}
WEBHOOK_SECRET = os.environ["WEBHOOK_SECRET"].encode()
SEEN_EVENT_IDS = set()


def session_user(call):
    cookie = call.get("headers", {}).get("cookie", "")
    for part in cookie.split(";"):
        name, _, value = part.strip().partition("=")
        if name == "session" and value in SESSIONS:
            return SESSIONS[value]
    return None


def connect(call):
    user = session_user(call)
    if user is None:
        return {"error": {"code": 1401, "message": "log in first"}}
    return {"result": {"user": user, "expire_at": int(time.time()) + 3600,
                       "channels": [f"user:{user}"]}}


def subscribe(call):
    # "user" is absent for anonymous connections: their self-chosen name proves nothing.
    if call["channel"] == "room:staff" and call.get("user") not in STAFF:
        return {"error": {"code": 1403, "message": "staff only"}}
    return {"result": {}}


def publish(call):
    data = call["data"]
    if isinstance(data, dict) and isinstance(data.get("text"), str):
        return {"result": {"data": {**data, "text": data["text"].replace("darn", "****")}}}
    return {"result": {}}


def refresh(call):
    return {"result": {"expire_at": int(time.time()) + 3600}}


def rpc(call):
    if call["method"] == "whoami":
        return {"result": {"data": {"user": call.get("user")}}}
    return {"error": {"code": 1404, "message": "no such method"}}


def signature_valid(header, body, tolerance=300):
    """Tidings-Signature: t=UNIX_SECONDS,v1=HEX, HEX = HMAC-SHA256("{t}.{body}")."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        sent_at = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - sent_at) > tolerance:
        return False  # a replayed old request
    expected = hmac.new(WEBHOOK_SECRET, f"{sent_at}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


ROUTES = {"/connect": connect, "/subscribe": subscribe, "/publish": publish,
          "/refresh": refresh, "/rpc": rpc}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/webhook":
            if not signature_valid(self.headers.get("Tidings-Signature", ""), body):
                return self.answer(401, {"error": "bad signature"})
            for event in json.loads(body)["events"]:
                if event["id"] in SEEN_EVENT_IDS:
                    continue  # a retry of an event already handled
                SEEN_EVENT_IDS.add(event["id"])
                print("event", json.dumps(event), flush=True)
            return self.answer(200, {})
        route = ROUTES.get(self.path)
        if route is None:
            return self.answer(404, {"error": "not found"})
        self.answer(200, route(json.loads(body)))

    def answer(self, status, reply):
        payload = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0), Handler)
    print("listening on", server.server_address[1], flush=True)
    server.serve_forever()
