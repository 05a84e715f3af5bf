"""How the distillation trainer lays a DiT out over the ranks: `ddp` (whole replicas, gradients
averaged by `distributed.average_gradients`) or `fsdp` (FSDP2 `fully_shard`), with activation
checkpointing per DiT block in either.

FSDP2 units (`shard_for_training`): every DiT block (checkpointed if asked), every block's
cross-attention, and the root (embeddings, head). The cross-attention is a unit of its own
because `_run_blocks` and `start_sessions` call `cross_attn.context_kv` outside the block's
forward, where a block unit's parameters are still sharded (costs one extra all-gather of
4 dim^2 per block and whole-clip forward). Compute in `param_dtype` (bf16 on GPUs), gradients
reduced in fp32. The frozen teacher is sharded the same way, without gradient reduction.

The memory plan's FSDP2 dry run (`memory_plan.dry_run`) shards with the same function; it runs
the methods through `ViaForward` because FSDPMemTracker sees module forwards only.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from ..model.checkpoint import load_model
from ..model.dit import CausalWanModel
from ..world.training import EMA

# Methods called from outside a unit's forward; FSDP2 must gather the unit's parameters around them.
ROOT_METHODS = ("forward_block", "start_sessions", "forward_teacher_forcing")
CROSS_ATTENTION_METHODS = ("context_kv",)


class ViaForward(torch.nn.Module):
    """Runs the named methods of `inner` through `forward`, so FSDP's forward hooks (and
    FSDPMemTracker's, which `register_fsdp_forward_method` bypasses) run around them; any
    other attribute is the inner module's. State-dict names gain an `inner.` prefix."""

    def __init__(self, inner: torch.nn.Module, methods: tuple[str, ...]):
        super().__init__()
        self.inner = inner
        self.methods = methods

    def forward(self, *args, method: str = "forward", **kwargs):
        return getattr(self.inner, method)(*args, **kwargs)

    def __getattr__(self, name: str):
        if name in ("inner", "methods") or name.startswith("_"):
            return super().__getattr__(name)
        if name in self.methods:
            return lambda *args, **kwargs: self(*args, method=name, **kwargs)
        return getattr(self.inner, name)


def checkpoint_blocks(model: CausalWanModel) -> CausalWanModel:
    """Activation checkpointing per DiT block, in place: a block keeps its inputs only and is
    recomputed in backward (non-reentrant `checkpoint_wrapper`; state-dict names unchanged).
    A recomputed streaming block re-reads the KV cache, so the rollout must not overwrite a
    slot after a gradient-carrying pass read it (`self_forcing.check_recompute_safe`)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    for index, block in enumerate(model.blocks):
        model.blocks[index] = checkpoint_wrapper(block)
    return model


def _expose(module: torch.nn.Module, methods: tuple[str, ...], via_forward: bool) -> torch.nn.Module:
    """Make FSDP2 gather `module`'s parameters around `methods` (module: about to be sharded)."""
    return ViaForward(module, methods) if via_forward else module


def _register(unit, methods: tuple[str, ...], via_forward: bool):
    from torch.distributed.fsdp import register_fsdp_forward_method
    if not via_forward:
        for name in methods:
            register_fsdp_forward_method(unit, name)
    return unit


def shard_for_training(model: CausalWanModel, mesh, *, checkpointing: bool, trainable: bool,
                       param_dtype: torch.dtype = torch.bfloat16, via_forward: bool = False):
    """FSDP2-shard `model` in place over `mesh` (units: module docstring). Returns the root:
    the model itself, its `forward_block` / `start_sessions` registered as FSDP forward
    methods, or with `via_forward` the model wrapped in `ViaForward` (the dry run)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    # cast_forward_inputs=False: FSDP2's default casts every unit's floating inputs to bf16, which
    # rounds the timesteps (978 -> 976, 825 -> 824), drops the fp32 residual stream to bf16 at every block,
    # and materialises the broadcast modulation e0 [B, L, 6, dim] in bf16 per block (1.9 GiB at
    # 32760 tokens, kept by checkpointing: 75 GiB over 40 blocks; found by the memory plan's dry run).
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if trainable else None,
                                  cast_forward_inputs=False)
    for block in model.blocks:
        cross_attn = fully_shard(_expose(block.cross_attn, CROSS_ATTENTION_METHODS, via_forward), mesh=mesh,
                                 mp_policy=policy)
        block.cross_attn = _register(cross_attn, CROSS_ATTENTION_METHODS, via_forward)
    if checkpointing:
        checkpoint_blocks(model)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    # The root reshards after every call: the default keeps a root's parameters gathered until
    # its backward, which never comes for the teacher and the no-gradient rollouts.
    root = fully_shard(_expose(model, ROOT_METHODS, via_forward), mesh=mesh, mp_policy=policy,
                       reshard_after_forward=True)
    return _register(root, ROOT_METHODS, via_forward)


def set_trainable(model: torch.nn.Module, trains: Callable[[str], bool]) -> torch.nn.Module:
    """requires_grad of every parameter from its name."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(trains(name))
    return model


def load_sharded(model_dir: str | Path, mesh, device: torch.device, *, checkpointing: bool,
                 trains: Callable[[str], bool], param_dtype: torch.dtype) -> CausalWanModel:
    """A model directory loaded straight into FSDP2 shards: rank 0 reads the weights (fp32, on
    the CPU), every rank builds the model on the meta device and shards it, and rank 0's
    tensors are broadcast into the shards; no rank holds a whole model on its device.
    `trains(name)`: which parameters train (set before sharding)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    full = load_model(model_dir, dtype=torch.float32, device="cpu") if dist.get_rank() == 0 else None
    cfg = [full.cfg if full is not None else None]
    dist.broadcast_object_list(cfg, src=0)
    with torch.device("meta"):
        model = set_trainable(CausalWanModel(cfg[0]), trains)
    trainable = any(p.requires_grad for p in model.parameters())
    model = shard_for_training(model, mesh, checkpointing=checkpointing, trainable=trainable,
                               param_dtype=param_dtype)
    model.to_empty(device=device)
    set_model_state_dict(model, full.state_dict() if full is not None else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    return model


class ShardedEMA:
    """The student's EMA under FSDP2: fp32 DTensors sharded like the parameters, so each rank
    averages its own shards on its device (no gather per update); `full_state_dict` gathers
    them (a collective) for the exported student. The decay schedule is `EMA`'s."""

    decay_at = EMA.decay_at

    def __init__(self, model: torch.nn.Module, decay: float):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        self.decay = decay
        self.shards = {name: t.detach().float().clone() for name, t in get_model_state_dict(model).items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        weight = 1 - self.decay_at(step)
        for average, current in zip(self.shards.values(), get_model_state_dict(model).values(), strict=True):
            average.lerp_(current.detach().float(), weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shards themselves (torch.distributed.checkpoint saves and loads them in place)."""
        return self.shards

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: shard.full_tensor().cpu() for name, shard in self.shards.items()}
