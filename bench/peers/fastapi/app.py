"""The textbook design Tidings started from: FastAPI WebSocket endpoints that read and write
concurrently, a username and a token checked at the handshake (1008 when bad), and every chat
message broadcast to every connection, across worker processes, through Redis with the
`broadcaster` library.

Run (see bench/peers/fastapi/README.md):
    REDIS_URL=redis://127.0.0.1:6379 uvicorn app:app --host 127.0.0.1 --port 9200 --workers 1

Protocol, as the benchmark's `--protocol naive` speaks it: connect to /ws?username=U&token=T,
send text; every text sent by anyone arrives at everyone.
"""

import asyncio
import os

from broadcaster import Broadcast
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

broadcast = Broadcast(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
app = FastAPI(on_startup=[broadcast.connect], on_shutdown=[broadcast.disconnect])
TOKEN = os.environ.get("CHAT_TOKEN", "")


@app.websocket("/ws")
async def chat(websocket: WebSocket, username: str = "", token: str = ""):
    if not username or token != TOKEN:
        await websocket.close(code=1008)
        return
    await websocket.accept()

    async def receive():
        try:
            async for message in websocket.iter_text():
                await broadcast.publish(channel="chat", message=message)
        except WebSocketDisconnect:
            pass

    async def send():
        async with broadcast.subscribe(channel="chat") as subscriber:
            async for event in subscriber:
                await websocket.send_text(event.message)

    tasks = [asyncio.create_task(receive()), asyncio.create_task(send())]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
