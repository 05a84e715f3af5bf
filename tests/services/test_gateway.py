"""The gRPC gateway end to end: a real scheduler over the tiny release (CPU, 64x64, ~25 frames/s),
a server on an ephemeral loopback port, real grpc.aio clients."""
from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import math
import urllib.request
from typing import ClassVar

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from prometheus_client import CollectorRegistry

from lingbot_rt.pipeline.streaming import StreamConfig, StreamingInference
from lingbot_rt.pipeline.tiny_checkpoint import make_tiny_checkpoint
from lingbot_rt.services.executor import InProcessExecutor
from lingbot_rt.services.gateway import SERVICE_NAME, GatewayConfig, WorldGateway
from lingbot_rt.services.metrics import serve_metrics
from lingbot_rt.services.proto.lingbot.v1 import world_pb2 as pb
from lingbot_rt.services.proto.lingbot.v1 import world_pb2_grpc
from lingbot_rt.services.scheduler import SchedulerConfig

SIZE = 64
TEST_TIMEOUT_S = 30.0
# A client that stops reading: without BDP probing its receive window stays at 64 KiB, so the
# server's writes stall after a few dozen tiny frames instead of after megabytes.
STALLING_CLIENT = [("grpc.http2.bdp_probe", 0)]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    release = make_tiny_checkpoint(tmp_path_factory.mktemp("release") / "tiny")
    return StreamingInference.from_release(release, StreamConfig(max_sessions=2), dtype=torch.float32)


def image_bytes(size=SIZE, mode="RGB", fmt="PNG") -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, len(mode)), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(buffer, fmt)
    return buffer.getvalue()


def run(scenario):
    """Run a test's coroutine (time-limited, every Player closed after); returns its result."""
    async def run_and_close():
        try:
            return await asyncio.wait_for(scenario, TEST_TIMEOUT_S)
        finally:                             # end every request stream, so no task outlives the loop
            for player in Player.opened:
                player.outbox.put_nowait(None)
            Player.opened.clear()
            await asyncio.sleep(0.01)
    return asyncio.run(run_and_close())


async def wait_for_running(gateway: WorldGateway, running: int) -> None:
    """Until the scheduler runs `running` sessions (a leaving client frees its slot asynchronously)."""
    for _ in range(100):
        if gateway.scheduler.stats()["running"] == running:
            return
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def serving(pipeline, scheduler_config=SchedulerConfig(), config=GatewayConfig()):
    """(gateway, address) of a started gateway; stopped on exit."""
    gateway = WorldGateway(InProcessExecutor(pipeline), scheduler_config, config, CollectorRegistry())
    port = await gateway.start("127.0.0.1:0")
    try:
        yield gateway, f"127.0.0.1:{port}"
    finally:
        await gateway.stop(grace=0)


class Player:
    """One Play call: messages are queued for sending; `None` half-closes."""

    opened: ClassVar[list[Player]] = []

    def __init__(self, channel, start: pb.Start | None = None, metadata=None):
        Player.opened.append(self)
        self.outbox: asyncio.Queue = asyncio.Queue()
        if start is not None:
            self.outbox.put_nowait(pb.ClientMessage(start=start))
        self.call = world_pb2_grpc.WorldServiceStub(channel).Play(self._messages(), metadata=metadata)

    async def _messages(self):
        while (message := await self.outbox.get()) is not None:
            yield message

    def send(self, **message) -> None:
        self.outbox.put_nowait(pb.ClientMessage(**message))

    def act(self, keys: str, sequence: int, client_timestamp: float = 0.0) -> None:
        self.send(action=pb.Action(keys=keys, sequence=sequence, client_timestamp=client_timestamp))

    async def read(self, kind: str):
        message = await self.call.read()
        assert message is not grpc.aio.EOF, f"stream ended while waiting for {kind}"
        assert message.WhichOneof("message") == kind, message
        return getattr(message, kind)

    async def frames(self, count: int) -> list:
        return [await self.read("frame") for _ in range(count)]

    async def until_action(self, sequence: int, frames: list) -> None:
        """Read frames into `frames` until one reflects action `sequence`."""
        while not frames or frames[-1].action_sequence != sequence:
            frames.append(await self.read("frame"))

    async def error(self, code: grpc.StatusCode, match: str, still_writing: bool = False) -> None:
        """The stream ends with an `error` message and the same status. A client still writing
        when the server ends the call may see INTERNAL instead: grpc.aio overwrites the status
        when a write fails after it (grpc/grpc#36066); the `error` message is there either way."""
        messages = []
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            while (message := await self.call.read()) is not grpc.aio.EOF:
                messages.append(message)
        assert messages and messages[-1].error.code == code.value[0] and match in messages[-1].error.message
        if still_writing and raised.value.code() == grpc.StatusCode.INTERNAL:
            assert "Internal error from Core" in raised.value.details()
        else:
            assert raised.value.code() == code and match in raised.value.details(), raised.value


