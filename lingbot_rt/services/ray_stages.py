"""The DiT stage and the VAE stage as two Ray actors, pipelined (`lingbot-rt serve --stages ray`).

    engine thread --denoise(requests)--> DiT actor (rank 0) --latents: TensorQueue--> VAE actor (rank 1)
    VAE thread    <-------------------- frames (Ray object store) --------------------------'

Ray places the actors and carries the small messages (requests, first frame indices, the
decoded uint8 frames); the latents go over torch.distributed point to point, as between
vLLM's workers: NCCL when each actor has a GPU of its own, gloo otherwise.

**Pipelining.** Per step the engine thread submits the DiT's `denoise` and the VAE's `decode`
together, then waits for the DiT alone: its answer (which blocks were planned) comes once
the latents are sent. The VAE receives them and decodes while the engine starts the next step,
so the DiT works on batch N + 1 while the VAE decodes batch N; the VAE's frames are fetched on
the scheduler's VAE thread. The hand-off is also the back-pressure: the DiT cannot send batch
N + 1 before the VAE, done with batch N, posts its receive. Every `denoise` sends exactly one
message (an empty one when the batch failed), so the paired `decode` never waits forever. Ray
runs one caller's calls to an actor in submission order, so the VAE's open and close of a
session line up with its decodes without the engine waiting for them.

**Placement** (`RayStagesConfig.num_gpus`): with two or more GPUs, one each, NCCL between them;
with one GPU, both actors share it (0.5 each) and the latents go through host memory by gloo
(NCCL cannot run two ranks on one GPU; ~0.6 MB per session and block at 480p); without GPUs,
CPU actors and gloo.

**Failures.** A block that cannot be planned or decoded fails its session alone, and an error
from the stage's own code (a bad start image, a full pool) reaches the caller as the stage
raised it, without Ray's wrapper. A dead actor (either) breaks the pair: both are killed and
every call raises `StageError` naming the stage, so each session ends with that message. They
are not restarted: a new actor has neither the KV cache nor the process group.

**GPU memory.** Each actor reports its CUDA allocator counters with every step's answer
(`gpu_memory`: the `dit` and `vae` series of `lingbot_gpu_memory_bytes`); nothing on the CPU.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import ray
import torch
import torch.distributed as dist
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from ..model.checkpoint import CheckpointError
from ..pipeline.release import load_release_frames_decoder
from ..pipeline.streaming import StreamConfig, StreamingInference
from .executor import DenoisedBlock, Executor, StageError, cuda_memory
from .stages import BlockRequest, DiTOutput, DiTStage, VAEStage
from .tensor_queue import TensorQueue

DIT_RANK, VAE_RANK = 0, 1


@dataclass(frozen=True)
class RayStagesConfig:
    """Resources of the two stage actors and what they load."""

    num_gpus: float | None = None        # per actor; None: 1 with >= 2 GPUs in the cluster, 0.5 with 1, else 0
    num_cpus: float = 1.0                # per actor (Ray sets the actor's thread count from it)
    dtype: torch.dtype | None = None     # the DiT's; None: bf16 on a GPU, fp32 on the CPU
    vae_dtype: torch.dtype | None = None # None: the DiT's
    text_device: str | None = None       # the text encoder's, in the DiT actor ("cpu" keeps umT5 off the GPU)
    start_timeout_s: float = 600.0       # for the actors to be placed and load their models

    def __post_init__(self):
        if self.num_gpus is not None and not 0 <= self.num_gpus <= 1:
            raise ValueError(f"num_gpus is per stage actor, in [0, 1]; got {self.num_gpus}")
        if self.num_cpus <= 0 or self.start_timeout_s <= 0:
            raise ValueError(f"num_cpus and start_timeout_s must be > 0, got {self.num_cpus}, {self.start_timeout_s}")

    def gpus_per_actor(self, cluster_gpus: float) -> float:
        if self.num_gpus is not None:
            return self.num_gpus
        return 1.0 if cluster_gpus >= 2 else 0.5 if cluster_gpus >= 1 else 0.0


class _StageWorker:
    """What both actors do: join the two-rank process group that carries the latents."""

    queue: TensorQueue

    def join(self, init_method: str, rank: int, backend: str, queue_device: str) -> None:
        device = torch.device(queue_device)
        if device.type == "cuda":              # the GPU Ray gave this actor, by index: the queue compares devices
            device = torch.device("cuda", torch.cuda.current_device())
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=2)
        self.queue = TensorQueue(peer=1 - rank, device=device)


class DiTWorker(_StageWorker):
    """The DiT stage's actor (rank 0): loads the release's DiT, text encoder and VAE (the VAE
    encodes the start images of the I2V condition)."""

    def __init__(self, release: str, config: StreamConfig, device: str, dtype: torch.dtype, text_device: str | None):
        pipeline = StreamingInference.from_release(release, config, device=device, dtype=dtype,
                                                   text_device=text_device)
        self.stage = DiTStage(pipeline)

    def stream_config(self) -> StreamConfig:
        return self.stage.pipeline.config

    def address(self) -> str:
        """Where the process group meets: a free port on this actor's node."""
        with socket.socket() as probe:
            probe.bind(("", 0))
            port = probe.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def open_session(self, session_id: str, image, prompt: str, seed: int) -> None:
        self.stage.open_session(session_id, image, prompt, seed)

    def close_session(self, session_id: str) -> None:
        self.stage.close_session(session_id)

    def denoise(self, requests: list[BlockRequest]) -> tuple[DiTOutput, dict[str, int]]:
        """Denoise, send the latents to the VAE actor, answer which blocks were made (and this
        actor's GPU memory)."""
        output = DiTOutput({}, {})
        try:
            output = self.stage.denoise(requests)
        finally:                           # the VAE actor waits for one message per batch, failed or not
            tensors = {} if output.latents is None else {"latents": output.latents.to(self.queue.device)}
            self.queue.put(tensors, {"session_ids": list(output.first_frames)})
        output.latents = None
        return output, cuda_memory(self.stage.pipeline.device)


