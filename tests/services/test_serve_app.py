"""The Ray Serve application through Serve's real gRPC proxy on loopback: one Serve instance
for the module, two replicas of the tiny release (CPU, 64x64), one KV slot each, and room for
one session queued at the proxy."""
from __future__ import annotations

import asyncio
import itertools
import socket
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

from lingbot_rt.pipeline.tiny_checkpoint import make_tiny_checkpoint
from lingbot_rt.services.executor import StageError
from lingbot_rt.services.proto.lingbot.v1 import world_pb2 as pb
from lingbot_rt.services.proto.lingbot.v1 import world_pb2_grpc
from lingbot_rt.services.scheduler import SchedulerConfig
from tests.services.test_gateway import SIZE, Player, run, start

ray = pytest.importorskip("ray", reason="the Serve app needs Ray Serve: python -m pip install -e '.[serve]'")
serve = pytest.importorskip("ray.serve", reason="the Serve app needs Ray Serve: python -m pip install -e '.[serve]'")
if not hasattr(pytest.importorskip("ray.serve.grpc_util"), "gRPCInputStream"):
    pytest.skip("this Ray Serve has no bidirectional gRPC streaming (2.60 has)", allow_module_level=True)
from ray.serve.config import gRPCOptions  # noqa: E402 - needs ray
from ray.serve.schema import ServeDeploySchema  # noqa: E402

from lingbot_rt.services.serve_app import (  # noqa: E402
    DEPLOYMENT_NAME,
    SERVICER_FUNCTION,
    ServeAppArgs,
    WorldServiceReplica,
    build_app,
    deployment,
)

CONFIG_FILE = Path(__file__).resolve().parents[2] / "deploy" / "serve" / "lingbot-rt.yaml"
NUM_REPLICAS = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("release") / "tiny")


def one_slot(release, **fields) -> ServeAppArgs:
    """A replica of one KV slot and no wait queue: a second session on it is refused."""
    return ServeAppArgs(**{"checkpoint": str(release), "max_sessions": 1, "metrics_port": 0,
                           "scheduler": SchedulerConfig(max_batch=1, max_waiting=0), **fields})


class Served:
    def __init__(self, address: str, handle):
        self.address, self.handle = address, handle
        self.metrics_ports: dict[str, int] = {}          # replica tag -> its /metrics port
        for _ in range(100):                             # the router picks a replica per call: ask until both answered
            answer = handle.metrics_address.remote().result()
            self.metrics_ports[answer["replica"]] = answer["port"]
            if len(self.metrics_ports) == NUM_REPLICAS:
                break
        assert len(self.metrics_ports) == NUM_REPLICAS, self.metrics_ports

    def metric(self, replica: str, name: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_ports[replica]}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


@pytest.fixture(scope="module")
def served(release):
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    try:
        grpc_port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": 0},
                    grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=[SERVICER_FUNCTION]))
        args = one_slot(release)
        app = deployment(args).options(num_replicas=NUM_REPLICAS, max_queued_requests=1,
                                       ray_actor_options={"num_cpus": 1}).bind(args)
        yield Served(f"127.0.0.1:{grpc_port}", serve.run(app, name="lingbot"))
    finally:
        serve.shutdown()
        ray.shutdown()


def replica_of(session_id: str) -> str:
    return session_id.rpartition("-")[0]


async def read_to_the_end(player: Player) -> list:
    """Stop the session; the frames still on their way, until the stream ends (status OK)."""
    player.send(stop=pb.Stop())
    frames = []
    while (message := await player.call.read()) is not grpc.aio.EOF:
        frames.append(message.frame)
    assert await player.call.code() == grpc.StatusCode.OK
    return frames