def start(**fields) -> pb.Start:
    if "builtin_scene" not in fields:
        fields.setdefault("image", image_bytes())
    return pb.Start(prompt="a forest", **fields)


def metric(gateway: WorldGateway, name: str, **labels) -> float:
    return gateway.metrics.registry.get_sample_value(name, labels) or 0.0


def test_play_streams_frames_that_echo_the_latest_action(pipeline):
    async def scenario():
        async with serving(pipeline) as (gateway, address), grpc.aio.insecure_channel(address) as channel:
            player = Player(channel, start(seed=3))
            started = await player.read("session_started")
            assert (started.fps, started.height, started.width) == (16, SIZE, SIZE) and started.session_id
            player.act("w", 1, 100.5)           # at once: the engine may still be opening the session
            frames = []
            await player.until_action(1, frames)
            player.act("dl", 7, 200.25)
            await player.until_action(7, frames)
            frames += await player.frames(12)
            player.send(stop=pb.Stop())
            while await player.call.read() is not grpc.aio.EOF:
                pass
            assert await player.call.code() == grpc.StatusCode.OK

            assert frames[0].sequence == 0
            assert all(b.sequence > a.sequence for a, b in itertools.pairwise(frames))
            for frame in frames[:3] + frames[-3:]:
                with Image.open(io.BytesIO(frame.jpeg)) as image:
                    assert image.format == "JPEG" and image.size == (SIZE, SIZE)
            echoed = [(f.action_sequence, f.client_timestamp) for f in frames]
            assert set(echoed) <= {(-1, 0.0), (1, 100.5), (7, 200.25)}
            assert [s for s, _ in echoed] == sorted(s for s, _ in echoed)
            # a block's frames (9, then 12 each) all reflect the action read when it started
            blocks = {}
            for frame in frames:
                block = 0 if frame.sequence < 9 else 1 + (frame.sequence - 9) // 12
                blocks.setdefault(block, set()).add(frame.action_sequence)
            assert all(len(actions) == 1 for actions in blocks.values())
            timings = frames[-1].timings
            assert timings.denoise_seconds > 0 and timings.decode_seconds > 0 and timings.jpeg_seconds > 0

            assert metric(gateway, "lingbot_sessions_admitted_total") == 1
            assert metric(gateway, "lingbot_batch_size_count") >= 1
            assert metric(gateway, "lingbot_frames_sent_total") >= len(frames)
            assert metric(gateway, "lingbot_action_latency_seconds_count") == 2
            for stage in ("queue", "denoise", "decode", "jpeg"):
                assert metric(gateway, "lingbot_stage_seconds_count", stage=stage) > 0
    run(scenario())


