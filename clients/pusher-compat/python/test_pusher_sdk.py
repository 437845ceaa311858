"""Pusher's Python server SDK (`pusher` on PyPI) against the real binary: two nodes on one
Redis, the SDK talking to one node while a Pusher client (frames over `websockets`, signed by
the SDK as an app's auth endpoint would) listens on the other. Triggers, batches, channel
queries, presence users, subscription and sign-in signatures, sending to a user, terminating
a user's connections, and webhooks checked with `validate_webhook`.

Run by scripts/check: TIDINGS_BIN=target/release/tidings .venv/bin/python -m unittest
clients/pusher-compat/python/test_pusher_sdk.py
"""

import http.server
import json
import os
import queue
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import pusher
from websockets.sync.client import connect

BIN = os.environ.get("TIDINGS_BIN", "target/release/tidings")
APP = {"app_id": "7", "key": "py-key", "secret": "py-secret"}
WAIT = 10


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(flags):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env["TIDINGS_LOG"] = "warn"
    child = subprocess.Popen(  # noqa: SIM115 (killed in tearDownClass)
        [BIN, "--listen", "127.0.0.1:0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        if line.startswith("listening on "):
            return child, line.split()[-1]
    child.kill()
    raise RuntimeError("tidings did not start")


class Webhooks(http.server.BaseHTTPRequestHandler):
    received = queue.Queue()

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        Webhooks.received.put((self.headers, body.decode()))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


class Client:
    """A Pusher client speaking protocol 7 (what pusher-js sends), signed by `sdk`."""

    def __init__(self, addr, sdk):
        self.ws = connect(f"ws://{addr}/app/{APP['key']}?protocol=7&client=py&version=1").__enter__()
        self.sdk = sdk
        established = self.expect("pusher:connection_established")
        self.socket_id = json.loads(established["data"])["socket_id"]

    def send(self, event, data):
        self.ws.send(json.dumps({"event": event, "data": data}))

    def expect(self, event, channel=None):
        deadline = time.monotonic() + WAIT
        while True:
            frame = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if frame["event"] == event and (channel is None or frame.get("channel") == channel):
                return frame

    def subscribe(self, channel, member=None):
        data = {"channel": channel}
        if channel.startswith(("private-", "presence-")):
            data.update(self.sdk.authenticate(channel, self.socket_id, member))
        self.send("pusher:subscribe", data)
        return self.expect("pusher_internal:subscription_succeeded", channel)


class PythonSdk(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        port = free_port()
        cls.redis_dir = tempfile.TemporaryDirectory()
        cls.redis = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", cls.redis_dir.name],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.02)
        cls.hooks = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Webhooks)
        threading.Thread(target=cls.hooks.serve_forever, daemon=True).start()
        flags = [
            "--redis-url", f"redis://127.0.0.1:{port}",
            "--pusher-app", f"{APP['app_id']}:{APP['key']}:{APP['secret']}",
            "--pusher-webhook-url", f"http://127.0.0.1:{cls.hooks.server_address[1]}/hooks",
        ]
        (cls.a, cls.addr_a), (cls.b, cls.addr_b) = start_node(flags), start_node(flags)
        host, port_a = cls.addr_a.split(":")
        cls.sdk = pusher.Pusher(host=host, port=int(port_a), ssl=False, **APP)

    @classmethod
    def tearDownClass(cls):
        for child in (cls.a, cls.b, cls.redis):
            child.kill()
            child.wait()
        cls.hooks.shutdown()
        cls.redis_dir.cleanup()

    def test_triggers_and_queries_on_one_node_reach_and_count_the_other(self):
        ann = Client(self.addr_b, self.sdk)
        succeeded = ann.subscribe("presence-py", {"user_id": "ann", "user_info": {"name": "Ann"}})
        presence = json.loads(succeeded["data"])["presence"]
        self.assertEqual(presence, {"ids": ["ann"], "hash": {"ann": {"name": "Ann"}}, "count": 1})
        ann.subscribe("private-py")

        self.assertEqual(self.sdk.trigger(["private-py", "presence-py"], "saved", {"n": 1}), {})
        for channel in ("private-py", "presence-py"):
            self.assertEqual(json.loads(ann.expect("saved", channel)["data"]), {"n": 1})
        # The sender's own socket is skipped; a batch goes out in order.
        self.sdk.trigger("private-py", "skipped", {}, socket_id=ann.socket_id)
        self.sdk.trigger_batch([
            {"channel": "private-py", "name": "first", "data": "1"},
            {"channel": "private-py", "name": "second", "data": "2"},
        ])
        first = json.loads(ann.ws.recv(timeout=WAIT))
        self.assertEqual((first["event"], first["data"]), ("first", "1"))
        self.assertEqual(ann.expect("second")["data"], "2")

        # The channel list knows the other node's channels as of its last announcement (every
        # 5 s); the counts in it come from the presence store, exact at once.
        deadline = time.monotonic() + 3 * WAIT
        while True:
            channels = self.sdk.channels_info(prefix_filter="presence-", attributes=["user_count"])
            if "presence-py" in channels["channels"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(channels["channels"]["presence-py"], {"user_count": 1})
        info = self.sdk.channel_info("presence-py", ["user_count", "subscription_count"])
        self.assertEqual(info, {"occupied": True, "user_count": 1, "subscription_count": 1})
        self.assertEqual(self.sdk.users_info("presence-py"), {"users": [{"id": "ann"}]})
        ann.ws.close()

    def test_a_signed_in_user_hears_send_to_user_and_is_terminated(self):
        ann = Client(self.addr_b, self.sdk)
        auth = self.sdk.authenticate_user(ann.socket_id, {"id": "py-ann"})
        ann.send("pusher:signin", auth)
        ann.expect("pusher:signin_success")
        ann.subscribe("#server-to-user-py-ann")
        self.sdk.send_to_user("py-ann", "note", {"hello": "ann"})
        self.assertEqual(json.loads(ann.expect("note")["data"]), {"hello": "ann"})
        # A forged sign-in is refused with Pusher's 4009.
        other = Client(self.addr_b, pusher.Pusher(**{**APP, "secret": "wrong"}))
        other.send("pusher:signin", other.sdk.authenticate_user(other.socket_id, {"id": "py-ann"}))
        self.assertEqual(other.expect("pusher:error")["data"]["code"], 4009)
        other.ws.close()

        self.sdk.terminate_user_connections("py-ann")
        with self.assertRaises(Exception) as closed:
            while True:
                ann.ws.recv(timeout=WAIT)
        self.assertEqual(getattr(closed.exception, "rcvd").code, 4009, closed.exception)

    def test_webhooks_pass_validate_webhook_and_fail_under_another_secret(self):
        bob = Client(self.addr_a, self.sdk)
        bob.subscribe("hooked-py")
        deadline = time.monotonic() + WAIT
        while True:
            headers, body = Webhooks.received.get(timeout=max(0.01, deadline - time.monotonic()))
            key, signature = headers.get("X-Pusher-Key"), headers.get("X-Pusher-Signature")
            valid = self.sdk.validate_webhook(key, signature, body)
            self.assertIsNotNone(valid, body)
            self.assertIsNone(pusher.Pusher(**{**APP, "secret": "wrong"}).validate_webhook(key, signature, body))
            if {"name": "channel_occupied", "channel": "hooked-py"} in valid["events"]:
                break
        bob.ws.close()


if __name__ == "__main__":
    unittest.main()
