"""One simulated player: start a session over real gRPC (`lingbot_rt.services.client.Client`),
follow a `KeyPattern` on the wall clock, read every frame as it arrives, stop after the run's
duration, and keep a `SessionTrace` of what happened (`stats.py` turns it into numbers).

Frames are read as soon as they arrive, as the browser player reads them; the player does not
slow its reads to the session fps, because a client that stops reading makes gRPC buffer frames
on the way and would measure that buffer as latency. Playing the frames at the session fps is
modelled afterwards from the arrival times (`stats.playback`).

Outcomes: "played" (ran to the end of its duration), "refused" (RESOURCE_EXHAUSTED in answer to
its start: the server is full, a capacity signal, not a failure of the server) or "error" (any
other status at start, or any status, or the stream ending, while it played).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc

from lingbot_rt.services.client import Client, PlayError, PlaySession

from .patterns import PHASE_FRAMES, KeyPattern

START_TIMEOUT_S = 60.0           # for session_started: a queued session may wait for a slot


@dataclass(frozen=True)
class PlayerConfig:
    address: str                 # HOST:PORT of the gRPC gateway
    pattern: KeyPattern
    duration_s: float            # each player plays this long from its session_started
    scene: str = "world-0"       # built-in start view, or
    image: bytes | None = None   # a start image (JPEG/PNG bytes) instead
    prompt: str = ""
    token: str = ""
    stagger_s: float = 0.1       # player i starts i * stagger_s after the first


@dataclass
class SessionTrace:
    """What one player saw; times are seconds of time.monotonic() (the client's clock)."""
    player: int
    outcome: str = "error"                   # played | refused | error
    code: str | None = None                  # grpc status name of a refusal or error ("ENDED": stream closed)
    message: str = ""
    phase: str | None = None                 # where the error came: start | play
    session_id: str = ""
    fps: int = 0                             # the session's fps (SessionStarted)
    requested: float = 0.0                   # Start sent
    started: float = 0.0                     # SessionStarted received (0: never)
    ended: float = 0.0                       # the player stopped reading
    arrivals: list[float] = field(default_factory=list)      # per frame received
    sequences: list[int] = field(default_factory=list)       # Frame.sequence, per frame
    latencies_s: list[float] = field(default_factory=list)   # action->frame, one per action shown
    actions_sent: int = 0


async def play_one(config: PlayerConfig, player: int) -> SessionTrace:
    """Play one session for `config.duration_s`; never raises for what the server does."""
    trace = SessionTrace(player)
    await asyncio.sleep(player * config.stagger_s)
    async with Client(config.address, config.token) as client:
        trace.requested = time.monotonic()
        try:
            session = await client.play(image=config.image, scene="" if config.image else config.scene,
                                        prompt=config.prompt, seed=player, timeout_s=START_TIMEOUT_S)
        except PlayError as exc:
            refused = exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            _failed(trace, "refused" if refused else "error", exc.code.name, exc.message, "start")
            return trace
        except asyncio.TimeoutError:
            _failed(trace, "error", "TIMEOUT", f"no session_started within {START_TIMEOUT_S:g} s", "start")
            return trace
        trace.started, trace.session_id, trace.fps = time.monotonic(), session.session_id, session.fps
        keys = asyncio.create_task(_press_keys(session, config.pattern, player, trace))
        try:
            await asyncio.wait_for(_read_frames(session, trace), config.duration_s)
            _failed(trace, "error", "ENDED", "the server closed the stream before the run ended", "play")
        except asyncio.TimeoutError:
            trace.outcome = "played"
        except PlayError as exc:
            _failed(trace, "error", exc.code.name, exc.message, "play")
        finally:
            trace.ended = time.monotonic()
            keys.cancel()
            await session.stop()
    return trace


def _failed(trace: SessionTrace, outcome: str, code: str, message: str, phase: str) -> None:
    trace.outcome, trace.code, trace.message, trace.phase = outcome, code, message, phase


async def _read_frames(session: PlaySession, trace: SessionTrace) -> None:
    """Until the stream ends (returns) or fails (PlayError); the caller's timeout ends the run."""
    async for frame in session.frames():
        trace.arrivals.append(frame.received)
        trace.sequences.append(frame.sequence)
        if frame.latency_s is not None:         # the Client's: the first frame of a newer action
            trace.latencies_s.append(frame.latency_s)


async def _press_keys(session: PlaySession, pattern: KeyPattern, player: int, trace: SessionTrace) -> None:
    """Send the pattern's keys at its changes, on the wall clock from session start."""
    start = time.monotonic()
    for at_s, keys in pattern.changes(session.fps, player * PHASE_FRAMES):
        await asyncio.sleep(max(0.0, start + at_s - time.monotonic()))
        session.act(keys)
        trace.actions_sent += 1