class VAEWorker(_StageWorker):
    """The VAE stage's actor (rank 1): the release's VAE (or its tiny decoder: `decoder`), one
    streaming decoder per session."""

    def __init__(self, release: str, device: str, dtype: torch.dtype, decoder: str = "vae"):
        self.device = torch.device(device)
        self.stage = VAEStage(load_release_frames_decoder(release, decoder, device=device, dtype=dtype))

    def open_session(self, session_id: str) -> None:
        self.stage.open_session(session_id)

    def close_session(self, session_id: str) -> None:
        self.stage.close_session(session_id)

    def decode(self) -> tuple[dict[str, np.ndarray | Exception], dict[str, int]]:
        """Receive the DiT's next batch and decode it: session_id -> frames, or its error (and
        this actor's GPU memory)."""
        tensors, meta = self.queue.get()
        if not tensors:
            return {}, cuda_memory(self.device)
        return self.stage.decode(meta["session_ids"], tensors["latents"].to(self.device)), cuda_memory(self.device)


def _last_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


class RayExecutor(Executor):
    """The two stage actors, on a running Ray (`ray.init()` first, or join a cluster)."""

    def __init__(self, release: str | Path, config: StreamConfig = StreamConfig(),
                 ray_config: RayStagesConfig = RayStagesConfig()):
        if not ray.is_initialized():
            raise RuntimeError("RayExecutor needs a running Ray: call ray.init() first")
        root = Path(release)
        if not root.is_dir():
            raise CheckpointError(f"release root {root} is not a directory")
        self._broken: StageError | None = None
        self._open: set[str] = set()
        self._memory: dict[str, dict[str, int]] = {}       # stage -> its latest report (`gpu_memory`)
        gpus = ray_config.gpus_per_actor(ray.cluster_resources().get("GPU", 0))
        device = "cuda" if gpus > 0 else "cpu"
        nccl = gpus >= 1                   # a GPU each: NCCL; a shared GPU or none: gloo through host memory
        dtype = ray_config.dtype or (torch.bfloat16 if gpus > 0 else torch.float32)
        actor = dict(num_cpus=ray_config.num_cpus, num_gpus=gpus, max_restarts=0)
        self.dit = ray.remote(DiTWorker).options(**actor).remote(str(root), config, device, dtype,
                                                                  ray_config.text_device)
        self.vae = ray.remote(VAEWorker).options(**actor).remote(str(root), device, ray_config.vae_dtype or dtype,
                                                                config.decoder)
        try:
            init_method = self._get(self.dit.address.remote(), "DiT", ray_config.start_timeout_s)   # loaded
            self._get(self.vae.__ray_ready__.remote(), "VAE", ray_config.start_timeout_s)
        except GetTimeoutError:
            self.shutdown()
            raise StageError(f"the stage actors did not start within {ray_config.start_timeout_s:g} s: does the "
                             f"cluster have {ray_config.num_cpus:g} CPU and {gpus:g} GPU free for each of "
                             "two actors (ray status), or do the models take longer to load?") from None
        backend, queue_device = ("nccl", device) if nccl else ("gloo", "cpu")
        self._get([self.dit.join.remote(init_method, DIT_RANK, backend, queue_device),
                   self.vae.join.remote(init_method, VAE_RANK, backend, queue_device)], "DiT or VAE")
        self.config = self._get(self.dit.stream_config.remote(), "DiT")

    # ---- Executor ------------------------------------------------------------------------
    @property
    def free_slots(self) -> int:
        return self.config.max_sessions - len(self._open)

    def open_session(self, session_id: str, image, prompt: str, seed: int) -> None:
        self._check()
        self._get(self.dit.open_session.remote(session_id, image, prompt, seed), "DiT")
        self.vae.open_session.remote(session_id)      # runs before this session's first decode
        self._open.add(session_id)

    def close_session(self, session_id: str) -> None:
        if session_id not in self._open:
            raise ValueError(f"session {session_id!r} is not open")
        self._open.discard(session_id)
        if self._broken is None:                       # ordered after the session's pending calls
            self.dit.close_session.remote(session_id)
            self.vae.close_session.remote(session_id)

    def denoise(self, requests: list[BlockRequest]) -> dict[str, DenoisedBlock | Exception]:
        self._check()
        denoised = self.dit.denoise.remote(requests)
        decoded = self.vae.decode.remote()            # submitted before waiting: it receives this batch
        output, self._memory["dit"] = self._get(denoised, "DiT")
        blocks = {session_id: DenoisedBlock(first_frame, partial(self._frames, decoded, session_id))
                  for session_id, first_frame in output.first_frames.items()}
        return {**output.failed, **blocks}

    def shutdown(self) -> None:
        for actor in (self.dit, self.vae):
            ray.kill(actor)

    def gpu_memory(self) -> dict[str, dict[str, int]]:
        return {stage: memory for stage, memory in list(self._memory.items()) if memory}   # list: atomic

    def check_health(self, timeout_s: float = 1.0) -> None:
        """Raise `StageError` if an actor has died. A ping queues behind the actor's running
        step, so one that does not answer within `timeout_s` counts as busy, not dead."""
        self._check()
        pings = {self.dit.__ray_ready__.remote(): "DiT", self.vae.__ray_ready__.remote(): "VAE"}
        answered, _ = ray.wait(list(pings), num_returns=len(pings), timeout=timeout_s)
        for ref in answered:
            self._get(ref, pings[ref])

    # ---- Ray calls -----------------------------------------------------------------------
    def _frames(self, decoded: ray.ObjectRef, session_id: str) -> np.ndarray:
        frames, self._memory["vae"] = self._get(decoded, "VAE")
        frames = frames[session_id]
        if isinstance(frames, Exception):
            raise frames
        return frames

    def _check(self) -> None:
        if self._broken is not None:
            raise self._broken

    def _get(self, refs, stage: str, timeout: float | None = None):
        """ray.get, with the stage's own exceptions unwrapped and a dead actor made a StageError."""
        try:
            return ray.get(refs, timeout=timeout)
        except RayActorError as exc:
            if self._broken is None:
                what = "failed to start" if exc.actor_init_failed else "died"
                self._broken = StageError(f"the {stage} stage's Ray actor {what}: {_last_line(exc)}")
                self.shutdown()
            raise self._broken from exc
        except RayTaskError as exc:
            if exc.cause is None:
                raise
            raise exc.cause from exc
