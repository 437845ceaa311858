"""A WebSocket client that offers permessage-deflate, as Python's `websockets` does by default.

    python deflate_client.py URL CHANNEL

Prints the negotiated extensions as {"extensions": ...}, subscribes to CHANNEL, then prints
every publication as {"pub": ...}, one JSON line each.
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect


async def main():
    url, channel = sys.argv[1], sys.argv[2]
    async with connect(url, max_size=None) as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        print(json.dumps({"extensions": extensions}), flush=True)
        await ws.send(json.dumps({"id": 1, "op": "subscribe", "channel": channel}))
        async for message in ws:
            frame = json.loads(message)
            if "ping" in frame:
                await ws.send('{"op":"pong"}')
            elif "pub" in frame or frame.get("id") == 1:
                print(json.dumps(frame), flush=True)


asyncio.run(main())