def test_sessions_share_the_server_up_to_capacity(pipeline):
    """Two sessions run at once (max_sessions=2), a third waits, a fourth is refused; when one
    stops, the waiting one starts; a disconnect frees a slot."""
    async def scenario():
        config = SchedulerConfig(max_batch=2, max_waiting=1)
        async with serving(pipeline, config) as (gateway, address), grpc.aio.insecure_channel(address) as channel:
            stub = world_pb2_grpc.WorldServiceStub(channel)
            first, second = Player(channel, start()), Player(channel, start(builtin_scene="world-3"))
            for player in (first, second):
                await player.read("session_started")
                await player.frames(3)
            waiting = Player(channel, start())
            await waiting.read("session_started")
            capacity = await stub.GetCapacity(pb.GetCapacityRequest())
            assert (capacity.running, capacity.waiting, capacity.max_sessions, capacity.max_waiting) == (2, 1, 2, 1)

            refused = Player(channel, start())
            await refused.error(grpc.StatusCode.RESOURCE_EXHAUSTED, "server full")
            assert metric(gateway, "lingbot_sessions_refused_total", reason="capacity") == 1

            await second.frames(12)             # still streaming beside the others
            first.send(stop=pb.Stop())
            assert len(await waiting.frames(3)) == 3
            assert metric(gateway, "lingbot_sessions_active") == 2

            second.call.cancel()                # a client that disconnects frees its slot too
            await wait_for_running(gateway, 1)
            assert gateway.scheduler.stats() == {"running": 1, "waiting": 0, "max_sessions": 2}
    run(scenario())


BAD_STARTS = {
    "not_start_first": (lambda: pb.ClientMessage(action=pb.Action(keys="w")),
                        grpc.StatusCode.INVALID_ARGUMENT, "first message must be start"),
    "empty_stream": (lambda: None, grpc.StatusCode.INVALID_ARGUMENT, "first message must be start"),
    "no_image": (lambda: pb.ClientMessage(start=pb.Start(prompt="x")),
                 grpc.StatusCode.INVALID_ARGUMENT, "needs an image"),
    "image_bytes": (lambda: pb.ClientMessage(start=start(image=b"\x89PNG but not really")),
                    grpc.StatusCode.INVALID_ARGUMENT, "not a JPEG or PNG"),
    "image_too_small": (lambda: pb.ClientMessage(start=start(image=image_bytes(size=16))),
                        grpc.StatusCode.INVALID_ARGUMENT, "more than 2x"),
    "image_mode": (lambda: pb.ClientMessage(start=start(image=image_bytes(mode="RGBA"))),
                   grpc.StatusCode.INVALID_ARGUMENT, "mode 'RGBA'"),
    "wrong_size": (lambda: pb.ClientMessage(start=start(height=128, width=128)),
                   grpc.StatusCode.INVALID_ARGUMENT, "streams 64x64"),
    "prompt_too_long": (lambda: pb.ClientMessage(start=pb.Start(image=image_bytes(), prompt="x" * 1001)),
                        grpc.StatusCode.INVALID_ARGUMENT, "limit is 1000"),
    "unknown_scene": (lambda: pb.ClientMessage(start=start(builtin_scene="moon")),
                      grpc.StatusCode.INVALID_ARGUMENT, "unknown builtin_scene"),
}


@pytest.mark.parametrize("case", sorted(BAD_STARTS))
def test_bad_start_is_refused(pipeline, case):
    message, code, match = BAD_STARTS[case]

    async def scenario():
        async with serving(pipeline) as (gateway, address), grpc.aio.insecure_channel(address) as channel:
            player = Player(channel)
            player.outbox.put_nowait(message())
            await player.error(code, match)
            assert metric(gateway, "lingbot_sessions_refused_total", reason="invalid") == 1
            assert metric(gateway, "lingbot_errors_total", code=code.name) == 1
            assert gateway.scheduler.stats()["waiting"] == 0
    run(scenario())


