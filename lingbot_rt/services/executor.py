"""Where the scheduler's steps run: the `Executor` interface and its in-process implementation.

The scheduler decides (admission, batching, the action of each block) and calls, always from
its engine thread:

1. `open_session` / `close_session` when a session is admitted / leaves;
2. `denoise(requests)` once per step: the DiT stage for one batch. It returns when the DiT is
   done; per session, a `DenoisedBlock` or the exception that dropped it alone;
3. `DenoisedBlock.decode()` once per block: the VAE stage's frames. The scheduler calls it on
   its VAE thread once started (inline otherwise), so the DiT works on batch N + 1 while the
   VAE decodes batch N.

Two executors, chosen by one string (`STAGES`; `lingbot-rt serve --stages`):

* `in-process` (`InProcessExecutor`): both stages in the serving process on one device; the
  VAE decodes on its own CUDA stream;
* `ray` (`ray_stages.RayExecutor`): the DiT stage and the VAE stage in two Ray actors, latents
  over torch.distributed (`TensorQueue`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from ..pipeline.streaming import Session, StreamConfig, StreamingInference
from .stages import BlockRequest, DiTStage

STAGES = ("in-process", "ray")


class StageError(RuntimeError):
    """A stage can no longer run (its actor died): every session on it fails with this."""


@dataclass(frozen=True)
class DenoisedBlock:
    """One session's denoised block on its way to the VAE stage."""

    first_frame: int                         # video frame index of the block's first frame
    decode: Callable[[], np.ndarray]         # the VAE stage: -> uint8 frames [T, H, W, 3]; call once


class Executor(ABC):
    """The DiT and VAE stages as the scheduler sees them (module docstring: the call order)."""

    config: StreamConfig                     # with the frame size resolved

    @property
    @abstractmethod
    def free_slots(self) -> int:
        """KV-cache rows free for new sessions (read from any thread)."""

    @abstractmethod
    def open_session(self, session_id: str, image, prompt: str, seed: int) -> None:
        """Claim a KV-cache row and a VAE decoder; raises (`CapacityError`, `ImageError`, ...)
        with nothing claimed."""

    @abstractmethod
    def close_session(self, session_id: str) -> None:
        """Free the session's KV-cache row and VAE decoder state."""

    @abstractmethod
    def denoise(self, requests: list[BlockRequest]) -> dict[str, DenoisedBlock | Exception]:
        """One DiT step for `requests` (distinct sessions). Raises when the batched passes fail:
        every session of the batch is then suspect."""

    def warm_up(self, batch_sizes: Sequence[int], blocks: int) -> None:
        """Play `blocks` blocks (decoded) at each batch size on throw-away sessions from a grey
        start image, so that compilation and kernel autotuning happen before the first player
        arrives rather than during their first blocks. Batch sizes above the free slots are
        skipped; the sessions are closed, whatever happens."""
        config = self.config
        image = np.full((config.height, config.width, 3), 128, np.uint8)
        for size in sorted({size for size in batch_sizes if 1 <= size <= self.free_slots}):
            ids = [f"warm-up-{size}-{row}" for row in range(size)]
            opened = []
            try:
                for session_id in ids:
                    self.open_session(session_id, image, "", seed=0)
                    opened.append(session_id)
                for _ in range(blocks):
                    for session_id, block in self.denoise([BlockRequest(s, frozenset("w")) for s in ids]).items():
                        if isinstance(block, Exception):
                            raise StageError(f"warm-up block of {session_id} failed: {block}") from block
                        block.decode()
            finally:
                for session_id in opened:
                    self.close_session(session_id)

    def shutdown(self) -> None:
        """Release what the executor started (its actors); the default has nothing to release."""

    def check_health(self) -> None:
        """Raise `StageError` when a stage can no longer run (health checks call it, from any
        thread); the default has nothing that can die apart from this process."""

    def gpu_memory(self) -> dict[str, dict[str, int]]:
        """The stages' latest CUDA memory readings: process (`GPU_MEMORY_STAGES`) -> kind
        (allocated, reserved) -> bytes; empty off the GPU. Read by the engine thread after each step."""
        return {}


GPU_MEMORY_STAGES = ("dit+vae", "dit", "vae")     # one process holding both stages; the Ray stage actors


def cuda_memory(device: torch.device) -> dict[str, int]:
    """This process's CUDA caching-allocator counters on `device` (no sync); empty off the GPU."""
    if device.type != "cuda":
        return {}
    return {"allocated": torch.cuda.memory_allocated(device), "reserved": torch.cuda.memory_reserved(device)}


class InProcessExecutor(Executor):
    """Both stages in this process, on the pipeline's device."""

    def __init__(self, pipeline: StreamingInference):
        self.pipeline, self.config = pipeline, pipeline.config
        self.dit = DiTStage(pipeline)
        device = pipeline.device
        self._vae_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    @property
    def free_slots(self) -> int:
        return self.dit.free_slots

    def open_session(self, session_id: str, image, prompt: str, seed: int) -> None:
        self.dit.open_session(session_id, image, prompt, seed)      # the session carries its VAE decoder

    def close_session(self, session_id: str) -> None:
        self.dit.close_session(session_id)

    def gpu_memory(self) -> dict[str, dict[str, int]]:
        memory = cuda_memory(self.pipeline.device)
        return {"dit+vae": memory} if memory else {}

    def denoise(self, requests: list[BlockRequest]) -> dict[str, DenoisedBlock | Exception]:
        output = self.dit.denoise(requests)
        if self._vae_stream is not None:
            # the latents are complete before the VAE's stream reads them. Wait for this (the DiT's)
            # stream only: a device-wide sync would also wait for the previous batch's decode
            torch.cuda.current_stream(self.pipeline.device).synchronize()
        blocks = {session_id: DenoisedBlock(first_frame, partial(self._decode, self.dit.sessions[session_id],
                                                                 output.latents[row]))
                  for row, (session_id, first_frame) in enumerate(output.first_frames.items())}
        return {**output.failed, **blocks}

    def _decode(self, session: Session, latents: torch.Tensor) -> np.ndarray:
        """Decode with the session's own decoder (bound at denoise time: a session closed and
        reopened under the same id meanwhile gets a new one). On the GPU, on the VAE's stream."""
        if self._vae_stream is None:
            return self.pipeline.decode(session, latents)
        with torch.cuda.stream(self._vae_stream):
            latents.record_stream(self._vae_stream)
            return self.pipeline.decode(session, latents)
