"""The session scheduler: vLLM V1's shape for blocks of video instead of tokens.

A session is a request that never ends; its "decode step" is one block (3 latent frames, 12
video frames). Every engine step:

1. admits waiting sessions (FCFS) into free KV-cache slots (a slot = one row of the pool
   the DiT stage preallocates; the pool size caps sessions per GPU);
2. picks up to `max_batch` running sessions whose next block is due, earliest deadline first
   (deadline-aware fairness, as StreamDiffusionV2's SLO-aware batching), sessions at any
   position in their streams. A session's first block is due at once; each next block one
   block-duration after the previous one started (or was due, if it started early). The player
   plays a block while the next one is made, so a block that is generated earlier than that only
   waits in the client's buffer, and every action then waits behind it: generating ahead of the
   stream's fps is latency, not throughput. Sessions due within `lead` of a block-duration join
   the batch early (that keeps batches full and absorbs a step that runs long); `pace=False`
   makes every running session due at every step (throughput benchmarks);
3. reads each one's latest action (the block's keys are fixed here; later input goes to the
   next block), plans and denoises the batch in one set of DiT passes (the DiT stage);
4. the VAE stage decodes each session's block with its own streaming decoder and hands the
   frames to `on_output`: inline when `step` is called directly, on its own thread once `start`
   runs the engine, so the DiT works on batch N + 1 while the VAE decodes batch N, and never
   further ahead: a DiT step waits until the VAE has begun on batch N (a block made sooner would
   only wait for the VAE, with its keys read that much earlier).

Where the stages run is the `Executor`'s business (`executor.py`): in this process (the VAE on
its own CUDA stream), or in two Ray actors (`ray_stages.py`); the scheduler is the same.

A full pool queues new sessions up to `max_waiting`, then refuses them (`CapacityError`):
for an interactive stream, refusal beats preemption (a preempted player would freeze).
Failure isolation: a session whose open, plan or decode raises is dropped alone (`on_error`; a
decode failure on the VAE thread is handled by the engine thread at its next step); a
DiT batch that raises drops the sessions of that batch (their caches may be half-written),
never the others.

Thread model: `add_session` / `set_action` / `remove_session` are called from the gateway's
threads; `step` runs on the engine thread (`start`). One lock guards the queues; the GPU
work runs outside it.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..model.controls import check_key
from ..model.image_condition import load_image
from ..pipeline.streaming import CapacityError
from .executor import DenoisedBlock, Executor
from .stages import BlockRequest

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch: int = 4        # sessions batched in one DiT step
    max_waiting: int = 4      # sessions queued for a free KV slot; beyond it add_session refuses
    pace: bool = True         # a session's next block only when its playback needs it
    lead: float = 0.1         # fraction of a block-duration a block may start before it is due
    idle_sleep_s: float = 0.002

    def __post_init__(self):
        if self.max_batch < 1 or self.max_waiting < 0 or not 0.0 <= self.lead < 1.0:
            raise ValueError(f"max_batch must be >= 1, max_waiting >= 0 and 0 <= lead < 1, got {self}")


@dataclass
class BlockOutput:
    session_id: str
    block_index: int
    first_frame: int          # index of the block's first video frame in the session
    frames: np.ndarray        # uint8 [T, H, W, 3]
    action_seq: int           # sequence number of the action that conditioned this block (-1: none yet)
    client_time: float        # that action's echoed client timestamp (0.0: none)
    timings: dict[str, float]  # seconds: queue, denoise, decode


@dataclass
class _Action:
    keys: frozenset[str] = frozenset()
    seq: int = -1
    client_time: float = 0.0


@dataclass
class _Entry:
    session_id: str
    pixels: torch.Tensor | None              # the checked start image, until the session opens
    prompt: str
    seed: int
    action: _Action = field(default_factory=_Action)
    blocks: int = 0
    deadline: float = 0.0                    # clock time its next block is due


@dataclass
class _Decode:
    """A denoised block on its way to the VAE stage."""
    entry: _Entry
    block_index: int
    action: _Action
    block: DenoisedBlock
    timings: dict[str, float]


class Scheduler:
    def __init__(self, executor: Executor, config: SchedulerConfig,
                 on_output: Callable[[BlockOutput], None], on_error: Callable[[str, Exception], None],
                 on_step: Callable[[int], None] | None = None, clock: Callable[[], float] = time.monotonic):
        """on_output / on_error(session_id, exc) / on_step(batch_size) run on the engine thread;
        `clock` (seconds) sets deadlines and measures stage times."""
        self.executor, self.config, self.clock = executor, config, clock
        self.on_output, self.on_error, self.on_step = on_output, on_error, on_step
        stream = executor.config
        self.height, self.width, self.fps = stream.height, stream.width, stream.fps
        self.block_seconds = stream.block_frames * 4 / self.fps
        self._lock = threading.Lock()
        self._waiting: deque[_Entry] = deque()
        self._running: dict[str, _Entry] = {}
        self._opening: dict[str, _Entry] = {}     # taken from _waiting, its session being opened
        self._removed: set[str] = set()
        self._thread: threading.Thread | None = None
        self._vae_thread: threading.Thread | None = None
        self._decodes: queue.Queue = queue.Queue()
        self._failed: list[tuple[_Entry, Exception]] = []
        self._last_batch = 1                      # blocks the last DiT step handed to the VAE
        self._stop = threading.Event()

    # ---- called by the gateway -----------------------------------------------------------
    def add_session(self, session_id: str, image, prompt: str, seed: int = 0) -> None:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        pixels = load_image(image, self.height, self.width)     # refuse a bad image now, not in the engine
        with self._lock:
            if (session_id in self._running or session_id in self._opening
                    or any(e.session_id == session_id for e in self._waiting)):
                raise ValueError(f"session {session_id!r} already exists")
            # sessions being opened hold no slot yet, but will: count them with the waiting ones;
            # removed sessions hold theirs until the engine's next step: count them as free (a
            # session that left is gone for its client, and for Ray Serve's request count)
            releasing = sum(1 for session_id in self._removed if session_id in self._running)
            beyond_free_slots = (len(self._waiting) + len(self._opening) - self.executor.free_slots - releasing)
            if beyond_free_slots >= self.config.max_waiting:
                raise CapacityError(f"server full: {len(self._running)} sessions playing of "
                                    f"{self.executor.config.max_sessions} and {len(self._waiting)} waiting; "
                                    "try again later")
            self._removed.discard(session_id)
            self._waiting.append(_Entry(session_id, pixels, prompt, seed))

    def set_action(self, session_id: str, keys: str | Iterable[str], seq: int, client_time: float) -> None:
        held = frozenset(check_key(k) for k in keys)
        with self._lock:
            entry = (self._running.get(session_id) or self._opening.get(session_id)
                     or next((e for e in self._waiting if e.session_id == session_id), None))
            if entry is None:
                raise KeyError(f"unknown session {session_id!r}")
            if seq > entry.action.seq:                        # out-of-order arrivals never go back in time
                entry.action = _Action(held, seq, client_time)

    def remove_session(self, session_id: str) -> None:
        with self._lock:
            self._waiting = deque(e for e in self._waiting if e.session_id != session_id)
            if session_id in self._running or session_id in self._opening:
                self._removed.add(session_id)             # the engine frees its slot between steps

    def stats(self) -> dict:
        with self._lock:
            return {"running": len(self._running), "waiting": len(self._waiting),
                    "max_sessions": self.executor.config.max_sessions}

    # ---- the engine ----------------------------------------------------------------------
    def _release_removed(self) -> None:
        with self._lock:
            removed = [self._running.pop(s) for s in list(self._removed) if s in self._running]
            self._removed.clear()
        for entry in removed:
            self.executor.close_session(entry.session_id)

    def _admit(self) -> None:
        while True:
            with self._lock:
                if not self._waiting or self.executor.free_slots == 0:
                    return
                entry = self._waiting.popleft()
                self._opening[entry.session_id] = entry
            try:
                self.executor.open_session(entry.session_id, entry.pixels, entry.prompt, entry.seed)
            except Exception as exc:                            # noqa: BLE001 - isolate the session
                with self._lock:
                    self._opening.pop(entry.session_id, None)
                    self._removed.discard(entry.session_id)
                log.warning("session %s failed to start: %s", entry.session_id, exc)
                self.on_error(entry.session_id, exc)
                continue
            entry.pixels = None
            entry.deadline = self.clock()
            with self._lock:
                self._opening.pop(entry.session_id, None)
                if entry.session_id in self._removed:           # removed while it was being opened
                    self._removed.discard(entry.session_id)
                    self.executor.close_session(entry.session_id)
                    continue
                self._running[entry.session_id] = entry

    def _pick(self, now: float) -> list[tuple[_Entry, _Action]]:
        due_by = now + self.config.lead * self.block_seconds if self.config.pace else float("inf")
        with self._lock:
            due = sorted((e for e in self._running.values() if e.deadline <= due_by), key=lambda e: e.deadline)
            return [(entry, entry.action) for entry in due[: self.config.max_batch]]

    def _fail(self, entry: _Entry, exc: Exception) -> None:
        log.warning("session %s failed: %s", entry.session_id, exc)
        with self._lock:
            self._running.pop(entry.session_id, None)
        self.executor.close_session(entry.session_id)
        self.on_error(entry.session_id, exc)

    def _process_failures(self) -> None:
        """Sessions whose decode failed on the VAE thread: dropped here, on the engine thread."""
        with self._lock:
            failed, self._failed = self._failed, []
        for entry, exc in failed:
            if self._running.get(entry.session_id) is entry:
                self._fail(entry, exc)

    def step(self) -> int:
        """One engine iteration: the DiT stage for one batch, then its decode (inline, or handed
        to the VAE thread once `start` has run). Returns the number of blocks denoised."""
        self._process_failures()
        self._release_removed()
        self._admit()
        if self._vae_thread is not None and self._decodes.qsize() >= self._last_batch:
            return 0                               # the VAE has not begun on the last batch yet
        start = self.clock()
        batch = self._pick(start)
        if not batch:
            return 0
        try:                                       # a block that cannot be planned fails alone, in `blocks`
            blocks = self.executor.denoise([BlockRequest(entry.session_id, action.keys) for entry, action in batch])
        except Exception as exc:                   # noqa: BLE001 - the batch's caches are suspect: drop it
            for entry, _ in batch:
                self._fail(entry, exc)
            return 0
        timings = {"denoise": self.clock() - start}
        denoised = []
        for entry, action in batch:
            block = blocks[entry.session_id]
            if isinstance(block, Exception):
                self._fail(entry, block)
            else:
                denoised.append((entry, action, block))
        if not denoised:
            return 0
        if self.on_step is not None:
            self.on_step(len(denoised))
        self._last_batch = len(denoised)
        for entry, action, block in denoised:
            item = _Decode(entry, entry.blocks, action, block, dict(timings, queue=max(0.0, start - entry.deadline)))
            entry.blocks += 1
            entry.deadline = max(entry.deadline, start) + self.block_seconds    # late: no burst to catch up
            if self._vae_thread is None:
                self._decode(item)
            else:
                self._decodes.put(item)
        return len(denoised)

    def _decode(self, item: "_Decode") -> None:
        """The VAE stage for one block: decode with the session's streaming decoder, emit."""
        entry = item.entry
        with self._lock:
            if entry.session_id in self._removed or self._running.get(entry.session_id) is not entry:
                return                             # the player left: no frames for nobody
        decode_start = self.clock()
        try:
            frames = item.block.decode()
        except Exception as exc:                   # noqa: BLE001 - each session has its own decoder
            if self._vae_thread is None:
                self._fail(entry, exc)
            else:
                with self._lock:
                    self._failed.append((entry, exc))
            return
        item.timings["decode"] = self.clock() - decode_start
        self.on_output(BlockOutput(entry.session_id, item.block_index, item.block.first_frame, frames,
                                   item.action.seq, item.action.client_time, item.timings))

    def start(self) -> None:
        """Run the DiT stage on an engine thread and the VAE stage on its own thread, pipelined:
        the DiT denoises batch N + 1 while the VAE decodes batch N."""
        if self._thread is not None:
            raise RuntimeError("the scheduler is already running")
        self._stop.clear()
        self._decodes = queue.Queue(maxsize=self.config.max_batch)
        self._vae_thread = threading.Thread(target=self._vae_loop, name="lingbot-vae", daemon=True)
        self._vae_thread.start()
        self._thread = threading.Thread(target=self._loop, name="lingbot-engine", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the engine and VAE threads `start` began are alive (a bug that escapes `step`
        ends the engine thread: health checks read this)."""
        return all(thread is not None and thread.is_alive() for thread in (self._thread, self._vae_thread))

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.step() == 0:
                time.sleep(self.config.idle_sleep_s)

    def _vae_loop(self) -> None:
        while (item := self._decodes.get()) is not None:
            self._decode(item)

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._vae_thread is not None:
            self._decodes.put(None)
            self._vae_thread.join()
            self._vae_thread = None
        with self._lock:
            entries = list(self._running.values())
            self._running.clear()
            self._waiting.clear()
        for entry in entries:
            self.executor.close_session(entry.session_id)

