"""Memory plan of DMD distillation at full size: per-GPU bytes of the teacher, critic and
student, their optimisers, the student's rollout KV cache and the activations, counted
exactly from the model definitions, and a dry run of FSDP2 on fake tensors that checks it.

    lingbot-rt distill memory-plan --config lingbot-14b --gpus 8 --gpu-gb 80 --out plan.json
    lingbot-rt distill memory-plan --config lingbot-14b --sp 8 --dry-run     # + the FSDP2 dry run
    python -m lingbot_rt.distillation.memory_plan --config tiny --gpus 4 --dry-run

What a DMD step holds (Self-Forcing `trainer/distillation.py`; reference §C):
* teacher (real score): frozen, bidirectional. LingBot-World is Wan2.2's two-expert MoE (high
  noise for t >= 947); DMD draws t over [20, 980], so both experts stay resident (§I.5). Each
  expert is one 18,544,332,864-parameter DiT (the "18.5B": 14.29B Wan2.2 expert + 4.26B
  camera layers), stored bf16: nothing updates it, so it needs no fp32 master.
* critic (fake score) and student: one such DiT each, trained with AdamW. Default precision:
  fp32 master weights and gradients, bf16 compute (FSDP2 MixedPrecisionPolicy(param bf16,
  reduce fp32), as Self-Forcing's FSDP MixedPrecision): 4 + 4 + 8 bytes per parameter.
  `zero_grad(set_to_none=True)` before each update: only one model holds gradients at a time.
* a step is two phases, never overlapping: generator (student rollout with gradient at the
  exit step, teacher CFG + critic forwards without gradient, backward) and critic (rollout
  without gradient, critic forward and backward). The plan's peak is the larger phase.
* text features: precomputed once per prompt (umT5-XXL, 5.7B params, is never on the GPUs);
  the image condition y and camera rays: precomputed latents, so no VAE in the step.

Activations are counted per DiT block from the saved-for-backward tensors of `dit.py`
(`block_saved_bytes`), which `saved_bytes` measures with autograd's saved-tensor hooks; the
tests check the count against the hooks on the tiny config. Scope: 16-bit weights (the
training setting; fp32 weights alias some casts and the count differs). Transients (working
sets without gradient, one block's recompute + backward) are measured at full size on fake
tensors (`measure_transients`). `dry_run` runs the whole step under FSDP2 on fake tensors.
Results and findings: benchmarks/results/distill_memory_plan.md.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import warnings
from dataclasses import asdict, dataclass, replace

import torch

from ..model.config import CacheConfig, ModelConfig, model_config
from ..model.dit import CausalWanModel
from ..model.kv_cache import KVCache
from ..model.sampler import FewStepSchedule
from ..world.latents import ConditionedClips
from .config import STRATEGIES
from .dmd import Conditions, critic_loss, dmd_loss
from .self_forcing import student_rollout
from .sharding import shard_for_training

GIB = 2 ** 30
MASTER_BYTES = {"fp32": (4, 4, 8), "bf16": (2, 2, 8)}   # weight, grad, AdamW (exp_avg + exp_avg_sq, fp32)
VAE_STRIDE = 8
EMA_PLACES = ("cpu", "gpu", "none")


@dataclass(frozen=True)
class PlanConfig:
    """One DMD run's shape. Sizes per GPU follow from it and a strategy (`plan_memory`)."""

    config: str = "lingbot-14b"
    num_gpus: int = 8
    gpu_gib: float = 80.0          # an "80 GB" H100 has 80 GiB (81,559 MiB in nvidia-smi)
    reserve_gib: float = 4.0       # CUDA context, NCCL buffers, allocator fragmentation
    height: int = 480
    width: int = 832
    num_frames: int = 21           # latent frames of the DMD window (81 video frames)
    block_frames: int = 3
    sink_frames: int = 3
    window_frames: int = 15
    batch: int = 1                 # clips per data-parallel rank
    sp: int = 1                    # sequence-parallel (Ulysses) degree: heads split over sp GPUs
    teacher_experts: int = 2       # 2: the MoE teacher, both experts resident; 1: one expert
    master: str = "fp32"           # "fp32": fp32 weights + grads; "bf16": bf16 weights + grads, fp32 AdamW
    cfg_batched: bool = True       # teacher cond + uncond in one forward (batch 2B), as dmd.py does
    ema: str = "cpu"               # the student's fp32 EMA: "cpu" (Self-Forcing's EMA_FSDP), "gpu", "none"
    num_layers: int | None = None  # fewer blocks than the named config (short dry runs)

    def __post_init__(self):
        model_config(self.config)          # unknown names raise ValueError
        ints = {"num_gpus": self.num_gpus, "num_frames": self.num_frames, "block_frames": self.block_frames,
                "batch": self.batch, "sp": self.sp, "teacher_experts": self.teacher_experts,
                "num_layers": 1 if self.num_layers is None else self.num_layers}
        for name, value in ints.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.gpu_gib <= 0 or self.reserve_gib < 0:
            raise ValueError(f"gpu_gib must be > 0 and reserve_gib >= 0, got {self.gpu_gib}, {self.reserve_gib}")
        if self.ema not in EMA_PLACES:
            raise ValueError(f"ema must be one of {EMA_PLACES}, got {self.ema!r}")
        if self.master not in MASTER_BYTES:
            raise ValueError(f"master must be one of {sorted(MASTER_BYTES)}, got {self.master!r}")
        if self.num_gpus % self.sp or self.model.num_heads % self.sp:
            raise ValueError(f"sp {self.sp} must divide num_gpus ({self.num_gpus}) and num_heads "
                             f"({self.model.num_heads})")
        if self.height % (2 * VAE_STRIDE) or self.width % (2 * VAE_STRIDE):
            raise ValueError(f"{self.height}x{self.width} is not a multiple of 16 (VAE stride 8 x patch 2)")

    @property
    def model(self) -> ModelConfig:
        cfg = model_config(self.config)
        return cfg if self.num_layers is None else cfg.replace(num_layers=self.num_layers)

    def grid(self) -> tuple[int, int, int]:
        """Patch grid (F, h, w): 480x832 -> latent 60x104 -> patches 30x52 = 1560 per frame."""
        _, p_h, p_w = self.model.patch_size
        return self.num_frames, self.height // VAE_STRIDE // p_h, self.width // VAE_STRIDE // p_w

    @property
    def num_tokens(self) -> int:
        f, h, w = self.grid()
        return f * h * w