def test_a_session_plays_start_to_stop_through_the_proxy(served):
    async def scenario():
        async with grpc.aio.insecure_channel(served.address) as channel:
            stub = world_pb2_grpc.WorldServiceStub(channel)
            capacity = await stub.GetCapacity(pb.GetCapacityRequest())
            assert (capacity.max_sessions, capacity.max_waiting) == (1, 0)
            models = await stub.ListModels(pb.ListModelsRequest())
            assert [(m.height, m.width, m.fps) for m in models.models] == [(SIZE, SIZE, 16)]

            player = Player(channel, start(seed=3))
            started = await player.read("session_started")
            assert replica_of(started.session_id) in served.metrics_ports
            assert (started.fps, started.height, started.width) == (16, SIZE, SIZE)
            player.act("w", 1, 100.5)
            frames = []
            await player.until_action(1, frames)
            frames += await read_to_the_end(player)
        assert [f.sequence for f in frames] == list(range(len(frames)))
        assert frames[-1].action_sequence == 1 and frames[-1].client_timestamp == 100.5
        assert frames[-1].jpeg[:2] == b"\xff\xd8" and frames[-1].timings.denoise_seconds > 0
    run(scenario())


def test_errors_reach_the_client_with_their_status_code(served):
    async def scenario():
        async with grpc.aio.insecure_channel(served.address) as channel:
            await Player(channel, start(builtin_scene="moon")).error(grpc.StatusCode.INVALID_ARGUMENT,
                                                                      "unknown builtin_scene")
            player = Player(channel, start())
            await player.read("session_started")
            player.act("wx", 1)
            await player.error(grpc.StatusCode.INVALID_ARGUMENT, "unknown key(s) ['x']")
    run(scenario())


def test_sessions_spread_over_replicas_queue_at_the_proxy_and_each_stays_on_its_own(served):
    """Two sessions go to the two replicas (one slot each); a third waits at the proxy, a fourth
    is refused (RESOURCE_EXHAUSTED); when the first stops, the third starts on its replica.
    Each replica's own counters show that the frames of the sessions named after it, and only
    those, came from it."""
    async def scenario():
        counters = ("lingbot_frames_sent_total", "lingbot_sessions_admitted_total")
        before = {replica: [served.metric(replica, name) for name in counters] for replica in served.metrics_ports}
        received = {replica: [0, 0] for replica in served.metrics_ports}     # frames, sessions
        async with grpc.aio.insecure_channel(served.address) as channel:
            players, replicas = [], []
            for seed in (1, 2):                   # one after the other: a session being routed counts as queued
                players.append(Player(channel, start(seed=seed)))
                replicas.append(replica_of((await players[-1].read("session_started")).session_id))
            assert sorted(replicas) == sorted(served.metrics_ports)
            extra = [Player(channel, start(seed=seed)) for seed in (3, 4)]
            reads = [asyncio.create_task(player.call.read()) for player in extra]
            done, _ = await asyncio.wait(reads, return_when=asyncio.FIRST_COMPLETED)
            (first,) = done                       # whichever reached the proxy second is refused at once
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                first.result()
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, raised.value
            queued_read = reads[1 - reads.index(first)]
            queued = extra[1 - reads.index(first)]
            assert not queued_read.done()
            for player in players:
                player.act("w", 0)
            frames = await asyncio.gather(*(p.frames(24) for p in players))
            for replica, player, played in zip(replicas, players, frames):
                played += await read_to_the_end(player)
                assert [f.sequence for f in played] == list(range(len(played)))
                received[replica][0] += len(played)
                received[replica][1] += 1
                if player is players[0]:          # its slot is free: the queued session starts there
                    started = await queued_read
                    assert replica_of(started.session_started.session_id) == replica
                    played = await queued.frames(12) + await read_to_the_end(queued)
                    received[replica][0] += len(played)
                    received[replica][1] += 1
        for replica, (frames_sent, sessions) in received.items():
            after = [served.metric(replica, name) for name in counters]
            assert [a - b for a, b in zip(after, before[replica])] == [frames_sent, sessions], replica
    run(scenario())


async def make_replica(args: ServeAppArgs) -> WorldServiceReplica:
    """The deployment's class outside Serve, constructed as Serve does (an async __init__)."""
    replica = WorldServiceReplica.__new__(WorldServiceReplica)
    await replica.__init__(args)
    return replica


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_check_health_fails_when_the_engine_thread_dies(release, monkeypatch):
    async def scenario():
        replica = await make_replica(one_slot(release, metrics_port=None))
        try:
            await replica.check_health()
            scheduler = replica.gateway.scheduler

            def broken_step():
                raise RuntimeError("injected engine bug")
            monkeypatch.setattr(scheduler, "step", broken_step)
            for _ in range(200):
                if not scheduler.running:
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(RuntimeError, match="engine thread is not running"):
                await replica.check_health()
        finally:
            await replica.shutdown()
    run(scenario())