BAD_ACTIONS = {
    "unknown_key": (lambda p: p.act("wx", 1), grpc.StatusCode.INVALID_ARGUMENT, "unknown key(s) ['x']"),
    "sequence_goes_back": (lambda p: (p.act("w", 5), p.act("w", 5)), grpc.StatusCode.INVALID_ARGUMENT,
                           "sequence must increase"),
    "timestamp_nan": (lambda p: p.act("w", 1, math.nan), grpc.StatusCode.INVALID_ARGUMENT, "must be finite"),
    "second_start": (lambda p: p.send(start=start()), grpc.StatusCode.INVALID_ARGUMENT, "expected action or stop"),
    "action_flood": (lambda p: [p.act("w", n) for n in range(1000)], grpc.StatusCode.RESOURCE_EXHAUSTED,
                     "more than 120 actions/s"),
}


@pytest.mark.parametrize("case", sorted(BAD_ACTIONS))
def test_bad_action_ends_the_session(pipeline, case):
    send, code, match = BAD_ACTIONS[case]

    async def scenario():
        async with serving(pipeline) as (gateway, address), grpc.aio.insecure_channel(address) as channel:
            player = Player(channel, start())
            await player.read("session_started")
            send(player)
            await player.error(code, match, still_writing=case == "action_flood")
            assert metric(gateway, "lingbot_errors_total", code=code.name) == 1
    run(scenario())


def test_idle_session_ends_and_frees_its_slot(pipeline):
    async def scenario():
        config = GatewayConfig(idle_timeout_s=0.6)
        async with serving(pipeline, config=config) as (gateway, address), grpc.aio.insecure_channel(address) as channel:
            player = Player(channel, start())
            await player.read("session_started")
            for sequence in range(3):        # actions keep it alive past the idle timeout
                player.act("w", sequence)
                await asyncio.sleep(0.3)
            assert gateway.scheduler.stats()["running"] == 1
            await player.error(grpc.StatusCode.DEADLINE_EXCEEDED, "no action for 0.6 s")
            assert metric(gateway, "lingbot_errors_total", code="DEADLINE_EXCEEDED") == 1
            await wait_for_running(gateway, 0)
            assert gateway.scheduler.stats() == {"running": 0, "waiting": 0, "max_sessions": 2}
    run(scenario())


def test_session_ends_at_its_maximum_length_even_while_playing(pipeline):
    async def scenario():
        config = GatewayConfig(max_session_s=0.8)
        async with serving(pipeline, config=config) as (gateway, address), grpc.aio.insecure_channel(address) as channel:
            player = Player(channel, start())
            await player.read("session_started")
            player.act("w", 0)
            await player.error(grpc.StatusCode.DEADLINE_EXCEEDED, "maximum length of 0.8 s")
    run(scenario())


def test_session_limits_must_be_positive():
    with pytest.raises(ValueError, match="idle_timeout_s must be > 0"):
        GatewayConfig(idle_timeout_s=0)
    with pytest.raises(ValueError, match="max_session_s must be > 0"):
        GatewayConfig(max_session_s=-1)


def test_auth_token_from_metadata_or_start(pipeline):
    async def scenario():
        config = GatewayConfig(auth_tokens=frozenset({"s3cret"}))
        async with serving(pipeline, config=config) as (gateway, address), \
                grpc.aio.insecure_channel(address) as channel:
            await Player(channel, start()).error(grpc.StatusCode.UNAUTHENTICATED, "needs a token")
            await Player(channel, start(auth_token="guess")).error(grpc.StatusCode.UNAUTHENTICATED, "not valid")
            stub = world_pb2_grpc.WorldServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.ListModels(pb.ListModelsRequest())
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert metric(gateway, "lingbot_sessions_refused_total", reason="unauthenticated") == 2

            by_start = Player(channel, start(auth_token="s3cret"))
            by_metadata = Player(channel, start(), metadata=(("authorization", "Bearer s3cret"),))
            for player in (by_start, by_metadata):
                await player.read("session_started")
            models = await stub.ListModels(pb.ListModelsRequest(), metadata=(("authorization", "Bearer s3cret"),))
            assert [(m.height, m.width, m.fps) for m in models.models] == [(SIZE, SIZE, 16)]
    run(scenario())


