"""The DMD memory plan: exact parameter counts on meta, FSDP shard arithmetic, the analytic
saved-activation count against autograd's saved-tensor hooks (tiny config, bf16, CPU), and
the FSDP2 dry run on fake tensors."""
from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from lingbot_rt.distillation import memory_plan as mp
from lingbot_rt.model import CausalWanModel, model_config
from lingbot_rt.model.config import CacheConfig
from lingbot_rt.model.rope import rotary_for_frames


def tiny_bf16(control_type="cam", seed=0) -> CausalWanModel:
    torch.manual_seed(seed)
    return CausalWanModel(model_config("tiny").replace(control_type=control_type)).to(torch.bfloat16)


def tiny_inputs(cfg, frames, height, width, batch=1):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 16, frames, height, width, generator=g)
    y = torch.randn(batch, cfg.in_dim - 16, frames, height, width, generator=g)
    control = (torch.randn(batch, cfg.control_channels, frames, height, width, generator=g)
               if cfg.control_type else None)
    return x, y, control, torch.randn(batch, 5, cfg.text_dim, generator=g)


# ---- parameters ------------------------------------------------------------------------------

@pytest.mark.parametrize("control_type", ["cam", "act", None])
def test_meta_count_equals_the_real_tiny_model(control_type):
    cfg = model_config("tiny").replace(control_type=control_type)
    real, meta = CausalWanModel(cfg), mp.build_on_meta(cfg)
    assert meta.num_params() == real.num_params()
    assert {k: v.shape for k, v in meta.state_dict().items()} == {k: v.shape for k, v in real.state_dict().items()}
    counts = mp.count_parameters(mp.PlanConfig(config="tiny", teacher_experts=2))
    if control_type == "cam":
        assert counts["per_network"] == real.num_params()
        assert counts["teacher"] == 2 * real.num_params()
        assert counts["per_block"] * cfg.num_layers + counts["outside_blocks"] == real.num_params()


def test_lingbot_14b_is_the_18_5b_expert():
    counts = mp.count_parameters(mp.PlanConfig())
    assert counts["per_network"] == 18_544_332_864 and counts["tensors_per_network"] == 1421


