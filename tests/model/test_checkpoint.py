"""Released-layout checkpoints: round trips, dtype casts, expert routing, clear errors."""
import json

import pytest
import torch
from safetensors.torch import save_file

from lingbot_rt.cli import main as cli_main
from lingbot_rt.model import CausalWanModel, model_config
from lingbot_rt.model.checkpoint import (CheckpointError, load_experts, load_fast, load_model, save_model,
                                         INDEX_NAME)
from lingbot_rt.pipeline.tiny_checkpoint import make_tiny_checkpoint
from tests.helpers import make_inputs, make_model


def test_14b_config_has_upstream_keys_shapes_and_size():
    with torch.device("meta"):
        cam = CausalWanModel(model_config("lingbot-14b"))
        act = CausalWanModel(model_config("lingbot-14b-act"))
    sd = cam.state_dict()
    assert len(sd) == 1421
    assert cam.num_params() == 18_544_332_864
    assert act.num_params() == 18_545_643_584
    assert sd["patch_embedding.weight"].shape == (5120, 36, 1, 2, 2)
    assert sd["patch_embedding_wancamctrl.weight"].shape == (5120, 1536)
    assert act.state_dict()["patch_embedding_wancamctrl.weight"].shape == (5120, 1792)
    assert sd["time_projection.1.weight"].shape == (30720, 5120)
    assert sd["head.head.weight"].shape == (64, 5120)
    assert sd["head.modulation"].shape == (1, 2, 5120)
    assert sd["blocks.39.ffn.0.weight"].shape == (13824, 5120)
    assert sd["blocks.0.cam_shift_layer.bias"].shape == (5120,)
    block_keys = {k.split(".", 2)[2] for k in sd if k.startswith("blocks.0.")}
    assert len(block_keys) == 35 and "norm1.weight" not in block_keys and "norm3.weight" in block_keys
    assert all(p.is_meta for p in cam.parameters())


@pytest.mark.parametrize("fmt,shards,dtype", [("safetensors", 3, torch.float32), ("safetensors", 1, torch.bfloat16),
                                              ("pth", 1, torch.float32)])
def test_round_trip(tmp_path, fmt, shards, dtype):
    model = make_model()
    save_model(model.to(dtype), tmp_path / "m", num_shards=shards, fmt=fmt)
    loaded = load_model(tmp_path / "m", dtype=torch.float32)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value.float(), atol=0, rtol=0)
    assert (tmp_path / "m" / INDEX_NAME).exists() == (fmt == "safetensors" and shards > 1)


def test_loaded_model_computes_the_same_function(tmp_path):
    model = make_model(seed=3)
    save_model(model, tmp_path / "m", num_shards=2)
    loaded = load_model(tmp_path / "m", dtype=torch.float32)
    x, y, control, context = make_inputs(model, frames=3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, torch.tensor([500.0]), context, y, control),
                                   model(x, torch.tensor([500.0]), context, y, control), atol=0, rtol=0)


def test_release_layout_experts_and_fast(tmp_path):
    root = make_tiny_checkpoint(tmp_path / "lingbot-world-base-cam", dtype=torch.bfloat16)
    experts = load_experts(root, dtype=torch.float32)
    fast = load_fast(root, dtype=torch.float32)
    assert fast.cfg.control_type == "cam" and fast.dtype == torch.float32
    assert experts.expert_for(torch.tensor([999.0, 947.0])) is experts.high_noise
    assert experts.expert_for(946.9) is experts.low_noise
    with pytest.raises(ValueError, match="straddle"):
        experts.expert_for(torch.tensor([950.0, 10.0]))
    w_high = experts.high_noise.blocks[0].self_attn.q.weight
    assert not torch.equal(w_high, experts.low_noise.blocks[0].self_attn.q.weight)


def test_act_checkpoint_without_control_type_is_recognised_by_shape(tmp_path):
    make_tiny_checkpoint(tmp_path / "ckpt", control_type="act", num_shards=1)
    cfg_path = tmp_path / "ckpt" / "lingbot_world_fast" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["control_type"]
    cfg_path.write_text(json.dumps(cfg))
    assert load_fast(tmp_path / "ckpt").cfg.control_type == "act"


