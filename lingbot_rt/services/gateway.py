"""`WorldGateway`: the gRPC front door (`lingbot.v1.WorldService`, proto/lingbot/v1/world.proto)
over one `Scheduler`, in one asyncio process.

    gateway = WorldGateway(InProcessExecutor(pipeline), SchedulerConfig(max_batch=4), GatewayConfig(jpeg_quality=85))
    port = await gateway.start("0.0.0.0:50051")
    ...
    await gateway.stop(grace=5.0)

(`services/app.py` runs it beside the browser bridge and `/metrics`: `lingbot-rt serve`).

One Play call = one session, run by two tasks:

* the handler reads `start`, checks it (auth, sizes, prompt, image), registers the session with
  the scheduler and then *writes*: it takes blocks from the session's queue, JPEG-encodes them and
  writes their frames;
* a reader task applies `action`s (checked, rate-limited) with `Scheduler.set_action` until `stop`
  or the client half-closes.

Frames flow engine thread -> `on_output` -> `loop.call_soon_threadsafe` -> the session's queue
of at most `queue_blocks` blocks (newest wins: the oldest is dropped and counted) -> writer. The
queue holds blocks, not single frames, because a block's 9-12 frames arrive at once: a queue of
2 frames would drop most of every block even for a fast client.

JPEG encoding runs in the writer, on a small thread pool (`jpeg_threads`), not on the engine
thread: only frames that survive the queue are encoded (a slow client costs no encode CPU), the
engine thread that drives the GPU never waits for B x 12 encodes per step (~1-2 ms each at
832x480, a sizeable share of a 0.75 s block at batch 4 and more), PIL drops the GIL while it
encodes, and the event loop stays free. The cost is one thread hop per block.

An error ends only its own session: the handler writes a last `Error` message and ends the call
with the same status (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAUTHENTICATED, UNAVAILABLE, INTERNAL).

**Two fronts, one session logic.** The RPC methods see their call only through `Call`: `write`,
`abort` and `invocation_metadata`. grpc.aio's `ServicerContext` is one (`start` binds a gRPC
server of the gateway's own); `serve_app.ServeCall`, over the context Ray Serve's gRPC proxy
passes, is the other (`start_engine` runs the engine without a server: `serve_app.py`).
"""
from __future__ import annotations

import asyncio
import hmac
import io
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NoReturn, Protocol

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from PIL import Image, UnidentifiedImageError
from prometheus_client import CollectorRegistry

from ..model.controls import KEYS
from ..model.image_condition import ImageError
from ..pipeline.streaming import CapacityError
from .executor import Executor
from .metrics import ServingMetrics
from .proto.lingbot.v1 import world_pb2, world_pb2_grpc
from .scheduler import BlockOutput, Scheduler, SchedulerConfig

log = logging.getLogger(__name__)

SERVICE_NAME = world_pb2.DESCRIPTOR.services_by_name["WorldService"].full_name     # "lingbot.v1.WorldService"
IMAGE_FORMATS = ("JPEG", "PNG")
WORLD_SCENE_PREFIX = "world-"        # builtin_scene "world-<seed>": the built-in world's spawn view
MAX_SEQUENCE = 2**63 - 1             # Frame.action_sequence is an int64
MAX_TRACKED_ACTIONS = 256            # receipt times kept per session for the latency metric
Status = grpc.StatusCode


class Call(Protocol):
    """One RPC as the methods below use it (grpc.aio's `ServicerContext` has these three)."""

    async def write(self, message: world_pb2.ServerMessage) -> None:
        """Send one message; raises once the call is over (the client left)."""

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        """End the call with this status; raises (the handler stops here)."""

    def invocation_metadata(self) -> Sequence[tuple[str, str]] | None:
        """The client's metadata (`authorization: Bearer <token>`)."""


