"""The Ray Serve application: `lingbot.v1.WorldService` behind Serve's gRPC proxy, each replica
owning one `WorldGateway` (scheduler, engine threads, stages): the session engine and session
logic of the standalone gateway, without its gRPC server.

    serve run deploy/serve/lingbot-rt.yaml          # local Ray; `serve deploy` for a running cluster
    lingbot-rt serve --ingress serve                # the same app, plus the browser player

    client --gRPC Play--> Serve gRPC proxy (:9000) --actor calls--> replica: WorldGateway -> scheduler -> DiT -> VAE

**A session stays on one replica.** A Play stream is one Serve request: the proxy routes it once,
when it opens, and the replica that took it serves it until it ends (its KV-cache row lives
there). The replica pulls each client message from the proxy with an actor call
(`receive_grpc_messages`) and streams each `ServerMessage` back as one generator item. A session
id starts with its replica's tag (`<tag>-<uuid>`): clients, logs and tests see which replica
plays it.

**Admission and autoscaling count sessions.** An open stream is one ongoing request for its
whole life, so
* `max_ongoing_requests` = max_sessions + max_waiting: the sessions a replica's scheduler takes
  (KV slots plus its wait queue). Serve's router never sends a request to a replica at that
  limit; when every replica is, the proxy holds new sessions (and GetCapacity / ListModels) up
  to `max_queued_requests` (the config file: 16) until one frees, and refuses the next with
  RESOURCE_EXHAUSTED (Serve's back-pressure message, no `Error` message). Serve counts a request
  still being routed as queued, so a small limit refuses bursts of starts that would fit.
  No margin for the unary calls on purpose: the router prefers a replica with a fresh cached
  queue length below its limit over probing the others (ray serve/_private/request_router/
  request_router.py, `_select_from_candidate_replicas`), so with a margin a replica whose
  scheduler is full would keep being sent sessions that it refuses while another is idle;
* `autoscaling_config.target_ongoing_requests` is the sessions per replica the autoscaler aims
  at (the config file: 3 of 4 slots, so a replica is added before the others are full); the
  sessions queued at the proxy count too.
`build_app` derives `max_ongoing_requests` from its args; the config file sets the rest.

**Status codes.** The gateway writes a last `Error` message and aborts with its status (`Call`);
`ServeCall.abort` sets the code and details on the gRPC context Serve passes, which travels
with that message to the proxy, so the client sees the same status as from the standalone
gateway.

**Health.** `check_health` (Serve calls it every `health_check_period_s`) fails when the engine
threads have stopped or a Ray stage actor has died; Serve then replaces the replica (its
sessions end: their KV cache dies with it).

**Metrics.** Each replica serves its own registry on `/metrics` at
`metrics_host:metrics_port + <its local rank>` (the next free port when that one is taken, e.g.
while an old replica drains during an update): Prometheus scrapes one target per replica
(deploy/README.md).

**Differences from the standalone gateway** (reference serving.md section 2): every action costs
an actor call and every frame a streamed item through the proxy (measured:
benchmarks/ingress_overhead.py); no TLS on Serve's gRPC proxy; Serve streams without
back-pressure (read from its code, not measured), so a slow client's frames would queue in the
proxy instead of being dropped by its session queue; on scale-down or update a replica's
sessions play on for `graceful_shutdown_timeout_s`, then are cut when Serve kills the replica
(the client sees INTERNAL "The actor died unexpectedly", not the gateway's UNAVAILABLE: Serve
calls the replica's shutdown hook only once no request is left, and kills it at that timeout).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from prometheus_client import CollectorRegistry

from ..config_io import config_from_dict
from ..world.release import DEFAULT_RELEASE
from .executor import STAGES, Executor
from .gateway import GatewayConfig, WorldGateway
from .metrics import serve_metrics
from .proto.lingbot.v1 import world_pb2
from .scheduler import SchedulerConfig

if TYPE_CHECKING:
    from ray.serve import Application, Deployment

log = logging.getLogger(__name__)

DEPLOYMENT_NAME = "WorldService"
SERVICER_FUNCTION = "lingbot_rt.services.proto.lingbot.v1.world_pb2_grpc.add_WorldServiceServicer_to_server"
METRICS_PORT_TRIES = 32          # ports tried from metrics_port + local rank
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class ServeAppArgs:
    """What a replica serves: `build_app`'s args (the config file's `args:`) and the defaults
    of `lingbot-rt serve` (its options read them from here)."""

    checkpoint: str = DEFAULT_RELEASE    # release root; relative to the replica's working directory
    config: str | None = None            # StreamConfig YAML (schedule, cache window, size, fps)
    height: int | None = None            # None: the release's
    width: int | None = None
    commit: str | None = None            # None: the stream config's ("clean" or "last_step")
    compile: str | None = None           # None: the stream config's; an inductor mode compiles the DiT block
    fused_qkv: bool = False              # one QKV GEMM per self-attention
    decoder: str | None = None           # None: the stream config's ("vae" or "tiny")
    max_sessions: int = 4                # KV-cache slots per replica: sessions playing at once
    warm_up_blocks: int | None = None    # blocks played at batch sizes 1, 2 and max_batch before serving;
                                         # None: enough to fill the KV window when compiled, else none
    stages: str = "in-process"           # or "ray": the DiT and VAE stages in two Ray actors
    device: str | None = None            # in-process stages; None: cuda when the replica has a GPU
    dtype: str | None = None             # DiT dtype (bf16, fp32); None: bf16 on a GPU, fp32 on the CPU
    vae_dtype: str | None = None         # None: the DiT's (fp32 is upstream's choice; bf16 decodes the world
                                         # VAE within 2/255 of it, benchmarks/results/vae_dtype_world.json)
    text_device: str | None = None
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9100      # None: no /metrics; 0: any free port

    def __post_init__(self):
        if self.stages not in STAGES:
            raise ValueError(f"stages must be one of {STAGES}, got {self.stages!r}")
        for name in ("dtype", "vae_dtype"):
            if getattr(self, name) is not None and getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} must be one of {sorted(DTYPES)}, got {getattr(self, name)!r}")
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {self.max_sessions}")
        if self.warm_up_blocks is not None and self.warm_up_blocks < 0:
            raise ValueError(f"warm_up_blocks must be >= 0, got {self.warm_up_blocks}")
        if self.stages == "ray" and self.device is not None:
            raise ValueError("device is for the in-process stages; with stages 'ray', Ray places the two stage "
                             "actors (a GPU each, one GPU shared, or the CPU)")

    @property
    def max_ongoing_requests(self) -> int:
        """Serve's per-replica request cap: every session its scheduler takes, playing or waiting
        (module docstring)."""
        return self.max_sessions + self.scheduler.max_waiting


def load_executor(args: ServeAppArgs) -> Executor:
    """The stages `args` name, loaded and warmed up (`Executor.warm_up`)."""
    executor = _load_stages(args)
    blocks = args.warm_up_blocks
    if blocks is None:                       # a compiled block recompiles until the window is full
        cache = executor.config.cache()
        blocks = 0 if executor.config.compile == "off" else -(-cache.cache_frames // cache.block_frames) + 1
    if blocks:
        start = time.perf_counter()
        executor.warm_up((1, 2, args.scheduler.max_batch), blocks)
        log.info("warmed up in %.1f s: %d blocks at batch sizes 1, 2, %d", time.perf_counter() - start, blocks,
                 args.scheduler.max_batch)
    return executor


def _load_stages(args: ServeAppArgs) -> Executor:
    """The stages `args` name, loaded in this process (in-process) or in two Ray actors it starts
    (ray: joins the running Ray, or starts one)."""
    import torch

    from ..pipeline import StreamingInference
    from ..pipeline.release import release_stream_config
    config = release_stream_config(args.checkpoint, args.config, height=args.height, width=args.width,
                                   commit=args.commit, compile=args.compile, fused_qkv=args.fused_qkv or None,
                                   decoder=args.decoder,
                                   max_sessions=args.max_sessions)
    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
    vae_dtype = getattr(torch, DTYPES[args.vae_dtype]) if args.vae_dtype else None
    if args.stages == "in-process":
        from .executor import InProcessExecutor
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
        return InProcessExecutor(StreamingInference.from_release(args.checkpoint, config, device=device, dtype=dtype,
                                                                 vae_dtype=vae_dtype,
                                                                 text_device=args.text_device))
    try:
        import ray
    except ImportError:
        raise ValueError('stages "ray" needs Ray: python -m pip install -e ".[ray]"') from None
    from .ray_stages import RayExecutor, RayStagesConfig
    if not ray.is_initialized():
        ray.init()                           # joins the cluster in RAY_ADDRESS if set, else starts one here
    return RayExecutor(args.checkpoint, config, RayStagesConfig(dtype=dtype, vae_dtype=vae_dtype,
                                                                text_device=args.text_device))


class CallAborted(Exception):
    """`ServeCall.abort` ended the call; its status is on Serve's gRPC context."""