def test_cli_make_and_inspect(tmp_path, capsys):
    assert cli_main(["make-tiny-checkpoint", "--out", str(tmp_path / "c"), "--shards", "2"]) == 0
    assert cli_main(["inspect-checkpoint", str(tmp_path / "c" / "lingbot_world_fast")]) == 0
    report = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert report["tensors"] == 91 and report["config"]["control_type"] == "cam"
    assert cli_main(["inspect-checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "checkpoint directory not found" in capsys.readouterr().err


# ---- broken checkpoints -------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    model = make_model()
    save_model(model, tmp_path / "m", num_shards=2)
    return tmp_path / "m"


def _rewrite_shard(path, edit):
    from safetensors.torch import load_file
    state = load_file(path)
    edit(state)
    save_file(state, path)


def test_missing_key_is_named(saved):
    shard = saved / "diffusion_pytorch_model-00001-of-00002.safetensors"
    _rewrite_shard(shard, lambda s: s.pop("blocks.0.self_attn.q.weight"))
    with pytest.raises(CheckpointError, match="key blocks.0.self_attn.q.weight mapped to .*00001-of-00002.safetensors but not stored"):
        load_model(saved)
    index = json.loads((saved / INDEX_NAME).read_text())
    del index["weight_map"]["blocks.0.self_attn.q.weight"]
    (saved / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"1 missing keys: blocks\.0\.self_attn\.q\.weight"):
        load_model(saved)


def test_unexpected_and_misshaped_keys_are_named_with_file(saved):
    shard = saved / "diffusion_pytorch_model-00002-of-00002.safetensors"

    def edit(state):
        state["blocks.1.lora_A.weight"] = torch.zeros(2, 2)
        state["head.head.weight"] = torch.zeros(3, 3)
    _rewrite_shard(shard, edit)
    with pytest.raises(CheckpointError) as err:
        load_model(saved)
    msg = str(err.value)
    assert "unexpected keys (in diffusion_pytorch_model-00002-of-00002.safetensors): blocks.1.lora_A.weight" in msg
    assert "head.head.weight (diffusion_pytorch_model-00002-of-00002.safetensors: stored [3, 3], model [64, 64])" in msg


def test_missing_shard_and_bad_files(saved, tmp_path):
    (saved / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard diffusion_pytorch_model-00002-of-00002.safetensors is listed but missing"):
        load_model(saved)
    (saved / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load_model(saved)
    (saved / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(saved)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(make_model().cfg.to_diffusers()))
    with pytest.raises(CheckpointError, match="no diffusion_pytorch_model.safetensors.index.json"):
        load_model(empty)
    (empty / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable safetensors file"):
        load_model(empty)


def test_wrong_config_sizes_are_reported_as_shape_mismatch(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["ffn_dim"] = 96
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"ffn\.0\.weight .*stored \[128, 64\], model \[96, 64\]"):
        load_model(saved)
    cfg["ffn_dim"], cfg["num_heads"] = 128, 5
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="not divisible by num_heads 5"):
        load_model(saved)


def test_fp8_rows_round_trip_within_fp8_rounding_and_half_the_bytes(tmp_path):
    model = make_model(seed=4)
    save_model(model, tmp_path / "fp8", num_shards=3, fp8_rows=True)
    save_model(make_model(seed=4).to(torch.bfloat16), tmp_path / "bf16")
    loaded = load_model(tmp_path / "fp8", dtype=torch.float32)
    quantized = 0
    for key, value in model.state_dict().items():
        got = loaded.state_dict()[key]
        if value.ndim == 2 and min(value.shape) >= 16:
            quantized += 1
            step = value.abs().amax(dim=1, keepdim=True) / 448 * 2**-9      # e4m3's subnormal spacing, scaled
            assert ((got - value).abs() <= value.abs() * 2**-4 + step).all(), key
            assert not torch.equal(got, value), key
        else:
            torch.testing.assert_close(got, value, atol=0, rtol=0, msg=key)
    assert quantized > 0
    size = lambda d: sum(p.stat().st_size for p in d.glob("*.safetensors"))  # noqa: E731
    assert size(tmp_path / "fp8") < 0.7 * size(tmp_path / "bf16")


def test_fp8_matrix_without_its_scales_and_stray_scales_are_refused(tmp_path):
    from safetensors.torch import load_file
    save_model(make_model(seed=5), tmp_path / "m", fp8_rows=True)
    shard = tmp_path / "m" / "diffusion_pytorch_model.safetensors"
    state = load_file(shard)
    scale = state.pop("blocks.0.self_attn.q.weight.fp8_row_scale")
    save_file(state, shard)
    with pytest.raises(CheckpointError, match=r"FP8 tensors without .fp8_row_scale: blocks\.0\.self_attn\.q\.weight"):
        load_model(tmp_path / "m")
    state["blocks.0.self_attn.q.weight.fp8_row_scale"] = scale
    state["head.head.bias.fp8_row_scale"] = torch.ones(64)
    save_file(state, shard)
    with pytest.raises(CheckpointError, match=r"head\.head\.bias\.fp8_row_scale scales no FP8 matrix head\.head\.bias"):
        load_model(tmp_path / "m")