# ---- parameters ----------------------------------------------------------------------------

def build_on_meta(cfg: ModelConfig) -> CausalWanModel:
    """The DiT with every parameter on the meta device: shapes only, no memory."""
    with torch.device("meta"):
        return CausalWanModel(cfg)


def fsdp_shard_numel(model: torch.nn.Module, num_shards: int) -> int:
    """Elements rank 0 holds under FSDP2: each parameter split on dim 0 as torch.chunk does
    (ceil(rows / N) rows on the first ranks), so rank 0 holds the most."""
    total = 0
    for p in model.parameters():
        rows = p.shape[0] if p.dim() else 1
        total += math.ceil(rows / num_shards) * (p.numel() // max(rows, 1))
    return total


def count_parameters(pc: PlanConfig) -> dict:
    """Parameter counts of the three networks (teacher = `teacher_experts` DiTs), built on meta."""
    from ..model.text_encoder import UMT5Encoder, t5_config
    from ..model.vae import WanVAE, vae_config
    dit = build_on_meta(pc.model)
    block = dit.blocks[0]
    with torch.device("meta"):
        text_params = UMT5Encoder(t5_config("umt5-xxl")).num_params()
        vae_params = sum(p.numel() for p in WanVAE(vae_config("wan2.1")).parameters())
    per_network = dit.num_params()
    block_params = sum(p.numel() for p in block.parameters())
    return {
        "per_network": per_network,
        "tensors_per_network": len(dit.state_dict()),
        "per_block": block_params,
        "outside_blocks": per_network - pc.model.num_layers * block_params,
        "teacher": pc.teacher_experts * per_network,
        "critic": per_network,
        "student": per_network,
        "fsdp_rank0_per_network": fsdp_shard_numel(dit, pc.num_gpus),
        "text_encoder_umt5_xxl": text_params,
        "vae_wan2.1": vae_params,
    }


# ---- activations ---------------------------------------------------------------------------

def block_saved_bytes(cfg: ModelConfig, num_tokens: int, *, batch: int = 1, cache_tokens: int = 0,
                      masked: bool = False, weight_bytes: int = 2) -> dict[str, int]:
    """Bytes one `DiTBlock.forward` saves for backward, its inputs (x, e0, rotary, control,
    text K/V) excluded, by kind. num_tokens: the block's tokens per sample; cache_tokens: keys
    read from a KV cache (streaming rollout), whose K and V enter attention concatenated with
    the block's own; masked: the cache has empty slots (a float key mask is saved).
    Each count names the tensors of `dit.py` (bf16 weights, fp32 residual as upstream)."""
    if weight_bytes != 2:
        raise ValueError("the count is for 16-bit weights (bf16/fp16 training); fp32 weights alias casts")
    d, f, n = cfg.dim, cfg.ffn_dim, batch * num_tokens
    control = cfg.control_type is not None
    # fp32 [L, dim]: norm1 out, 1+scale_msa, RMSNorm xf (q, k, cross q), attention out .float(),
    # norm3 in, norm2 in, norm2 out, 1+scale_ffn, ffn out .float(); + FiLM's 1+scale and x.
    fp32_rows = 11 + 2 * control
    # 16-bit [L, dim]: q/k/v linear inputs (three separate casts), normalised q, k, cross q,
    # attention q/k/v/out, cross q/out and q input, ffn input; + FiLM's silu in/out and h.
    half_rows = 14 + 3 * control
    return {
        "modulation [L,6,dim] fp32": n * 6 * d * 4,
        "fp32 [L,dim] copies": n * fp32_rows * d * 4,
        "bf16 [L,dim] tensors": n * half_rows * d * weight_bytes,
        "ffn hidden (gelu in, out)": n * 2 * f * weight_bytes,
        "norm statistics": n * 9 * 4,
        "attention logsumexp": n * 2 * cfg.num_heads * 4,
        "norm3 affine fp32": 2 * d * 4,
        "cached K,V in attention": batch * 2 * cache_tokens * d * weight_bytes,
        "key mask": batch * (cache_tokens + num_tokens) * weight_bytes if masked else 0,
    }


def outside_saved_bytes(cfg: ModelConfig, grid: tuple[int, int, int], *, batch: int = 1,
                        text_in_cache: bool = False, weight_bytes: int = 2) -> dict[str, int]:
    """Bytes a whole-model forward saves outside the blocks' own internals: embeddings, head,
    the per-block text K/V (unless read from a KV cache) and the inputs every block shares."""
    d, w = cfg.dim, weight_bytes
    f, h, wd = grid
    n = batch * f * h * wd
    text, layers = batch * cfg.text_len, cfg.num_layers
    out = {
        "block inputs x fp32": layers * n * d * 4,
        "rotary cos/sin": batch * f * h * wd * cfg.head_dim // 2 * 4 * 2,
        "patch embedding input": n * cfg.in_dim * cfg.patch_volume * w,
        # time MLP on one t per sample; the fp32 weight copies of `_linear_fp32` are saved
        "time embedding": batch * (cfg.freq_dim + 4 * d) * 4 + 7 * d * d * 4,
        "head": n * (4 * d * 4 + 8) + cfg.patch_volume * cfg.out_dim * d * 4,
    }
    if cfg.control_type is not None:
        out["control embedding"] = n * (cfg.control_channels * cfg.patch_volume + 4 * d) * w
    if text_in_cache:
        # streaming: where the block's K/V are placed in the cache ([B, 1] rows, [B, tokens] positions)
        out["cache slot indices"] = batch * (1 + f * h * wd) * 8
    else:
        out["text embedding"] = text * (cfg.text_dim + 3 * d) * w
        # per block: cross-attention K, V (saved by attention) and norm_k's xf, rsqrt, output
        out["text K,V per block"] = layers * text * (2 * d * w + d * 4 + 4 + d * w)
    return out


def saved_bytes(fn, *args, exclude: tuple[torch.Tensor, ...] = (), **kwargs) -> tuple[int, object]:
    """Run fn(*args, **kwargs) and measure the bytes autograd saves for backward: distinct
    storages seen by `saved_tensors_hooks`, minus those of `exclude` (parameters, caches).
    Returns (bytes, fn's result)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn(*args, **kwargs)
    return sum(seen.values()), result


def rollout_calls(pc: PlanConfig) -> list[tuple[int, int, bool]]:
    """(block tokens, cached keys, masked) of each gradient-carrying `forward_block` of one
    rollout. The batch's rollouts advance together, so attention reads the filled prefix of
    the cache unmasked (`CacheView.read_tokens`): each call saves the K, V of the committed
    frames it attends (up to sink + window) once per layer."""
    _, h, w = pc.grid()
    cache_frames = pc.sink_frames + pc.window_frames
    calls = []
    for start in range(0, pc.num_frames, pc.block_frames):
        frames = min(pc.block_frames, pc.num_frames - start)
        calls.append((frames * h * w, min(start, cache_frames) * h * w, False))
    return calls


def activation_bytes(pc: PlanConfig, checkpointing: bool) -> dict[str, int]:
    """Per GPU, counted: what the student's rollout (generator phase) and the critic's forward
    (critic phase) keep for backward. Checkpointed blocks keep only their inputs."""
    cfg, sp, b = pc.model, pc.sp, pc.batch
    _, h, w = pc.grid()

    def whole(terms_block, terms_out):
        inside = 0 if checkpointing else cfg.num_layers * sum(terms_block.values())
        return (inside + sum(terms_out.values())) // sp

    critic = whole(block_saved_bytes(cfg, pc.num_tokens, batch=b), outside_saved_bytes(cfg, pc.grid(), batch=b))
    student = sum(whole(block_saved_bytes(cfg, tokens, batch=b, cache_tokens=cached, masked=masked),
                        outside_saved_bytes(cfg, (tokens // (h * w), h, w), batch=b, text_in_cache=True))
                  for tokens, cached, masked in rollout_calls(pc))
    # the cross-attention saves its text K, V: views of the cache's text rows, whose storage
    # (every layer) the graph therefore keeps after the cache itself is dropped
    text_cache = b * 2 * cfg.num_layers * cfg.text_len * cfg.dim * 2 // sp
    return {"student": student + text_cache, "critic": critic}


def _peak_above_start(fn, *tracked) -> int:
    """Peak bytes above the start of fn() run under MemTracker on fake tensors; `tracked`:
    modules and tensors made before (weights, inputs)."""
    from torch.distributed._tools.mem_tracker import MemTracker
    tracker = MemTracker()
    tracker.track_external(*tracked)
    with tracker:
        (start,) = tracker.get_tracker_snapshot("current").values()
        fn()
    (peak,) = tracker.get_tracker_snapshot("peak").values()
    return peak["Total"] - start["Total"]


@functools.cache
def measure_transients(cfg: ModelConfig, grid: tuple[int, int, int], batch: int, cache_frames: int) -> dict[str, int]:
    """Transient bytes measured at full size on fake tensors (MemTracker; no memory is used):
    * model_forward: a whole forward without gradient of a one-block model at `grid` (the
      embeddings, one block and the head; more blocks add nothing without gradient);
    * block_call: one `forward_block` without gradient of a one-block model against a full
      cache of `cache_frames` frames (the block written into its slots, the rows read in place);
    * block_backward: forward with gradient + backward of one block at `grid`'s tokens, above
      its inputs: what a checkpointed block recomputes, and its backward's gradients;
    * backward_extra: that peak minus what the forward saved (backward without checkpointing,
      whose saved tensors are counted already).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ..model.rope import rotary_for_frames
    f, h, w = grid
    tokens = f * h * w
    with FakeTensorMode(allow_non_fake_inputs=True), _views_outside_fake_mode():
        model = _build(cfg.replace(num_layers=1), torch.bfloat16)   # MemTracker hooks need requires_grad
        lat = (batch, cfg.out_dim, f, 2 * h, 2 * w)
        x, y = torch.randn(lat), torch.randn(batch, cfg.in_dim - cfg.out_dim, *lat[2:])
        control = torch.randn(batch, cfg.control_channels, *lat[2:]) if cfg.control_type else None
        context, t = torch.randn(batch, cfg.text_len, cfg.text_dim), torch.full((batch,), 500.0)
        inputs = tuple(v for v in (x, y, control, context, t) if v is not None)
        with torch.no_grad():
            model_forward = _peak_above_start(lambda: model(x, t, context, y, control), model, *inputs)
            cache = model.new_cache(CacheConfig(block_frames=f, sink_frames=0, window_frames=cache_frames),
                                    batch, (2 * h, 2 * w), dtype=torch.bfloat16)
            slots = list(range(batch))
            model.start_sessions(cache, slots, context)
            cache.advance(slots, cache_frames)
            block_call = _peak_above_start(lambda: model.forward_block(x, t, cache, slots, y=y, control=control),
                                           model, cache.k, cache.v, cache.text_k, cache.text_v, *inputs)
        block = model.blocks[0]
        hidden = torch.randn(batch, tokens, cfg.dim, requires_grad=True)
        e0 = torch.randn(batch, 1, 6, cfg.dim).expand(batch, tokens, 6, cfg.dim)
        rotary = rotary_for_frames(torch.arange(f).expand(batch, -1), (h, w), cfg.head_dim)
        text_k, text_v = (torch.randn(batch, cfg.text_len, cfg.num_heads, cfg.head_dim, dtype=torch.bfloat16)
                          for _ in range(2))
        ctrl = torch.randn(batch, tokens, cfg.dim, dtype=torch.bfloat16) if cfg.control_type else None
        block_in = tuple(v for v in (hidden, e0, rotary.cos, rotary.sin, text_k, text_v, ctrl) if v is not None)

        def forward_backward():
            out = block(hidden, e0, rotary, text_k, text_v, ctrl)
            out.backward(torch.ones_like(out))
        block_backward = _peak_above_start(forward_backward, block, *block_in)
    saved = sum(block_saved_bytes(cfg, tokens, batch=batch).values())
    return {"model_forward": model_forward, "block_call": block_call, "block_backward": block_backward,
            "backward_extra": block_backward - saved}


# ---- the plan ------------------------------------------------------------------------------

def weight_bytes(pc: PlanConfig, params: dict, strategy: str, teacher_sharded: bool = True,
                 offload: bool = False) -> dict:
    """Per GPU: resident weights and optimizer states, one model's gradients, the strategy's
    communication buffers, and the host bytes per rank (the EMA on the CPU; offload: FSDP2's
    CPUOffloadPolicy on critic and student, whose sharded fp32 weights, gradients and AdamW
    states then live in host memory and whose optimizer steps there; FSDP only)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if offload and strategy != "fsdp":
        raise ValueError("offload needs the fsdp strategy")
    fsdp, p = strategy == "fsdp", params["per_network"]
    w_bytes, g_bytes, opt_bytes = MASTER_BYTES[pc.master]

    def per_gpu(numel: int, bytes_each: int, sharded: bool = fsdp) -> int:
        # rank 0 holds ceil(rows / N) rows of every parameter (`fsdp_shard_numel`)
        return numel * bytes_each if not sharded else params["fsdp_rank0_per_network"] * bytes_each * numel // p

    on_gpu, ema = 0 if offload else 1, per_gpu(p, 4)
    resident = {
        "teacher weights (bf16, frozen)": per_gpu(params["teacher"], 2, fsdp and teacher_sharded),
        "student weights": on_gpu * per_gpu(p, w_bytes), "student AdamW states": on_gpu * per_gpu(p, opt_bytes),
        "critic weights": on_gpu * per_gpu(p, w_bytes), "critic AdamW states": on_gpu * per_gpu(p, opt_bytes),
        "student EMA (fp32)": ema if pc.ema == "gpu" else 0,
    }
    if fsdp:   # two blocks gathered (current + prefetch), the running model's root unit
        comms = {"FSDP all-gather (bf16)": 2 * params["per_block"] * 2 + params["outside_blocks"] * 2,
                 "FSDP reduce-scatter (bf16 grad + fp32)": params["per_block"] * (2 + 4)}
    else:      # DDP: fp32 masters run through bf16 copies (autocast's weight cache)
        comms = {"bf16 compute copies of weights": 2 * p * 2 if pc.master == "fp32" else 0}
    host = (2 * per_gpu(p, w_bytes + g_bytes + opt_bytes) if offload else 0) + (ema if pc.ema == "cpu" else 0)
    return {"resident": resident, "grads": on_gpu * per_gpu(p, g_bytes), "comms": comms, "host": host}


def stage_bytes(pc: PlanConfig, checkpointing: bool, grads: int) -> dict[str, dict[str, dict[str, int]]]:
    """Per phase, per stage: what the stage holds beyond the resident weights. The generator's
    rollout builds its saved activations while the cache lives; with checkpointing the cache
    outlives the rollout (the recomputed blocks re-read it in backward), without it the saved
    tensors are copies and the cache goes. Gradients exist from the backward on. Transients
    are measured (`measure_transients`); `grads`: the trained model's gradient bytes."""
    cfg, sp = pc.model, pc.sp
    f, h, w = pc.grid()
    cache_frames = pc.sink_frames + pc.window_frames
    clip = measure_transients(cfg, (f, h, w), pc.batch, cache_frames)
    block = measure_transients(cfg, (pc.block_frames, h, w), pc.batch, cache_frames)
    teacher = measure_transients(cfg, (f, h, w), (2 if pc.cfg_batched else 1) * pc.batch, cache_frames)
    act, kv = activation_bytes(pc, checkpointing), kv_cache_bytes(pc)
    block_kv = 2 * pc.batch * cache_frames * h * w * cfg.dim * 2   # cached K, V a recomputed call saves
    kept_kv = {"student KV cache (kept for the recompute)": kv} if checkpointing else {}
    student = {"student saved activations": act["student"]}
    critic = {"critic saved activations": act["critic"]}
    rollout = {"student KV cache": kv, "transient: one rollout block call": block["block_call"] // sp}
    return {
        "generator": {
            "rollout": {**student, **rollout},
            "teacher forward (CFG)": {**student, **kept_kv,
                                      "transient: teacher forward": teacher["model_forward"] // sp},
            "backward": {**student, **kept_kv, "student grads": grads, "transient: backward of one block":
                         (block["block_backward"] + block_kv if checkpointing else block["backward_extra"]) // sp}},
        "critic": {
            "rollout": rollout,
            "critic forward": {**critic, "transient: critic forward": clip["model_forward"] // sp},
            "backward": {**critic, "critic grads": grads, "transient: backward of one block":
                         (clip["block_backward"] if checkpointing else clip["backward_extra"]) // sp}}}


def phase_bytes(pc: PlanConfig, params: dict, strategy: str, checkpointing: bool,
                teacher_sharded: bool = True, offload: bool = False) -> dict:
    """Per-GPU bytes of the two phases of a DMD step: the resident parts and what the phase's
    worst stage holds (saved activations, cache, gradients, its transient)."""
    weights = weight_bytes(pc, params, strategy, teacher_sharded, offload)
    base = {**weights["resident"], **weights["comms"], "inputs (latents, y, rays, text features)": input_bytes(pc)}
    phases = {}
    for name, stages in stage_bytes(pc, checkpointing, weights["grads"]).items():
        totals = {stage: sum(base.values()) + sum(held.values()) for stage, held in stages.items()}
        worst = max(totals, key=totals.get)
        phases[name] = {"components": {**base, **stages[worst]}, "peak_stage": worst, "total": totals[worst],
                        "stages": totals, "host_bytes_per_rank": weights["host"]}
    return phases


def kv_cache_bytes(pc: PlanConfig, dtype_bytes: int = 2) -> int:
    """The student's rollout cache per GPU: self-attention K, V over sink + window frames and
    the text K, V of every layer, bf16, heads split over sp."""
    cfg = pc.model
    _, h, w = pc.grid()
    frames = pc.sink_frames + pc.window_frames
    per_sample = 2 * cfg.num_layers * (frames * h * w + cfg.text_len) * cfg.dim * dtype_bytes
    return pc.batch * per_sample // pc.sp


def input_bytes(pc: PlanConfig) -> int:
    """One step's conditioning per GPU: noise/latents, y (20 ch), rays, text features (fp32)."""
    cfg = pc.model
    f, h, w = pc.grid()
    cells = f * h * w * cfg.patch_volume
    channels = 2 * cfg.out_dim + (cfg.in_dim - cfg.out_dim) + (cfg.control_channels if cfg.control_type else 0)
    return pc.batch * (cells * channels + 2 * cfg.text_len * cfg.text_dim) * 4


def scenarios(strategies=STRATEGIES) -> list[dict]:
    """The compared layouts: each strategy with and without activation checkpointing, and
    FSDP with the teacher replicated instead of sharded."""
    out = [{"strategy": s, "checkpointing": ac, "teacher_sharded": True, "offload": False}
           for s in strategies for ac in (False, True)]
    if "fsdp" in strategies:
        out += [{"strategy": "fsdp", "checkpointing": True, "teacher_sharded": False, "offload": False},
                {"strategy": "fsdp", "checkpointing": True, "teacher_sharded": True, "offload": True}]
    return out


def plan_memory(pc: PlanConfig, strategies=STRATEGIES) -> dict:
    """The plan: parameter counts, sizes, and per scenario the per-GPU bytes of both phases,
    the peak and whether it fits in gpu_gib - reserve_gib."""
    params = count_parameters(pc)
    budget = int((pc.gpu_gib - pc.reserve_gib) * GIB)
    rows = []
    for sc in scenarios(strategies):
        phases = phase_bytes(pc, params, sc["strategy"], sc["checkpointing"], sc["teacher_sharded"], sc["offload"])
        peak = max(p["total"] for p in phases.values())
        rows.append({**sc, "phases": phases, "peak_bytes": peak, "fits": peak <= budget})
    return {"plan": asdict(pc), "grid": pc.grid(), "tokens": pc.num_tokens, "params": params,
            "kv_cache_bytes": kv_cache_bytes(pc), "budget_bytes": budget, "frozen_extras": frozen_extras(pc, params),
            "scenarios": rows}


def frozen_extras(pc: PlanConfig, params: dict) -> dict[str, int]:
    """Per-GPU bytes of the frozen parts the plan keeps off the GPUs, if they were on them.
    The DMD step needs prompt features and the image latent only, both precomputed once."""
    text, vae = params["text_encoder_umt5_xxl"], params["vae_wan2.1"]
    return {"umT5-XXL bf16 resident": 2 * text, "umT5-XXL bf16 FSDP-sharded": 2 * math.ceil(text / pc.num_gpus),
            "umT5-XXL features per prompt (512 x 4096 bf16)": 512 * 4096 * 2, "Wan2.1 VAE bf16": 2 * vae}


def _name(sc: dict) -> str:
    return (sc["strategy"] + ("+AC" if sc["checkpointing"] else "")
            + ("" if sc["teacher_sharded"] else " T-repl") + (" +offload" if sc["offload"] else ""))


def format_table(plan: dict) -> str:
    """Markdown tables, GiB per GPU: one per phase, a column per scenario, then the verdicts."""
    rows, pc = plan["scenarios"], plan["plan"]
    lines = [(f"{pc['config']}: {plan['params']['per_network']:,} params per DiT, teacher "
              f"{pc['teacher_experts']} expert(s); {pc['num_gpus']} GPUs x {pc['gpu_gib']:g} GiB "
              f"(budget {plan['budget_bytes'] / GIB:.1f} GiB after a {pc['reserve_gib']:g} GiB reserve); "
              f"{pc['height']}x{pc['width']}, {pc['num_frames']} latent frames = {plan['tokens']:,} tokens, "
              f"batch {pc['batch']} per rank, sp {pc['sp']}, master {pc['master']}, EMA on {pc['ema']}"), ""]
    for phase in ("generator", "critic"):
        names: list[str] = []
        for sc in rows:
            names += [k for k in sc["phases"][phase]["components"] if k not in names]
        lines += [f"{phase} phase (GiB per GPU) | " + " | ".join(_name(sc) for sc in rows),
                  "---|" + "---:|" * len(rows)]
        for key in names:
            cells = [sc["phases"][phase]["components"].get(key) for sc in rows]
            lines.append(key + " | " + " | ".join("-" if c is None else f"{c / GIB:.2f}" for c in cells))
        lines += ["**total** | " + " | ".join(f"**{sc['phases'][phase]['total'] / GIB:.2f}**" for sc in rows), ""]
    extras = ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in plan["frozen_extras"].items())
    lines += [f"not on the GPUs (precomputed instead): {extras}", "",
              "per GPU | " + " | ".join(_name(sc) for sc in rows), "---|" + "---:|" * len(rows),
              "peak (GiB) | " + " | ".join(f"{sc['peak_bytes'] / GIB:.1f}" for sc in rows),
              "fits | " + " | ".join("yes" if sc["fits"] else "no" for sc in rows),
              "host GiB per rank | " + " | ".join(f"{sc['phases']['critic']['host_bytes_per_rank'] / GIB:.1f}"
                                                  for sc in rows)]
    return "\n".join(lines)


# ---- dry run: FSDP2 on fake tensors --------------------------------------------------------

def _build(cfg: ModelConfig, dtype: torch.dtype) -> CausalWanModel:
    """A DiT made in `dtype` (`.to()` cannot swap fake parameters)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return CausalWanModel(cfg)
    finally:
        torch.set_default_dtype(previous)


def _tracked(tracker, fn) -> dict:
    """Run fn(mark) under the tracker. Returns the peak snapshot (one fake device) by category,
    and after each `mark(stage)` the live total and the peak so far: where the peak happens."""
    def totals(kind: str) -> dict[str, int]:
        (snapshot,) = tracker.get_tracker_snapshot(kind).values()
        return {getattr(k, "value", str(k)): int(v) for k, v in snapshot.items()}

    stages = []
    with tracker:
        fn(lambda stage: stages.append({"stage": stage, "live": totals("current")["Total"],
                                        "peak_so_far": totals("peak")["Total"]}))
    return {"peak": totals("peak"), "stages": stages}


def dry_run(pc: PlanConfig, *, checkpointing: bool = True) -> dict:
    """One DMD step of FSDP2-sharded models on fake tensors, measured by FSDPMemTracker.

    A fake process group of `num_gpus` ranks (collectives are no-ops; this process is rank 0)
    gives FSDP2 its real N-way sharding, and FakeTensorMode gives every tensor a size and no
    memory, so the full 14B step runs on a CPU. Generator phase: the student's Self-Forcing
    rollout through `generate_block` (exit at the first step: the same graph as any exit
    step), the teacher's batched CFG forward and the critic's forward without gradient, the DMD
    surrogate loss, backward, AdamW. Critic phase: the rollout without gradient, the critic's
    flow-matching forward, backward, AdamW. sp = 1 (the model has no sequence parallelism).
    `pc.num_layers` shortens the run (the plan's per-block terms scale with it).
    """
    import torch.distributed as dist
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if pc.sp != 1:
        raise ValueError("the dry run covers sp = 1 only (the model has no sequence parallelism)")
    if dist.is_initialized():
        raise RuntimeError("the dry run makes its own fake process group: call it outside torch.distributed")
    dist.init_process_group("fake", rank=0, world_size=pc.num_gpus, store=FakeStore())
    try:
        mesh = init_device_mesh("cpu", (pc.num_gpus,))      # outside fake mode: it holds real rank ids
        with warnings.catch_warnings(), FakeTensorMode(allow_non_fake_inputs=True), _views_outside_fake_mode():
            # the cross-attention unit returns its text K/V as views; nothing writes them in place
            warnings.filterwarnings("ignore", message=".*returned a view tensor.*")
            nets = _sharded_networks(pc, mesh, checkpointing)
            sharded = {name: sum(p.to_local().numel() for p in getattr(nets, name).parameters())
                       for name in ("student", "critic")}
            # One AdamW, a parameter group per trained model: FSDPMemTracker tracks one optimizer
            # (its track_external is a no-op), and a step skips the group without gradients.
            optimizer = torch.optim.AdamW([{"params": list(nets.student.parameters())},
                                           {"params": list(nets.critic.parameters())}],
                                          lr=1e-6, betas=(0.0, 0.999), foreach=False)
            for group in optimizer.param_groups:   # materialise the AdamW states before measuring
                for p in group["params"]:
                    p.grad = torch.zeros_like(p)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step = _DryStep(pc, nets)
            result = {}
            for phase in ("generator", "critic"):
                tracker = FSDPMemTracker(nets, optimizer)
                tracker.track_inputs(step.inputs)
                result[phase] = _tracked(tracker, functools.partial(step.run, phase, optimizer))
    finally:
        dist.destroy_process_group()
    return {"num_gpus": pc.num_gpus, "num_layers": pc.model.num_layers, "checkpointing": checkpointing,
            "rank0_param_numel": sharded, "phases": result}


def _sharded_networks(pc: PlanConfig, mesh, checkpointing: bool) -> torch.nn.Module:
    """Teacher experts (bf16, frozen), critic and student (master dtype), each FSDP2-sharded,
    under one root so that the tracker sees all three."""
    from torch.distributed.fsdp import fully_shard
    cfg, master = pc.model, torch.float32 if pc.master == "fp32" else torch.bfloat16
    nets = torch.nn.Module()
    nets.teacher = torch.nn.ModuleList(
        shard_for_training(_build(cfg, torch.bfloat16).requires_grad_(False), mesh, checkpointing=False,
                           trainable=False, via_forward=True) for _ in range(pc.teacher_experts))
    nets.critic = shard_for_training(_build(cfg, master), mesh, checkpointing=checkpointing, trainable=True,
                                     via_forward=True)
    nets.student = shard_for_training(_build(cfg, master), mesh, checkpointing=checkpointing, trainable=True,
                                      via_forward=True)
    return fully_shard(nets, mesh=mesh)


class _Rollout(torch.nn.Module):
    """The rollout as one module call: FSDPMemTracker refuses a root module called again at
    top level (it takes that for a new iteration), and the rollout calls the student's
    `forward_block` 2 x blocks times; nested in a module, the repeated calls are allowed."""

    def __init__(self, step: _DryStep):
        super().__init__()
        self.run = step.rollout

    def forward(self) -> torch.Tensor:
        return self.run()


@contextlib.contextmanager
def _views_outside_fake_mode():
    """`KVCache.view` decides on index values (which slots are visible): while the dry run
    lasts, build its small index and rotary tensors as real ones (not tracked: a few MB at 14B)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    view = KVCache.view

    def real(*args, **kwargs):
        with unset_fake_temporarily():
            return view(*args, **kwargs)
    KVCache.view = real
    try:
        yield
    finally:
        KVCache.view = view


class _DryStep:
    """The two phases of a DMD step (`self_forcing.student_rollout`, `dmd.dmd_loss`,
    `dmd.critic_loss`, as the trainer runs them) on fake clips of the plan's shapes (batch B
    per rank), at one noise level."""

    def __init__(self, pc: PlanConfig, nets: torch.nn.Module):
        cfg, self.pc, self.nets = pc.model, pc, nets
        if cfg.control_type is None:
            raise ValueError(f"the dry run trains a steered student: {pc.config!r} has no camera/action control")
        self.cache_cfg = CacheConfig(pc.block_frames, pc.sink_frames, pc.window_frames)
        self.schedule = FewStepSchedule.from_indices()
        f, h, w = pc.grid()
        lat = (pc.batch, cfg.out_dim, f, 2 * h, 2 * w)
        self.data = ConditionedClips(
            x0=torch.randn(lat), y=torch.randn(pc.batch, cfg.in_dim - cfg.out_dim, *lat[2:]),
            control=torch.randn(pc.batch, cfg.control_channels, *lat[2:]),
            context=torch.randn(pc.batch, cfg.text_len, cfg.text_dim), empty_context=torch.zeros(cfg.text_len, cfg.text_dim))
        self.conditions = Conditions.of_clips(self.data, torch.arange(pc.batch))
        self.sigma = torch.full((pc.batch,), 0.5)
        self.generator = torch.Generator().manual_seed(0)
        self.inputs = (self.data.y, self.data.control, self.data.context)

    def rollout(self) -> torch.Tensor:
        data = self.data
        return student_rollout(self.nets.student, data.context, data.y, data.control, self.schedule, self.cache_cfg,
                               self.generator, exit_step=0, cache_dtype=torch.bfloat16)

    def run(self, phase: str, optimizer, mark) -> None:
        nets = self.nets
        with torch.set_grad_enabled(phase == "generator"):
            x = _Rollout(self)()
        mark("rollout")
        noise = torch.randn(x.shape)
        if phase == "generator":    # the expert of this t; CFG's cond and uncond in one forward
            loss, _ = dmd_loss(x, nets.teacher[0], nets.critic, self.conditions, self.sigma, noise, guidance=3.0)
            mark("teacher (CFG) and critic forwards")
        else:
            loss = critic_loss(nets.critic, x, self.conditions, self.sigma, noise)
            mark("critic forward")
        loss.backward()
        mark("backward")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mark("optimizer step")


# ---- command line --------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of `lingbot-rt distill memory-plan`."""
    d = PlanConfig()
    parser.add_argument("--config", dest="model_config", default=d.config,
                        help=f"named model config of the three DiTs (default {d.config})")
    parser.add_argument("--gpus", type=int, default=d.num_gpus, help="GPUs the step is sharded over")
    parser.add_argument("--gpu-gb", type=float, default=d.gpu_gib, help="memory per GPU, GiB (an 80 GB H100: 80)")
    parser.add_argument("--reserve-gb", type=float, default=d.reserve_gib,
                        help="GiB per GPU kept for the CUDA context, NCCL and fragmentation")
    parser.add_argument("--strategy", choices=[*STRATEGIES, "all"], default="all")
    parser.add_argument("--height", type=int, default=d.height)
    parser.add_argument("--width", type=int, default=d.width)
    parser.add_argument("--frames", type=int, default=d.num_frames, help="latent frames of the DMD window")
    parser.add_argument("--batch", type=int, default=d.batch, help="clips per data-parallel rank")
    parser.add_argument("--sp", type=int, default=d.sp, help="sequence-parallel (Ulysses) degree")
    parser.add_argument("--teacher-experts", type=int, choices=[1, 2], default=d.teacher_experts)
    parser.add_argument("--master", choices=sorted(MASTER_BYTES), default=d.master,
                        help="fp32: fp32 weights + grads; bf16: bf16 weights + grads (AdamW states fp32 in both)")
    parser.add_argument("--ema", choices=EMA_PLACES, default=d.ema, help="where the student's fp32 EMA lives")
    parser.add_argument("--dry-run", action="store_true", help="also run FSDP2 on fake tensors (sp 1)")
    parser.add_argument("--dry-run-layers", type=int, help="blocks in the dry run and its counted twin (default: all)")
    parser.add_argument("--out", help="write the plan as JSON here")
    return parser


def plan_config_from_args(args) -> PlanConfig:
    return PlanConfig(config=args.model_config, num_gpus=args.gpus, gpu_gib=args.gpu_gb, reserve_gib=args.reserve_gb,
                      height=args.height, width=args.width, num_frames=args.frames, batch=args.batch, sp=args.sp,
                      teacher_experts=args.teacher_experts, master=args.master, ema=args.ema)


def command_line(args) -> str:
    """The full command that reproduces `args` (every flag spelled out)."""
    own = [a.dest for a in add_arguments(argparse.ArgumentParser())._actions if a.dest != "help"]
    flags = {("config" if k == "model_config" else k): getattr(args, k) for k in own}
    words = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v:g}" if isinstance(v, float) else f" {v}")
             for k, v in flags.items() if v not in (None, False)]
    return "lingbot-rt distill memory-plan " + " ".join(words)


def plan_command(args) -> int:
    """Print the plan's table (and the dry run's peaks), write the JSON to --out."""
    pc = plan_config_from_args(args)
    strategies = STRATEGIES if args.strategy == "all" else (args.strategy,)
    plan = plan_memory(pc, strategies)
    plan["command"] = command_line(args)
    plan["torch"] = torch.__version__        # sizes come from the meta device and fake tensors: no GPU
    print(format_table(plan))
    if args.dry_run:
        plan["dry_run"] = compare_dry_run(pc, args.dry_run_layers)
        print("\n" + format_dry_run(plan["dry_run"]))
    if args.out:
        from pathlib import Path
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(plan, indent=2) + "\n")
    return 0


def compare_dry_run(pc: PlanConfig, num_layers: int | None = None) -> dict:
    """The dry run (FSDP, with and without checkpointing) beside the counted plan of the same
    run (sp = 1, `num_layers` blocks if given)."""
    base = replace(pc, sp=1, num_layers=num_layers or pc.num_layers)
    params = count_parameters(base)
    out = {}
    for checkpointing in (True, False):
        counted = phase_bytes(base, params, "fsdp", checkpointing)
        out["AC" if checkpointing else "no AC"] = {
            **dry_run(base, checkpointing=checkpointing),
            "counted_bytes": {phase: counted[phase]["total"] for phase in counted}}
    return out


def format_dry_run(result: dict) -> str:
    lines = [("dry run: FSDP2 on fake tensors, FSDPMemTracker, rank 0 (GiB) | phase | tracker peak | counted plan"
              " | peak reached in"), "---|---|---:|---:|---"]
    for name, run in result.items():
        for phase, tracked in run["phases"].items():
            first = next(s["stage"] for s in tracked["stages"] if s["peak_so_far"] == tracked["peak"]["Total"])
            lines.append(f"{name}, {run['num_layers']} blocks, {run['num_gpus']} ranks | {phase} | "
                         f"{tracked['peak']['Total'] / GIB:.2f} | {run['counted_bytes'][phase] / GIB:.2f} | {first}")
    first_run = next(iter(result.values()))
    cats = [k for k in first_run["phases"]["generator"]["peak"] if k != "Total"]
    lines += ["", "tracker categories at the peak (GiB) | " + " | ".join(cats), "---|" + "---:|" * len(cats)]
    for name, run in result.items():
        for phase, tracked in run["phases"].items():
            lines.append(f"{name} {phase} | " + " | ".join(f"{tracked['peak'].get(k, 0) / GIB:.2f}" for k in cats))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return plan_command(add_arguments(argparse.ArgumentParser(prog="memory_plan")).parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