@dataclass(frozen=True)
class GatewayConfig:
    model_name: str = "lingbot-world"
    jpeg_quality: int = 85
    jpeg_threads: int = 2                # encoder threads shared by all sessions
    queue_blocks: int = 2                # blocks a session may have waiting for its writer
    max_prompt_chars: int = 1000
    max_image_bytes: int = 8 << 20
    max_image_pixels: int = 4096 * 4096  # refuse before decoding (decompression bombs)
    max_actions_per_second: float = 120.0   # sustained; bursts up to one second's worth
    first_message_timeout_s: float = 10.0
    auth_tokens: frozenset[str] = frozenset()   # empty: no auth
    scenes: dict[str, str] = field(default_factory=dict)   # builtin_scene name -> image file
    max_concurrent_rpcs: int | None = None
    keepalive_time_s: float = 20.0       # ping idle clients, so dead peers free their slot
    keepalive_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0        # a session with no action for this long ends (frees its slot)
    max_session_s: float = 3600.0        # a session ends after this long, whatever it does

    def __post_init__(self):
        object.__setattr__(self, "auth_tokens", frozenset(self.auth_tokens))     # a list from a YAML config
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality must be in 1..95 (Pillow), got {self.jpeg_quality}")
        for name in ("jpeg_threads", "queue_blocks", "max_prompt_chars", "max_image_bytes", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_actions_per_second", "first_message_timeout_s", "idle_timeout_s", "max_session_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    def server_options(self) -> list[tuple[str, int]]:
        return [("grpc.keepalive_time_ms", int(self.keepalive_time_s * 1000)),
                ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)),
                # let clients keep their own keepalive pings every 10 s without being told off
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                ("grpc.max_receive_message_length", self.max_image_bytes + (64 << 10))]


class RpcError(Exception):
    """Ends one session's call with this status; `reason` labels a refused start in the metrics."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "invalid"):
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason


class _CallEnded(Exception):
    """A write failed because the call is over (the client left): nothing to report to it."""


class _TokenBucket:
    """`rate` events per second sustained, bursts of up to `rate`."""

    def __init__(self, rate: float):
        self.rate, self.tokens, self.updated = rate, rate, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class _SessionStream:
    """One session's queue between the engine (through the loop) and its writer. Loop thread only."""

    def __init__(self, session_id: str, config: GatewayConfig, metrics: ServingMetrics):
        self.session_id, self.max_blocks, self.metrics = session_id, config.queue_blocks, metrics
        self.blocks: deque[BlockOutput] = deque()
        self.error: RpcError | None = None
        self.finished = False
        self.wakeup = asyncio.Event()
        self.actions = _TokenBucket(config.max_actions_per_second)
        self.last_sequence = -1
        self.action_times: dict[int, float] = {}   # action sequence -> monotonic receipt, until its first frame
        self.started = self.last_input = time.monotonic()

    def put(self, block: BlockOutput) -> None:
        self.blocks.append(block)
        while len(self.blocks) > self.max_blocks:
            self.metrics.frames_dropped.inc(len(self.blocks.popleft().frames))
        self.wakeup.set()

    def fail(self, error: RpcError) -> None:
        self.error = self.error or error
        self.wakeup.set()

    def finish(self) -> None:
        self.finished = True
        self.wakeup.set()

    @property
    def ended(self) -> bool:
        return self.finished or self.error is not None

    async def next_block(self) -> BlockOutput | None:
        """The oldest queued block; None once the session stopped; raises its error."""
        while True:
            if self.error is not None:
                raise self.error
            if self.finished:
                return None
            if self.blocks:
                return self.blocks.popleft()
            self.wakeup.clear()
            await self.wakeup.wait()


def encode_jpeg(frames: np.ndarray, quality: int) -> tuple[list[bytes], list[float]]:
    """uint8 frames [T, H, W, 3] -> JPEG bytes and encode seconds, per frame."""
    encoded, seconds = [], []
    for frame in frames:
        start = time.perf_counter()
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, "JPEG", quality=quality)
        encoded.append(buffer.getvalue())
        seconds.append(time.perf_counter() - start)
    return encoded, seconds


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Start image bytes -> a loaded PIL image (mode and size are checked by the scheduler)."""
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise ImageError(f"start.image is not a JPEG or PNG image ({len(data)} bytes)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"start.image is too large: {exc}") from None
    if image.width * image.height > max_pixels:
        raise ImageError(f"start.image is {image.width}x{image.height}: more than {max_pixels} pixels")
    try:
        image.load()
    except (OSError, Image.DecompressionBombError) as exc:
        raise ImageError(f"start.image cannot be decoded: {exc}") from None
    return image


def scene_image(name: str, scenes: dict[str, str], height: int, width: int):
    """A builtin_scene's start image: a configured file, or "world-<seed>" rendered."""
    if name in scenes:
        return scenes[name]
    seed = name.removeprefix(WORLD_SCENE_PREFIX)
    if name.startswith(WORLD_SCENE_PREFIX) and seed.isascii() and seed.isdigit() and len(seed) <= 9:
        from ..world import Renderer, generate_map, spawn_pose
        world = generate_map(int(seed))
        pose = spawn_pose(world, 0)[None]
        return Renderer(world).render(pose, world.config.intrinsics(height, width), height, width)[0].numpy()
    known = ", ".join(sorted(scenes) + [f"{WORLD_SCENE_PREFIX}<seed>"])
    raise RpcError(Status.INVALID_ARGUMENT, f"unknown builtin_scene {name!r}; scenes: {known}")