def test_health_reflection_and_models(pipeline):
    async def scenario():
        async with serving(pipeline, config=GatewayConfig(model_name="tiny")) as (gateway, address), \
                grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", SERVICE_NAME):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            async for reply in reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
                    list_services="")])):
                names = {service.name for service in reply.list_services_response.service}
            assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names

            models = await world_pb2_grpc.WorldServiceStub(channel).ListModels(pb.ListModelsRequest())
            assert [(m.name, m.height, m.width, m.fps) for m in models.models] == [("tiny", SIZE, SIZE, 16)]

            server, _ = serve_metrics(0, gateway.metrics.registry, "127.0.0.1")
            url = f"http://127.0.0.1:{server.server_port}/metrics"
            try:
                text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
            finally:
                server.shutdown()
            assert "lingbot_sessions_active 0.0" in text and 'lingbot_stage_seconds_count{stage="jpeg"} 0.0' in text
            assert "lingbot_kv_slots 2.0" in text          # the pool of the fixture's pipeline
    run(scenario())


def test_stop_drains_then_ends_sessions_with_unavailable(pipeline):
    async def scenario():
        gateway = WorldGateway(InProcessExecutor(pipeline), SchedulerConfig(), GatewayConfig(), CollectorRegistry())
        address = f"127.0.0.1:{await gateway.start('127.0.0.1:0')}"
        async with grpc.aio.insecure_channel(address) as channel:
            player = Player(channel, start())
            await player.read("session_started")
            stopping = asyncio.create_task(gateway.stop(grace=1.0))
            await asyncio.sleep(0.2)
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            await Player(channel, start()).error(grpc.StatusCode.UNAVAILABLE, "shutting down")
            await player.frames(3)               # the running session plays on during the grace
            await player.error(grpc.StatusCode.UNAVAILABLE, "shutting down")
            await stopping
    run(scenario())


def test_client_that_stops_reading_does_not_stall_others(pipeline):
    """A stalled client's frames are dropped (oldest first) while another session streams on."""
    async def scenario():
        async with serving(pipeline) as (gateway, address), \
                grpc.aio.insecure_channel(address, options=STALLING_CLIENT) as stalled_channel, \
                grpc.aio.insecure_channel(address) as channel:
            stalled = Player(stalled_channel, start())
            await stalled.read("session_started")            # and never reads again
            reader = Player(channel, start())
            await reader.read("session_started")
            frames = []
            while metric(gateway, "lingbot_frames_dropped_total") == 0:
                frames += await reader.frames(12)
            frames += await reader.frames(24)
            sequences = [frame.sequence for frame in frames]
            assert sequences == list(range(sequences[0], sequences[0] + len(frames)))    # the reader lost none
            stalled.call.cancel()
    run(scenario())


def test_engine_failure_ends_only_its_session(pipeline, monkeypatch):
    """A session whose decode raises gets INTERNAL; the other one keeps streaming."""
    async def scenario():
        async with serving(pipeline, SchedulerConfig(max_batch=2)) as (_, address), \
                grpc.aio.insecure_channel(address) as channel:
            players = [Player(channel, start()), Player(channel, start())]
            for player in players:
                await player.read("session_started")
                await player.frames(9)
            decode, failed = pipeline.decode, []

            def failing_decode(session, latents):
                if not failed:
                    failed.append(session)
                    raise RuntimeError("injected decode failure")
                return decode(session, latents)

            async def outcome(player):
                for _ in range(36):
                    message = await player.call.read()
                    if message.WhichOneof("message") == "error":
                        return message.error
                return "streaming"
            monkeypatch.setattr(pipeline, "decode", failing_decode)
            errors, streaming = [], []
            for result in await asyncio.gather(*(outcome(p) for p in players)):
                (streaming if result == "streaming" else errors).append(result)
            assert len(streaming) == 1 and len(errors) == 1
            assert errors[0].code == grpc.StatusCode.INTERNAL.value[0]
            assert "injected decode failure" in errors[0].message
    run(scenario())
