"""A Python client of the `Play` stream, for scripts, load tests and `lingbot-rt play`.

    async with Client("127.0.0.1:50051") as client:
        session = await client.play(scene="world-0", prompt="a maze of brick walls")
        session.act("w")
        async for frame in session.frames(48):
            ...                          # frame.image() is a PIL image; frame.latency_s, once an action shows
        await session.stop()

A refused start or a session the server ends raises `PlayError` with the gRPC status code and
the server's message (e.g. RESOURCE_EXHAUSTED when the server is full).
"""
from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from PIL import Image

from ..model.controls import KEYS
from .proto.lingbot.v1 import world_pb2, world_pb2_grpc

MAX_MESSAGE_BYTES = 16 << 20


def open_channel(address: str, max_message_bytes: int = MAX_MESSAGE_BYTES) -> grpc.aio.Channel:
    """An insecure channel to a lingbot-rt server whose messages may carry a start image."""
    return grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", max_message_bytes),
                                                       ("grpc.max_send_message_length", max_message_bytes)])


def status_of(code: int) -> grpc.StatusCode:
    """The grpc.StatusCode of an `Error.code` number (UNKNOWN for a number gRPC does not define)."""
    return next((s for s in grpc.StatusCode if s.value[0] == code), grpc.StatusCode.UNKNOWN)


class PlayError(Exception):
    """The server refused or ended the session: `code` (grpc.StatusCode) and its message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code, self.message = code, message


@dataclass(frozen=True)
class ReceivedFrame:
    sequence: int
    jpeg: bytes
    action_sequence: int            # -1 until an action conditions a block
    received: float                 # time.monotonic() on arrival
    latency_s: float | None         # action -> this frame on the client's clock, for the first frame of an action

    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.jpeg)).convert("RGB")


class PlaySession:
    """One started session: send actions, read frames, stop."""

    def __init__(self, call, outbox: asyncio.Queue, started: world_pb2.SessionStarted):
        self._call, self._outbox = call, outbox
        self.session_id, self.fps = started.session_id, started.fps
        self.height, self.width = started.height, started.width
        self._sequence = -1
        self._shown_action = -1

    def act(self, keys: str) -> int:
        """Hold `keys` (any of "wasdijkl", "" for none) from now on; returns the action's sequence."""
        self._sequence += 1
        self._outbox.put_nowait(world_pb2.ClientMessage(action=world_pb2.Action(
            keys=keys, sequence=self._sequence, client_timestamp=time.monotonic())))
        return self._sequence

    async def frames(self, count: int | None = None) -> AsyncIterator[ReceivedFrame]:
        """The next `count` frames (all until the session ends when None)."""
        received = 0
        while count is None or received < count:
            try:
                message = await self._call.read()
            except grpc.aio.AioRpcError as exc:
                raise PlayError(exc.code(), exc.details()) from None
            if message is grpc.aio.EOF:
                return
            kind = message.WhichOneof("message")
            if kind == "error":
                raise PlayError(status_of(message.error.code), message.error.message)
            if kind != "frame":
                continue
            frame, now = message.frame, time.monotonic()
            latency = None
            if frame.action_sequence > self._shown_action:          # the first frame this action conditions
                self._shown_action = frame.action_sequence
                latency = now - frame.client_timestamp
            received += 1
            yield ReceivedFrame(frame.sequence, frame.jpeg, frame.action_sequence, now, latency)

    async def stop(self) -> None:
        """End the session (the server frees its slot) and close the call."""
        self._outbox.put_nowait(world_pb2.ClientMessage(stop=world_pb2.Stop()))
        self._outbox.put_nowait(None)
        self._call.cancel()


class Client:
    """A channel to a lingbot-rt server (`host:port`); `play` starts sessions on it."""

    def __init__(self, address: str, token: str = ""):
        self.address, self.token = address, token
        self._channel: grpc.aio.Channel | None = None

    async def __aenter__(self) -> "Client":
        self._channel = open_channel(self.address)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._channel.close()

    async def play(self, *, image: bytes | None = None, scene: str = "", prompt: str = "", seed: int = 0,
                   timeout_s: float = 60.0) -> PlaySession:
        """Start a session from JPEG/PNG `image` bytes or a built-in `scene` ("world-<seed>")."""
        if self._channel is None:
            raise RuntimeError("use the Client in `async with`")
        if (image is None) == (not scene):
            raise ValueError("give exactly one of image (bytes) or scene (e.g. 'world-0')")
        start = world_pb2.Start(prompt=prompt, seed=seed, auth_token=self.token,
                                **({"image": image} if image is not None else {"builtin_scene": scene}))
        outbox: asyncio.Queue = asyncio.Queue()
        outbox.put_nowait(world_pb2.ClientMessage(start=start))

        async def messages():
            while (message := await outbox.get()) is not None:
                yield message

        call = world_pb2_grpc.WorldServiceStub(self._channel).Play(messages())
        try:
            reply = await asyncio.wait_for(call.read(), timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise PlayError(exc.code(), exc.details()) from None
        kind = reply.WhichOneof("message") if reply is not grpc.aio.EOF else None
        if kind == "error":
            call.cancel()
            raise PlayError(status_of(reply.error.code), reply.error.message)
        if kind != "session_started":
            call.cancel()
            raise PlayError(grpc.StatusCode.UNKNOWN, f"expected session_started, got {kind or 'the end of the stream'}")
        return PlaySession(call, outbox, reply.session_started)


def held_keys(actions) -> list[str]:
    """Multi-hot actions [F, 8] (`parse_action_string`) -> the keys held in each frame."""
    return ["".join(key for key, on in zip(KEYS, row) if on) for row in actions]


async def play_script(address: str, actions, *, scene: str = "", image: bytes | None = None, prompt: str = "",
                      seed: int = 0, token: str = "") -> tuple[list[ReceivedFrame], PlaySession]:
    """Play one session through: the keys of `actions[i]` are sent once frame i - 1 has arrived
    (a new action only when the held keys change; the server conditions whole blocks, so a
    change shows from the next block it starts); returns the frames received."""
    keys = held_keys(actions)
    frames: list[ReceivedFrame] = []
    async with Client(address, token) as client:
        session = await client.play(image=image, scene=scene, prompt=prompt, seed=seed)
        held = keys[0]
        session.act(held)
        try:
            async for frame in session.frames():
                frames.append(frame)
                if len(frames) >= len(keys):
                    break
                if keys[len(frames)] != held:
                    held = keys[len(frames)]
                    session.act(held)
        finally:
            await session.stop()
    return frames, session