class WorldGateway(world_pb2_grpc.WorldServiceServicer):
    """WorldService over a `Scheduler` it owns; `start` / `stop` on the serving event loop."""

    def __init__(self, executor: Executor, scheduler_config: SchedulerConfig = SchedulerConfig(),
                 config: GatewayConfig = GatewayConfig(), registry: CollectorRegistry | None = None,
                 session_id_prefix: str = ""):
        """`session_id_prefix` starts every session id (a Serve replica puts its tag there)."""
        self.config, self.scheduler_config = config, scheduler_config
        self.session_id_prefix = session_id_prefix
        self.metrics = ServingMetrics(registry if registry is not None else CollectorRegistry())
        self.scheduler = Scheduler(executor, scheduler_config, on_output=self._on_output, on_error=self._on_error,
                                   on_step=self._on_step)
        self.metrics.track_sessions(self.scheduler.stats)
        self._streams: dict[str, _SessionStream] = {}
        self._jpeg_pool = ThreadPoolExecutor(config.jpeg_threads, thread_name_prefix="lingbot-jpeg")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._draining = False

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self, address: str = "127.0.0.1:0", credentials: grpc.ServerCredentials | None = None) -> int:
        """Bind `address` (TLS with `credentials`), start the engine; returns the bound port."""
        self._loop = asyncio.get_running_loop()
        server = grpc.aio.server(options=self.config.server_options(),
                                 maximum_concurrent_rpcs=self.config.max_concurrent_rpcs)
        world_pb2_grpc.add_WorldServiceServicer_to_server(self, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server)
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        await server.start()
        self._server = server
        await self.start_engine()
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return port

    async def start_engine(self) -> None:
        """Start the engine threads, the RPC methods running on this event loop; `start` calls
        it after binding its server, a Serve replica calls it alone (Serve's proxy is its server)."""
        self._loop = asyncio.get_running_loop()
        self.scheduler.start()

    def check_health(self) -> None:
        """Raise RuntimeError (or `StageError`) when this gateway cannot serve: its engine threads
        stopped, or a stage died. May block for a moment (it pings Ray stage actors): off the loop."""
        if self._loop is not None and not self.scheduler.running:
            raise RuntimeError("the engine thread is not running: sessions cannot be generated")
        self.scheduler.executor.check_health()

    async def stop(self, grace: float = 5.0) -> None:
        """Drain: health NOT_SERVING and new sessions refused at once; running sessions play on
        for up to `grace` seconds, then end with UNAVAILABLE; then the engine stops."""
        if self._loop is None or self._draining:
            return
        self._draining = True
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
        deadline = time.monotonic() + grace
        while self._streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for stream in list(self._streams.values()):
            stream.fail(RpcError(Status.UNAVAILABLE, "the server is shutting down; start a new session"))
        if self._server is not None:
            await self._server.stop(1.0)     # the handlers write their last message, then calls are cut
            self._server = None
        else:                                # no server to wait on: give the handlers a moment to write it
            await asyncio.sleep(0.1)
        await asyncio.to_thread(self.scheduler.shutdown)
        self._jpeg_pool.shutdown(wait=False, cancel_futures=True)

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    # ---- engine thread -> loop -----------------------------------------------------------
    def _on_step(self, num_sessions: int) -> None:
        """Engine thread, after each DiT step: the batch size, and the stages' GPU memory."""
        self.metrics.observe_batch(num_sessions)
        self.metrics.observe_gpu_memory(self.scheduler.executor.gpu_memory())

    def _on_output(self, block: BlockOutput) -> None:
        """Engine thread: never raises (an exception here would reach the engine loop)."""
        try:
            self.metrics.observe_block(len(block.frames), block.timings)
            stream = self._streams.get(block.session_id)
            if stream is not None:
                self._loop.call_soon_threadsafe(stream.put, block)
            else:                            # its call has ended: make sure the scheduler lets it go
                self.scheduler.remove_session(block.session_id)
        except Exception:                    # noqa: BLE001 - a closed loop at shutdown, a bug: log, go on
            log.exception("dropping block %d of session %s", block.block_index, block.session_id)

    def _on_error(self, session_id: str, exc: Exception) -> None:
        """Engine thread: the session is already removed from the scheduler."""
        if isinstance(exc, ImageError):
            error = RpcError(Status.INVALID_ARGUMENT, str(exc))
        elif isinstance(exc, CapacityError):
            error = RpcError(Status.RESOURCE_EXHAUSTED, str(exc))
        else:
            error = RpcError(Status.INTERNAL, f"generation failed: {type(exc).__name__}: {exc}")
        try:
            stream = self._streams.get(session_id)
            if stream is not None:
                self._loop.call_soon_threadsafe(stream.fail, error)
        except Exception:                    # noqa: BLE001
            log.exception("cannot report the error of session %s", session_id)

    # ---- RPCs ----------------------------------------------------------------------------
    async def Play(self, request_iterator, context: Call):
        stream, reader, watchdog, error = None, None, None, None
        try:
            start = await self._read_start(request_iterator, context)
            stream = await self._open_session(start)
            await self._send(context, world_pb2.ServerMessage(session_started=world_pb2.SessionStarted(
                session_id=stream.session_id, fps=self.scheduler.fps, height=self.scheduler.height,
                width=self.scheduler.width)))
            reader = asyncio.create_task(self._read_actions(request_iterator, stream))
            watchdog = asyncio.create_task(self._enforce_limits(stream))
            await self._write_frames(stream, context)
        except RpcError as exc:
            error = exc
        except _CallEnded:
            log.debug("session %s: the client left", stream.session_id if stream else "(starting)")
        except Exception as exc:             # noqa: BLE001 - a bug ends this session only
            log.exception("session %s failed", stream.session_id if stream else "(starting)")
            error = RpcError(Status.INTERNAL, f"internal error: {type(exc).__name__}", "internal")
        finally:
            for task in (reader, watchdog):
                if task is not None:
                    task.cancel()
            if stream is not None:
                self._close_session(stream)
        if error is not None:
            if stream is None:
                self.metrics.sessions_refused.labels(reason=error.reason).inc()
            await self._abort(context, error)

    async def GetCapacity(self, request, context: Call):
        await self._authorize_unary(context)
        stats = self.scheduler.stats()
        return world_pb2.Capacity(running=stats["running"], waiting=stats["waiting"],
                                  max_sessions=stats["max_sessions"], max_waiting=self.scheduler_config.max_waiting)

    async def ListModels(self, request, context: Call):
        await self._authorize_unary(context)
        return world_pb2.ListModelsResponse(models=[world_pb2.Model(
            name=self.config.model_name, height=self.scheduler.height, width=self.scheduler.width,
            fps=self.scheduler.fps)])

    # ---- pieces of Play ------------------------------------------------------------------
    @staticmethod
    async def _send(context: Call, message: world_pb2.ServerMessage) -> None:
        try:
            await context.write(message)
        except Exception as exc:             # noqa: BLE001 - grpc raises its internal ExecuteBatchError
            raise _CallEnded() from exc

    async def _abort(self, context: Call, error: RpcError) -> None:
        self.metrics.errors.labels(code=error.code.name).inc()
        try:
            await context.write(world_pb2.ServerMessage(error=world_pb2.Error(code=error.code.value[0],
                                                                              message=error.message)))
        except Exception as exc:             # noqa: BLE001 - the client may be gone already
            log.debug("cannot send the error %s: %s", error.code.name, exc)
        await context.abort(error.code, error.message)

    def _auth_error(self, context: Call, token: str = "") -> RpcError | None:
        """None when auth is off or the call carries a known token (metadata first, then `token`)."""
        if not self.config.auth_tokens:
            return None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and value.startswith("Bearer "):
                token = value[len("Bearer "):]
        if not token:
            return RpcError(Status.UNAUTHENTICATED, "this server needs a token: send metadata "
                            "'authorization: Bearer <token>' or start.auth_token", "unauthenticated")
        if not any(hmac.compare_digest(token.encode(), known.encode()) for known in self.config.auth_tokens):
            return RpcError(Status.UNAUTHENTICATED, "the auth token is not valid", "unauthenticated")
        return None

    async def _authorize_unary(self, context: Call) -> None:
        if (error := self._auth_error(context)) is not None:
            self.metrics.errors.labels(code=error.code.name).inc()
            await context.abort(error.code, error.message)

    async def _read_start(self, request_iterator, context: Call) -> world_pb2.Start:
        try:
            message = await asyncio.wait_for(anext(request_iterator), self.config.first_message_timeout_s)
        except (StopAsyncIteration, asyncio.TimeoutError):
            raise RpcError(Status.INVALID_ARGUMENT, "the first message must be start "
                           f"(none came within {self.config.first_message_timeout_s:g} s)") from None
        kind = message.WhichOneof("message")
        if (error := self._auth_error(context, message.start.auth_token if kind == "start" else "")) is not None:
            raise error
        if self._draining:
            raise RpcError(Status.UNAVAILABLE, "the server is shutting down; try another", "draining")
        if kind != "start":
            raise RpcError(Status.INVALID_ARGUMENT, f"the first message must be start, got {kind or 'nothing'}")
        return message.start

    async def _open_session(self, start: world_pb2.Start) -> _SessionStream:
        """Check `start`, hand it to the scheduler; returns the session's registered stream."""
        image = await self._start_image(start)
        stream = _SessionStream(self.session_id_prefix + uuid.uuid4().hex, self.config, self.metrics)
        self._streams[stream.session_id] = stream     # before add_session: its first block may come fast
        add = self._loop.run_in_executor(None, self.scheduler.add_session, stream.session_id, image,
                                         start.prompt, start.seed)
        try:
            await asyncio.shield(add)        # the scheduler decodes and checks the image: off the loop
        except asyncio.CancelledError:       # client gone mid-add: remove once the add has landed
            self._streams.pop(stream.session_id, None)
            add.add_done_callback(lambda _: self.scheduler.remove_session(stream.session_id))
            raise
        except Exception as exc:
            self._streams.pop(stream.session_id, None)
            if isinstance(exc, CapacityError):
                raise RpcError(Status.RESOURCE_EXHAUSTED, str(exc), "capacity") from None
            if isinstance(exc, ValueError):  # ImageError: unreadable, wrong mode, too small
                raise RpcError(Status.INVALID_ARGUMENT, str(exc)) from None
            raise
        self.metrics.sessions_admitted.inc()
        return stream

    async def _start_image(self, start: world_pb2.Start):
        """Check the sizes and the prompt; the start image, decoded (or rendered), off the loop."""
        height, width = self.scheduler.height, self.scheduler.width
        if start.height not in (0, height) or start.width not in (0, width):
            raise RpcError(Status.INVALID_ARGUMENT, f"this server streams {height}x{width} (HxW) frames only, "
                           f"got start.height={start.height}, start.width={start.width} (0 = the server's)")
        if len(start.prompt) > self.config.max_prompt_chars:
            raise RpcError(Status.INVALID_ARGUMENT, f"start.prompt has {len(start.prompt)} characters; "
                           f"the limit is {self.config.max_prompt_chars}")
        source = start.WhichOneof("scene")
        if source is None:
            raise RpcError(Status.INVALID_ARGUMENT, "start needs an image (JPEG/PNG bytes) or a builtin_scene")
        if source == "builtin_scene":
            return await asyncio.to_thread(scene_image, start.builtin_scene, self.config.scenes, height, width)
        if len(start.image) > self.config.max_image_bytes:
            raise RpcError(Status.INVALID_ARGUMENT, f"start.image has {len(start.image)} bytes; "
                           f"the limit is {self.config.max_image_bytes}")
        try:
            return await asyncio.to_thread(decode_image, start.image, self.config.max_image_pixels)
        except ImageError as exc:
            raise RpcError(Status.INVALID_ARGUMENT, str(exc)) from None

    def _close_session(self, stream: _SessionStream) -> None:
        stream.finish()
        self._streams.pop(stream.session_id, None)
        self.scheduler.remove_session(stream.session_id)     # idempotent, a short lock: fine on the loop

    async def _read_actions(self, request_iterator, stream: _SessionStream) -> None:
        """Apply actions until stop or half-close; a bad one fails the session."""
        try:
            async for message in request_iterator:
                kind = message.WhichOneof("message")
                if kind == "stop":
                    break
                if kind != "action":
                    raise RpcError(Status.INVALID_ARGUMENT, f"expected action or stop, got {kind or 'nothing'}")
                self._apply_action(stream, message.action)
            stream.finish()
        except RpcError as exc:
            stream.fail(exc)
        except grpc.aio.AioRpcError:         # the call is ending; the handler sees it too
            stream.finish()

    async def _enforce_limits(self, stream: _SessionStream) -> None:
        """End the session when it has had no action for `idle_timeout_s`, or has lasted
        `max_session_s`: an abandoned or endless session must not hold a KV slot forever."""
        config = self.config
        while not stream.ended:
            now = time.monotonic()
            idle_left = stream.last_input + config.idle_timeout_s - now
            length_left = stream.started + config.max_session_s - now
            if length_left <= 0:
                stream.fail(RpcError(Status.DEADLINE_EXCEEDED, f"the session reached the maximum length of "
                                     f"{config.max_session_s:g} s; start a new one", "max_length"))
            elif idle_left <= 0:
                stream.fail(RpcError(Status.DEADLINE_EXCEEDED, f"no action for {config.idle_timeout_s:g} s: the "
                                     "session ended to free its slot; send an action at least that often",
                                     "idle"))
            else:
                await asyncio.sleep(min(idle_left, length_left))

    def _apply_action(self, stream: _SessionStream, action: world_pb2.Action) -> None:
        unknown = sorted(set(action.keys) - set(KEYS))
        if unknown:
            raise RpcError(Status.INVALID_ARGUMENT, f"unknown key(s) {unknown} in action.keys {action.keys!r}; "
                           f"keys are {', '.join(KEYS)}")
        if not all(math.isfinite(v) for v in (action.look_dx, action.look_dy, action.client_timestamp)):
            raise RpcError(Status.INVALID_ARGUMENT, "action.look_dx, look_dy and client_timestamp must be finite")
        if not stream.last_sequence < action.sequence <= MAX_SEQUENCE:
            raise RpcError(Status.INVALID_ARGUMENT, f"action.sequence must increase (and stay below 2^63): "
                           f"got {action.sequence} after {stream.last_sequence}")
        if not stream.actions.take():
            raise RpcError(Status.RESOURCE_EXHAUSTED, f"more than {self.config.max_actions_per_second:g} actions/s; "
                           "send an action when the held keys change, or at most once per frame")
        stream.last_sequence = action.sequence
        stream.last_input = stream.action_times[action.sequence] = time.monotonic()
        if len(stream.action_times) > MAX_TRACKED_ACTIONS:      # e.g. while the session waits for a slot
            del stream.action_times[next(iter(stream.action_times))]
        try:
            self.scheduler.set_action(stream.session_id, action.keys, action.sequence, action.client_timestamp)
        except ValueError as exc:
            raise RpcError(Status.INVALID_ARGUMENT, str(exc)) from None
        except KeyError:                     # the engine dropped the session: its error is on the way
            pass

    async def _write_frames(self, stream: _SessionStream, context: Call) -> None:
        while (block := await stream.next_block()) is not None:
            encoded, seconds = await self._loop.run_in_executor(self._jpeg_pool, encode_jpeg, block.frames,
                                                                self.config.jpeg_quality)
            self.metrics.stage_seconds.labels(stage="jpeg").observe(sum(seconds))
            timings = block.timings
            for offset, (jpeg, jpeg_seconds) in enumerate(zip(encoded, seconds, strict=True)):
                if stream.ended:
                    break
                await self._send(context, world_pb2.ServerMessage(frame=world_pb2.Frame(
                    sequence=block.first_frame + offset, jpeg=jpeg, action_sequence=block.action_seq,
                    client_timestamp=block.client_time, timings=world_pb2.ServerTimings(
                        queue_seconds=timings.get("queue", 0.0), denoise_seconds=timings.get("denoise", 0.0),
                        decode_seconds=timings.get("decode", 0.0), jpeg_seconds=jpeg_seconds))))
                self.metrics.frames_sent.inc()
                received = stream.action_times.pop(block.action_seq, None)
                if received is not None:     # the first frame this action conditions
                    self.metrics.action_latency.observe(time.monotonic() - received)
                    for sequence in [s for s in stream.action_times if s < block.action_seq]:
                        del stream.action_times[sequence]     # superseded before any block read them