class ServeCall:
    """`gateway.Call` over the gRPC context Serve's proxy passes to a replica. `write` hands a
    message to `messages`, the generator Serve streams back (one waiting at a time); `abort` sets
    the status on the context and raises `CallAborted`.

    The status travels with the next message Serve streams: the gateway writes its `Error` and
    aborts with no await between them that could let `messages` take the `Error` first, so the
    `Error` carries the status."""

    def __init__(self, grpc_context):
        self.context = grpc_context
        self.outbox: asyncio.Queue[world_pb2.ServerMessage] = asyncio.Queue(maxsize=1)

    async def write(self, message: world_pb2.ServerMessage) -> None:
        await self.outbox.put(message)

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        self.context.set_code(code)
        self.context.set_details(details)
        raise CallAborted(f"{code.name}: {details}")

    def invocation_metadata(self) -> Sequence[tuple[str, str]]:
        return self.context.invocation_metadata()

    async def messages(self, handler: asyncio.Task) -> AsyncIterator[world_pb2.ServerMessage]:
        """What the handler writes, until it returns (then what it left in the outbox)."""
        while True:
            get = asyncio.ensure_future(self.outbox.get())
            await asyncio.wait((get, handler), return_when=asyncio.FIRST_COMPLETED)
            if get.done():
                yield get.result()
                continue
            get.cancel()
            while not self.outbox.empty():
                yield self.outbox.get_nowait()
            handler.result()                 # a bug in the handler surfaces as INTERNAL
            return


