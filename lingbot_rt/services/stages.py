"""The two stages of serving, as plain objects: what runs where, whoever places them.

* `DiTStage` holds the DiT, its KV-cache pool, the text encoder, the I2V conditions and every
  session's stream state (poses, positions, noise generator); it plans and denoises one batch
  of blocks, each session at its own position.
* `VAEStage` holds one streaming VAE decoder per session and turns a batch's latents into
  frames.

`executor.InProcessExecutor` runs the DiT stage in the serving process (and decodes with the
pipeline's own per-session decoders); `ray_stages.RayExecutor` runs each stage in its own Ray
actor, latents going from one to the other over a `TensorQueue`. Sessions are named by the
scheduler's `session_id` on both stages.

Failure isolation: a block that cannot be planned (an unknown session, a bad action array) and
a decode that raises are reported for that session alone; an exception from the batched DiT
passes themselves propagates, and the caller drops the whole batch (its KV rows are suspect).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..model.controls import KEYS
from ..model.tiny_decoder import TinyDecoder, TinyStreamingDecoder
from ..model.vae import StreamingDecoder, WanVAE
from ..pipeline.streaming import BlockPlan, Session, StreamingInference, decode_block


@dataclass(frozen=True)
class BlockRequest:
    """One session's next block, as the scheduler asks for it."""

    session_id: str
    keys: frozenset[str]            # held through the whole block (read at its start), from controls.KEYS


@dataclass
class DiTOutput:
    """The DiT stage's answer to one batch of requests."""

    first_frames: dict[str, int]    # session_id -> video frame index of its block's first frame; the
                                    # sessions denoised, in the order of the latents' rows
    failed: dict[str, Exception]    # session_id -> why its block could not be planned (dropped alone)
    latents: torch.Tensor | None = None   # [len(first_frames), 16, block_frames, h, w]; None when no
                                          # block was denoised, or once sent on to the VAE stage


class DiTStage:
    """Sessions' stream state and the batched DiT passes, over one `StreamingInference`."""

    def __init__(self, pipeline: StreamingInference):
        self.pipeline = pipeline
        self.sessions: dict[str, Session] = {}

    @property
    def free_slots(self) -> int:
        return self.pipeline.free_slots

    def open_session(self, session_id: str, image, prompt: str, seed: int) -> None:
        """Encode the start image and prompt, claim a KV-cache row (`CapacityError` when none is free)."""
        if session_id in self.sessions:
            raise ValueError(f"session {session_id!r} is already open on the DiT stage")
        self.sessions[session_id] = self.pipeline.open_session(image, prompt, seed)

    def close_session(self, session_id: str) -> None:
        """Free the session's KV-cache row."""
        self.pipeline.close_session(self._session(session_id))
        del self.sessions[session_id]

    def _session(self, session_id: str) -> Session:
        if session_id not in self.sessions:
            raise ValueError(f"session {session_id!r} is not open on the DiT stage")
        return self.sessions[session_id]

    def _plan(self, request: BlockRequest) -> BlockPlan:
        session = self._session(request.session_id)
        _, num_actions = self.pipeline.actions_needed(session)
        row = np.array([key in request.keys for key in KEYS], np.float32)
        return self.pipeline.plan(session, np.tile(row, (num_actions, 1)))

    def denoise(self, requests: list[BlockRequest]) -> DiTOutput:
        """Plan every request (a bad one fails alone, touching no state), then denoise the
        planned blocks in one set of DiT passes."""
        plans, failed = {}, {}
        for request in requests:
            try:
                plans[request.session_id] = self._plan(request)
            except Exception as exc:               # noqa: BLE001 - isolate the session
                failed[request.session_id] = exc
        if not plans:
            return DiTOutput({}, failed)
        latents = self.pipeline.denoise([self.sessions[s] for s in plans], list(plans.values()))
        return DiTOutput({session_id: plan.first_frame for session_id, plan in plans.items()}, failed, latents)


class VAEStage:
    """One streaming decoder per session, over one VAE (or a release's tiny decoder)."""

    def __init__(self, vae: WanVAE | TinyDecoder):
        self.vae = vae.eval()
        self.decoders: dict[str, StreamingDecoder | TinyStreamingDecoder] = {}

    def open_session(self, session_id: str) -> None:
        if session_id in self.decoders:
            raise ValueError(f"session {session_id!r} is already open on the VAE stage")
        self.decoders[session_id] = self.vae.stream_decoder()

    def close_session(self, session_id: str) -> None:
        """Drop the session's decoder and its cached activations."""
        if self.decoders.pop(session_id, None) is None:
            raise ValueError(f"session {session_id!r} is not open on the VAE stage")

    def decode(self, session_ids: list[str], latents: torch.Tensor) -> dict[str, np.ndarray | Exception]:
        """Latents [B, 16, F, h, w], row i of session_ids[i] -> each session's uint8 frames
        [T, H, W, 3], or the exception its decode raised (the others decode on)."""
        if len(session_ids) != len(latents):
            raise ValueError(f"{len(session_ids)} session ids for {len(latents)} blocks of latents")
        frames: dict[str, np.ndarray | Exception] = {}
        for session_id, block in zip(session_ids, latents):
            try:
                if session_id not in self.decoders:
                    raise ValueError(f"session {session_id!r} is not open on the VAE stage")
                frames[session_id] = decode_block(self.decoders[session_id], block)
            except Exception as exc:               # noqa: BLE001 - each session has its own decoder
                frames[session_id] = exc
        return frames
