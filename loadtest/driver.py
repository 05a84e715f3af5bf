"""Runs: N players at once (`run_players`), and the ramp (`run_ramp`) that runs ever more players,
one step after another, until a step misses the target, and reports the capacity: the largest
number of players of a step that met it.

Each ramp step is a fresh run (its players start, play `duration_s`, stop), so a step's numbers
are those of a plain run with that many players; before each step the driver waits until the
server reports no session running or waiting (`GetCapacity`), because slots are freed
asynchronously after a player leaves.
"""
from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass

from lingbot_rt.services.client import open_channel
from lingbot_rt.services.proto.lingbot.v1 import world_pb2, world_pb2_grpc

from .player import PlayerConfig, play_one
from .stats import summarize_run, summarize_session

SETTLE_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Target:
    """What every player of a step must get."""
    fps: float                          # delivered FPS of each player (the minimum over players)
    p99_ms: float | None = None         # action->frame p99 over all players' samples (None: not checked)

    def misses(self, overall: dict) -> list[str]:
        """Why a run with these overall numbers fails the target; empty when it passes."""
        reasons = []
        if overall["refused"]:
            reasons.append(f"{overall['refused']} session(s) refused")
        if overall["errors"]:
            reasons.append(f"{overall['errors']} error(s): {overall['errors_by_code']}")
        if overall["delivered_fps"]["min"] < self.fps:
            reasons.append(f"min delivered fps {overall['delivered_fps']['min']} < {self.fps:g}")
        if self.p99_ms is not None:
            p99 = overall["latency_ms"]["p99"]
            if p99 is None:
                reasons.append("no action->frame latency sample")
            elif p99 > self.p99_ms:
                reasons.append(f"action->frame p99 {p99} ms > {self.p99_ms:g} ms")
        return reasons


async def run_players(config: PlayerConfig, num_players: int) -> dict:
    """`num_players` players at once: {"overall": ..., "sessions": [...]}."""
    traces = await asyncio.gather(*(play_one(config, player) for player in range(num_players)))
    sessions = [summarize_session(trace) for trace in traces]
    return {"overall": summarize_run(traces, sessions), "sessions": sessions}


async def run_ramp(config: PlayerConfig, steps: list[int], target: Target,
                   progress: Callable[[dict], None] | None = None) -> dict:
    """Run each step's player count in turn until one misses `target`; capacity = the last
    passing count before it (0 when the first fails). `limit_found` is False when every step
    passed (the capacity is at least the last step)."""
    results, capacity = [], 0
    for num_players in steps:
        await wait_until_idle(config.address, config.token)
        step = {"players": num_players, **await run_players(config, num_players)}
        step["misses"] = target.misses(step["overall"])
        step["passed"] = not step["misses"]
        results.append(step)
        if progress is not None:
            progress(step)
        if not step["passed"]:
            break
        capacity = num_players
    return {"steps": results, "capacity": capacity, "limit_found": not results[-1]["passed"],
            "target": {"fps": target.fps, "p99_ms": target.p99_ms}}


async def server_info(address: str, token: str = "") -> dict:
    """The server's capacity and model (`GetCapacity`, `ListModels`), for the report."""
    async with open_channel(address) as channel:
        stub = world_pb2_grpc.WorldServiceStub(channel)
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        capacity = await stub.GetCapacity(world_pb2.GetCapacityRequest(), metadata=metadata, timeout=10.0)
        models = await stub.ListModels(world_pb2.ListModelsRequest(), metadata=metadata, timeout=10.0)
    return {"max_sessions": capacity.max_sessions, "max_waiting": capacity.max_waiting,
            "running_before": capacity.running, "waiting_before": capacity.waiting,
            "models": [{"name": m.name, "height": m.height, "width": m.width, "fps": m.fps} for m in models.models]}


async def wait_until_idle(address: str, token: str = "", timeout_s: float = SETTLE_TIMEOUT_S) -> None:
    """Until the server runs and queues no session (raises TimeoutError after `timeout_s`)."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    async with open_channel(address) as channel:
        stub = world_pb2_grpc.WorldServiceStub(channel)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            capacity = await stub.GetCapacity(world_pb2.GetCapacityRequest(), metadata=metadata, timeout=10.0)
            if capacity.running == 0 and capacity.waiting == 0:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"the server at {address} still has {capacity.running} session(s) running "
                                   f"and {capacity.waiting} waiting after {timeout_s:g} s: another client? "
                                   "A ramp step needs the server to itself")
            await asyncio.sleep(0.1)


RAMP_RANGE = re.compile(r"^(\d+)\.\.(\d+)(?:x(\d+))?$")


def parse_ramp(spec: str) -> list[int]:
    """Player counts of the ramp's steps: "1,2,4,8" as listed; "1..8" adds one per step;
    "1..16x2" multiplies by 2 per step (ends at the last count <= 16)."""
    text = spec.replace(" ", "")
    if (match := RAMP_RANGE.match(text)) is not None:
        first, last, factor = int(match[1]), int(match[2]), int(match[3]) if match[3] else None
        if first < 1 or last < first or factor == 1 or factor == 0:
            raise ValueError(f"bad ramp {spec!r}: need 1 <= first <= last and a factor >= 2")
        steps = [first]
        while (step := steps[-1] * factor if factor else steps[-1] + 1) <= last:
            steps.append(step)
        return steps
    try:
        steps = [int(part) for part in text.split(",")]
    except ValueError:
        steps = []
    if not steps or steps[0] < 1 or any(b <= a for a, b in itertools.pairwise(steps)):
        raise ValueError(f"bad ramp {spec!r}: give increasing player counts >= 1 (1,2,4,8), "
                         "a range adding one per step (1..8) or a doubling range (1..16x2)")
    return steps