@pytest.mark.parametrize("num_gpus", [1, 3, 8])
def test_fsdp_bytes_per_gpu_are_ceil_divided(num_gpus):
    model = mp.build_on_meta(model_config("tiny"))
    rows = [(p.shape[0] if p.dim() else 1, p.numel()) for p in model.parameters()]
    expected = sum(math.ceil(r / num_gpus) * (n // r) for r, n in rows)
    assert mp.fsdp_shard_numel(model, num_gpus) == expected
    assert expected >= math.ceil(model.num_params() / num_gpus)
    pc = mp.PlanConfig(config="tiny", num_gpus=num_gpus, height=32, width=32, num_frames=6)
    params = mp.count_parameters(pc)
    fsdp = mp.phase_bytes(pc, params, "fsdp", True)["critic"]["components"]
    ddp = mp.phase_bytes(pc, params, "ddp", True)["critic"]["components"]
    assert fsdp["critic weights"] == 4 * expected and fsdp["critic AdamW states"] == 8 * expected
    assert fsdp["teacher weights (bf16, frozen)"] == 2 * 2 * expected
    assert ddp["critic weights"] == 4 * model.num_params()
    on_gpu = mp.weight_bytes(mp.PlanConfig(**{**pc.__dict__, "ema": "gpu"}), params, "fsdp")
    assert on_gpu["resident"]["student EMA (fp32)"] == 4 * expected and on_gpu["host"] == 0
    assert mp.weight_bytes(pc, params, "fsdp")["host"] == 4 * expected          # default: EMA on the CPU


# ---- activations: the count against the hooks ----------------------------------------------------

@pytest.mark.parametrize("control_type", ["cam", None])
@pytest.mark.parametrize("grid", [(3, 4, 6), (2, 8, 4)])
def test_block_count_matches_saved_tensor_hooks(control_type, grid):
    model = tiny_bf16(control_type)
    cfg, (f, h, w) = model.cfg, grid
    x, y, control, context = tiny_inputs(cfg, f, h, w)
    tokens, patch_grid = model.embed_video(x, y)
    _, e0 = model.embed_time(torch.tensor([500.0]), 1, patch_grid)
    rotary = rotary_for_frames(torch.arange(f)[None], patch_grid[1:], cfg.head_dim)
    text_kv = model.blocks[0].cross_attn.context_kv(model.embed_text(context))
    text_k, text_v = (t.detach().requires_grad_() for t in text_kv)
    ctrl = model.embed_control(control).detach().requires_grad_() if control_type else None
    hidden, e0 = tokens.detach().requires_grad_(), e0.detach()
    inputs = tuple(t for t in (hidden, e0, rotary.cos, rotary.sin, text_k, text_v, ctrl) if t is not None)
    measured, _ = mp.saved_bytes(model.blocks[0], hidden, e0, rotary, text_k, text_v, ctrl,
                                 exclude=(*model.parameters(), *inputs))
    assert measured == sum(mp.block_saved_bytes(cfg, f * h * w // 4).values())


@pytest.mark.parametrize("control_type", ["cam", None])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_model_count_matches_saved_tensor_hooks(control_type, checkpointing):
    model = tiny_bf16(control_type)
    cfg, grid = model.cfg, (3, 2, 3)
    if checkpointing:
        for index, block in enumerate(model.blocks):
            model.blocks[index] = checkpoint_wrapper(block)
    x, y, control, context = tiny_inputs(cfg, 3, 4, 6)
    measured, _ = mp.saved_bytes(model, x, torch.tensor([500.0]), context, y=y, control=control,
                                 exclude=tuple(model.parameters()))
    outside = mp.outside_saved_bytes(cfg, grid)
    if checkpointing:
        # checkpointed blocks save their tensor arguments: x (counted in `outside`), the text
        # K/V (idem), the shared control and the expanded e0 ([1, 6, dim] storage); the rotary
        # reaches them inside a dataclass, kept alive by reference instead of saved
        expected = sum(outside.values()) - outside["rotary cos/sin"] + 6 * cfg.dim * 4
    else:
        expected = sum(outside.values()) + cfg.num_layers * sum(mp.block_saved_bytes(cfg, 18).values())
    assert measured == expected


@pytest.mark.parametrize("cache_cfg", [CacheConfig(3, 1, 3), CacheConfig(2, 2, 6)])
def test_rollout_call_count_matches_saved_tensor_hooks(cache_cfg):
    model = tiny_bf16("cam")
    cfg, frames, tokens_per_frame = model.cfg, cache_cfg.block_frames, 6
    cache = model.new_cache(cache_cfg, 1, (4, 6))
    _, _, _, context = tiny_inputs(cfg, frames, 4, 6)
    model.start_sessions(cache, [0], context)
    cache_tensors = (cache.k, cache.v, cache.text_k, cache.text_v)
    for _ in range(3):                                   # a filling cache (its prefix read), then a full one
        x, y, control, _ = tiny_inputs(cfg, frames, 4, 6)
        view = cache.view([0], frames)
        measured, _ = mp.saved_bytes(model.forward_block, x, torch.tensor([500.0]), cache, [0], y=y, control=control,
                                     exclude=(*model.parameters(), *cache_tensors))
        block = mp.block_saved_bytes(cfg, frames * tokens_per_frame, masked=view.attn_mask is not None,
                                     cache_tokens=view.read_tokens - frames * tokens_per_frame)
        outside = mp.outside_saved_bytes(cfg, (frames, 2, 3), text_in_cache=True)
        assert measured == cfg.num_layers * sum(block.values()) + sum(outside.values())
        with torch.no_grad():
            model.forward_block(x, torch.zeros(1), cache, [0], y=y, control=control, commit=True)


def test_rollout_calls_read_the_filled_cache():
    pc = mp.PlanConfig()
    calls = mp.rollout_calls(pc)
    assert len(calls) == 7 and {tokens for tokens, _, _ in calls} == {3 * 1560}
    assert [cached // 1560 for _, cached, _ in calls] == [0, 3, 6, 9, 12, 15, 18]
    assert not any(masked for _, _, masked in calls)
    assert pc.num_tokens == 32_760 and pc.grid() == (21, 30, 52)


# ---- the plan, the command, the errors --------------------------------------------------------

def small_plan(**changes) -> mp.PlanConfig:
    return mp.PlanConfig(**{"config": "tiny", "num_gpus": 4, "height": 32, "width": 48, "num_frames": 6,
                            "gpu_gib": 1.0, "reserve_gib": 0.0, **changes})


def test_plan_has_both_strategies_and_says_what_fits():
    plan = mp.plan_memory(small_plan())
    names = [(s["strategy"], s["checkpointing"], s["teacher_sharded"], s["offload"]) for s in plan["scenarios"]]
    assert ("ddp", False, True, False) in names and ("fsdp", True, True, True) in names
    for scenario in plan["scenarios"]:
        for phase in scenario["phases"].values():
            assert phase["total"] == sum(phase["components"].values())
        assert scenario["peak_bytes"] == max(p["total"] for p in scenario["phases"].values())
        assert scenario["fits"] == (scenario["peak_bytes"] <= plan["budget_bytes"])
    by_name = {mp._name(s): s for s in plan["scenarios"]}
    assert by_name["fsdp+AC"]["peak_bytes"] < by_name["fsdp"]["peak_bytes"] < by_name["ddp"]["peak_bytes"]
    table = mp.format_table(plan)
    assert "generator phase" in table and "critic phase" in table and "fits |" in table


def test_command_writes_the_json(tmp_path, capsys):
    parser = mp.add_arguments(argparse.ArgumentParser())
    out = tmp_path / "plan.json"
    args = parser.parse_args(["--config", "tiny", "--gpus", "4", "--height", "32", "--width", "48", "--frames", "6",
                              "--strategy", "fsdp", "--out", str(out)])
    assert mp.plan_command(args) == 0
    plan = json.loads(out.read_text())
    assert plan["command"].startswith("lingbot-rt distill memory-plan --config tiny --gpus 4")
    assert {s["strategy"] for s in plan["scenarios"]} == {"fsdp"}
    assert "fits" in capsys.readouterr().out


@pytest.mark.parametrize("changes, message", [
    ({"config": "nope"}, "unknown model config"),
    ({"num_gpus": 0}, "num_gpus must be >= 1"),
    ({"batch": 0}, "batch must be >= 1"),
    ({"sp": 3}, "sp 3 must divide"),
    ({"master": "fp8"}, "master must be one of"),
    ({"height": 100}, "multiple of 16"),
    ({"num_layers": 0}, "num_layers must be >= 1"),
    ({"ema": "disk"}, "ema must be one of"),
])
def test_bad_inputs_raise_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        mp.PlanConfig(**changes)


def test_bad_strategy_and_dtype_raise():
    pc = small_plan()
    with pytest.raises(ValueError, match="strategy must be one of"):
        mp.phase_bytes(pc, mp.count_parameters(pc), "zero3", True)
    with pytest.raises(ValueError, match="offload needs the fsdp strategy"):
        mp.phase_bytes(pc, mp.count_parameters(pc), "ddp", True, offload=True)
    with pytest.raises(ValueError, match="16-bit weights"):
        mp.block_saved_bytes(pc.model, 10, weight_bytes=4)


# ---- the dry run ---------------------------------------------------------------------------------

def test_dry_run_shards_like_the_count_and_tracks_a_step():
    pc = small_plan(num_frames=3, num_layers=1, teacher_experts=1)
    run = mp.dry_run(pc, checkpointing=True)
    counted = mp.fsdp_shard_numel(mp.build_on_meta(pc.model), pc.num_gpus)
    assert run["rank0_param_numel"] == {"student": counted, "critic": counted}
    for phase in ("generator", "critic"):
        peak = run["phases"][phase]["peak"]
        # resident sharded weights: two trained fp32 models + the bf16 teacher
        assert peak["Sharded Param"] == 4 * 2 * counted + 2 * counted
        # AdamW: exp_avg and exp_avg_sq in fp32, plus a 4-byte `step` per parameter tensor
        assert peak["OptState"] == 8 * 2 * counted + 4 * 2 * len(mp.build_on_meta(pc.model).state_dict())
        assert peak["Total"] > peak["Sharded Param"] + peak["OptState"]
        assert [s["stage"] for s in run["phases"][phase]["stages"]][-1] == "optimizer step"
    assert not torch.distributed.is_initialized()
    with pytest.raises(ValueError, match="sp = 1"):
        mp.dry_run(small_plan(sp=2))