def _replica_identity() -> tuple[str, int]:
    """(tag, local rank) of the Serve replica this runs in; ("local", 0) outside Serve."""
    from ray import serve
    from ray.serve.exceptions import RayServeException
    try:
        context = serve.get_replica_context()
    except RayServeException:
        return "local", 0
    return context.replica_tag, context.rank.local_rank


def _serve_registry(registry: CollectorRegistry, host: str, port: int):
    """`serve_metrics` on the first free port from `port` (0: any); returns (server, port)."""
    for candidate in ([0] if port == 0 else range(port, port + METRICS_PORT_TRIES)):
        try:
            server, _ = serve_metrics(candidate, registry, host)
        except OSError:                      # taken (another replica, or one draining)
            continue
        return server, server.server_port
    raise OSError(f"no free metrics port in {port}..{port + METRICS_PORT_TRIES - 1} on {host}")


class WorldServiceReplica:
    """One replica: a `WorldGateway` over the stages `args` name, its RPCs called by Serve."""

    _closed = True                           # until __init__ has started what `shutdown` stops

    async def __init__(self, args: ServeAppArgs):
        self.args = args
        self.replica_tag, local_rank = _replica_identity()
        executor = await asyncio.to_thread(load_executor, args)      # minutes for a real release
        registry = CollectorRegistry()
        self.gateway = WorldGateway(executor, args.scheduler, args.gateway, registry,
                                    session_id_prefix=f"{self.replica_tag}-")
        await self.gateway.start_engine()
        self._closed = False
        self._metrics_server, self.metrics_port = None, None
        if args.metrics_port is not None:            # one port per replica on a node; 0 stays "any"
            port = args.metrics_port and args.metrics_port + local_rank
            self._metrics_server, self.metrics_port = _serve_registry(registry, args.metrics_host, port)
        log.info("replica %s serving %dx%d, metrics on %s", self.replica_tag, self.gateway.scheduler.height,
                 self.gateway.scheduler.width, self.metrics_port)

    # ---- lingbot.v1.WorldService (through Serve's gRPC proxy) ----------------------------
    async def Play(self, request_stream, grpc_context) -> AsyncIterator[world_pb2.ServerMessage]:
        call = ServeCall(grpc_context)
        handler = asyncio.create_task(self._play(request_stream, call))
        try:
            async for message in call.messages(handler):
                yield message
        finally:                             # the client left (Serve cancels this generator): end the session
            handler.cancel()

    async def _play(self, request_stream, call: ServeCall) -> None:
        try:
            await self.gateway.Play(request_stream, call)
        except CallAborted:                  # the status is on the context, the Error message written
            pass

    async def GetCapacity(self, request, grpc_context) -> world_pb2.Capacity:
        return await self.gateway.GetCapacity(request, ServeCall(grpc_context))

    async def ListModels(self, request, grpc_context) -> world_pb2.ListModelsResponse:
        return await self.gateway.ListModels(request, ServeCall(grpc_context))

    # ---- Serve's hooks and operators' calls ----------------------------------------------
    async def check_health(self) -> None:
        """Raises when the engine threads stopped or a stage actor died (Serve restarts the replica)."""
        await asyncio.to_thread(self.gateway.check_health)

    async def metrics_address(self) -> dict[str, Any]:
        """{"replica": tag, "port": its /metrics port or None}: for tests and `lingbot-rt serve`."""
        return {"replica": self.replica_tag, "port": self.metrics_port}

    async def shutdown(self) -> None:
        """End what still plays (UNAVAILABLE), stop the engine, /metrics and the stage actors.
        Under Serve nothing plays by then (`__del__`): this releases the rest."""
        if self._closed:
            return
        self._closed = True
        await self.gateway.stop(grace=0)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        self.gateway.scheduler.executor.shutdown()

    def __del__(self):
        """Serve's shutdown hook, called once the replica has no request left (Serve kills a
        replica whose requests outlast `graceful_shutdown_timeout_s` without calling it); Serve
        awaits the coroutine returned. Plain (not async) so that garbage collection after
        `shutdown` makes no coroutine."""
        return None if self._closed else self.shutdown()


def deployment(args: ServeAppArgs) -> Deployment:
    """The replica class as a Serve deployment, with the options `args` determine; the config
    file overrides the others (replicas, autoscaling, health checks) by name."""
    from ray import serve
    return serve.deployment(
        WorldServiceReplica, name=DEPLOYMENT_NAME, max_ongoing_requests=args.max_ongoing_requests,
        ray_actor_options={"num_cpus": 1, "num_gpus": _replica_gpus(args)})


def _replica_gpus(args: ServeAppArgs) -> float:
    """In-process stages run on the replica's GPU (Ray hides the others), when the cluster has one."""
    if args.stages == "ray" or (args.device or "").startswith("cpu"):
        return 0
    import ray
    return 1 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0


def build_app(args: dict[str, Any]) -> Application:
    """The Serve application builder (`import_path: lingbot_rt.services.serve_app:build_app`):
    `args` are `ServeAppArgs` fields (nested mappings for `scheduler` and `gateway`); unknown
    keys are refused, naming them."""
    app_args = args if isinstance(args, ServeAppArgs) else config_from_dict(ServeAppArgs, args, "args")
    return deployment(app_args).bind(app_args)
