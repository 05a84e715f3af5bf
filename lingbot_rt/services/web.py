"""The browser player: a page, and a WebSocket bridge onto the gRPC gateway.

Browsers cannot open a bidirectional gRPC stream (gRPC-web has no client streaming), so the
page speaks WebSocket to this bridge and the bridge opens one `WorldService.Play` stream per
page on the gateway: every session, from a browser or not, goes through the same gateway
(validation, auth, admission, metrics). Messages on the socket:

    page -> bridge  text   {"type": "start", "prompt": str, "scene": "world-3"} or {..., "image": base64}
                    text   {"type": "action", "keys": "wd", "t": <client ms>, "seq": n}
                    text   {"type": "stop"}
    bridge -> page  text   {"type": "started", "session_id", "fps", "height", "width"}
                    text   {"type": "frame", "seq", "action_seq", "t": <echoed client ms>, "timings": {...}}
                    binary the JPEG of the frame announced just before
                    text   {"type": "error", "code": <grpc code name>, "message": str}
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from pathlib import Path

import grpc
from aiohttp import WSMsgType, web

from .client import open_channel, status_of
from .proto.lingbot.v1 import world_pb2, world_pb2_grpc

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("player.html")
MAX_MESSAGE_BYTES = 8 * 1024 * 1024      # a start message may carry an image
CHANNEL = web.AppKey("channel", grpc.aio.Channel)


def _client_message(raw: str) -> world_pb2.ClientMessage:
    """A page's JSON message -> ClientMessage; ValueError with the reason for anything malformed."""
    try:
        message = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == "start":
        start = world_pb2.Start(prompt=str(message.get("prompt", "")), seed=int(message.get("seed", 0)),
                                auth_token=str(message.get("token", "")))
        if "image" in message:
            try:
                start.image = base64.b64decode(message["image"], validate=True)
            except (binascii.Error, TypeError):
                raise ValueError("start.image must be base64") from None
        else:
            start.builtin_scene = str(message.get("scene", ""))
        return world_pb2.ClientMessage(start=start)
    if kind == "action":
        return world_pb2.ClientMessage(action=world_pb2.Action(
            keys=str(message.get("keys", "")), client_timestamp=float(message.get("t", 0.0)) / 1000.0,
            sequence=int(message.get("seq", 0))))
    if kind == "stop":
        return world_pb2.ClientMessage(stop=world_pb2.Stop())
    raise ValueError(f"unknown message type {kind!r}; expected start, action or stop")


async def _relay_frames(call, ws: web.WebSocketResponse) -> None:
    """Gateway replies -> the page; a failed call is reported to the page, which is then closed."""
    try:
        await _relay(call, ws)
    except grpc.aio.AioRpcError as exc:
        if not ws.closed:
            await ws.send_json({"type": "error", "code": exc.code().name, "message": exc.details()})
    finally:
        await ws.close()


async def _relay(call, ws: web.WebSocketResponse) -> None:
    async for reply in call:
        kind = reply.WhichOneof("message")
        if kind == "session_started":
            s = reply.session_started
            await ws.send_json({"type": "started", "session_id": s.session_id, "fps": s.fps, "height": s.height,
                                "width": s.width})
        elif kind == "frame":
            f = reply.frame
            timings = {"queue": f.timings.queue_seconds, "denoise": f.timings.denoise_seconds,
                       "decode": f.timings.decode_seconds, "jpeg": f.timings.jpeg_seconds}
            await ws.send_json({"type": "frame", "seq": f.sequence, "action_seq": f.action_sequence,
                                "t": f.client_timestamp * 1000.0, "timings": timings})
            await ws.send_bytes(f.jpeg)
        elif kind == "error":
            await ws.send_json({"type": "error", "code": status_of(reply.error.code).name,
                                "message": reply.error.message})


async def play(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, heartbeat=20)
    await ws.prepare(request)
    outbox: asyncio.Queue = asyncio.Queue()

    async def client_messages():
        while (message := await outbox.get()) is not None:
            yield message

    stub = world_pb2_grpc.WorldServiceStub(request.app[CHANNEL])
    call = stub.Play(client_messages())
    relay = asyncio.create_task(_relay_frames(call, ws))
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                outbox.put_nowait(_client_message(msg.data))
            except ValueError as exc:
                await ws.send_json({"type": "error", "code": "INVALID_ARGUMENT", "message": str(exc)})
    finally:
        outbox.put_nowait(None)                        # ends the gRPC request stream: the session stops
        try:
            await asyncio.wait_for(relay, timeout=5)
        except (asyncio.TimeoutError, ConnectionResetError):
            call.cancel()
    return ws


async def page(request: web.Request) -> web.Response:
    return web.Response(body=PAGE.read_bytes(), content_type="text/html")


def make_app(gateway_target: str) -> web.Application:
    """The page and the bridge, forwarding to the gateway at `gateway_target` (host:port)."""
    app = web.Application(client_max_size=MAX_MESSAGE_BYTES)
    app.router.add_get("/", page)
    app.router.add_get("/play", play)

    async def gateway_channel(app):
        app[CHANNEL] = open_channel(gateway_target, MAX_MESSAGE_BYTES)
        yield
        await app[CHANNEL].close()

    app.cleanup_ctx.append(gateway_channel)
    return app