def test_check_health_fails_when_a_stage_actor_dies(served, release):
    async def scenario():
        replica = await make_replica(one_slot(release, stages="ray", metrics_port=None))
        try:
            await replica.check_health()
            ray.kill(replica.gateway.scheduler.executor.dit)
            with pytest.raises(StageError, match="the DiT stage's Ray actor died"):
                for _ in itertools.count():       # the ping answers with the actor's death once Ray knows it
                    await replica.check_health()
                    await asyncio.sleep(0.05)
        finally:
            await replica.shutdown()
    run(scenario())


class FakeContext:
    """What a replica's methods use of the gRPC context Serve passes."""

    def __init__(self):
        self.code = self.details = None

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details

    def invocation_metadata(self):
        return []


def test_replica_shutdown_ends_a_running_session_with_unavailable(release):
    """The replica's Play outside Serve: its messages, then, when the replica shuts down (the
    coroutine its `__del__` hook returns), the gateway's last Error, its status set on the
    context Serve would pass (under Serve the hook runs once no request is left)."""
    async def scenario():
        replica = await make_replica(one_slot(release, metrics_port=None))
        context, forever = FakeContext(), asyncio.Event()

        async def requests():
            yield pb.ClientMessage(start=start())
            await forever.wait()             # a client that neither acts nor leaves
        play = replica.Play(requests(), context)
        assert (await anext(play)).WhichOneof("message") == "session_started"
        assert (await anext(play)).WhichOneof("message") == "frame"
        shutdown = asyncio.ensure_future(replica.__del__())      # Serve awaits what its hook returns
        messages = [message async for message in play]
        await shutdown
        assert messages[-1].error.code == grpc.StatusCode.UNAVAILABLE.value[0]
        assert context.code == grpc.StatusCode.UNAVAILABLE and "shutting down" in context.details
        assert replica.__del__() is None and replica.gateway.scheduler.stats()["running"] == 0
    run(scenario())


def test_the_serve_config_file_loads_and_names_importable_things():
    config = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG_FILE.read_text()))
    assert config.grpc_options.port == 9000 and config.grpc_options.request_timeout_s is None
    assert config.grpc_options.grpc_servicer_functions == [SERVICER_FUNCTION]
    assert len(gRPCOptions(**config.grpc_options.model_dump()).grpc_servicer_func_callable) == 1   # importable
    (app,) = config.applications
    module, _, name = app.import_path.partition(":")
    builder = getattr(__import__(module, fromlist=[name]), name)
    assert builder is build_app
    assert isinstance(builder(app.args), serve.Application)                   # every arg is known
    (settings,) = app.deployments
    assert settings.name == DEPLOYMENT_NAME
    target = settings.autoscaling_config["target_ongoing_requests"]
    args = ServeAppArgs(**{k: v for k, v in app.args.items() if k not in ("scheduler", "gateway")},
                        scheduler=SchedulerConfig(**app.args["scheduler"]))
    assert target <= args.max_sessions < args.max_ongoing_requests == deployment(args).max_ongoing_requests


def test_app_args_refuse_unknown_keys_and_read_nested_configs():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['max_session'\]"):
        build_app({"max_session": 2})
    with pytest.raises(ValueError, match=r"scheduler: unknown key\(s\) \['batch'\]"):
        build_app({"scheduler": {"batch": 2}})
    with pytest.raises(ValueError, match="Ray places the two stage actors"):
        ServeAppArgs(stages="ray", device="cuda")
    assert ServeAppArgs(max_sessions=2, scheduler=SchedulerConfig(max_waiting=3)).max_ongoing_requests == 2 + 3
    with pytest.raises(ValueError, match=r"vae_dtype must be one of \['bf16', 'bfloat16', 'float32', 'fp32'\], got 'fp16'"):
        ServeAppArgs(vae_dtype="fp16")
