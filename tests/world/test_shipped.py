"""The trained world weights shipped in the package, and `lingbot-rt world export`."""
import json
import math

import pytest
import torch

from lingbot_rt.cli import main
from lingbot_rt.model.checkpoint import load_model, save_model
from lingbot_rt.model.config import model_config
from lingbot_rt.model.dit import CausalWanModel
from lingbot_rt.model.vae import VAEConfig, WanVAE, save_vae, video_to_uint8
from lingbot_rt.world.clips import load_clip_tensors
from lingbot_rt.world.data import generate_dataset
from lingbot_rt.world.latents import video_tensor
from lingbot_rt.world.metrics import mse, psnr_of_mse
from lingbot_rt.world.shipped import SHIPPED_DIR, shipped_teacher_dir
from lingbot_rt.world.train_vae import VAE_CONFIG, VAE_WEIGHTS, load_trained_vae

MAX_SHIPPED_BYTES = 30 * 2**20          # all shipped weights together (issue 4)


def test_shipped_weights_stay_within_the_size_budget():
    files = [p for p in SHIPPED_DIR.rglob("*") if p.is_file()]
    assert {VAE_WEIGHTS, VAE_CONFIG, "MODEL_CARD.md"} <= {p.name for p in files}
    assert sum(p.stat().st_size for p in files) <= MAX_SHIPPED_BYTES


def test_shipped_vae_reconstructs_a_held_out_clip(tmp_path):
    # a clip of the held-out seed the model card's evaluation uses, rendered here on the CPU
    data = generate_dataset(tmp_path / "clip", num_clips=1, frames_per_clip=17, height=128, width=128, seed=1,
                            progress=False)
    truth = load_clip_tensors(data).frames
    vae = load_trained_vae(SHIPPED_DIR)
    assert vae.dtype == torch.float32 and vae.config.dim == 16
    with torch.no_grad():
        frames = video_to_uint8(vae.decode(vae.encode(video_tensor(truth))))
    quality = psnr_of_mse(mse(frames, truth).mean()).item()
    assert quality > 19.0, f"shipped VAE reconstructs at {quality:.2f} dB (23 dB when shipped)"


def test_shipped_teacher_is_the_world_model():
    model = load_model(shipped_teacher_dir(), dtype=torch.float32)
    assert model.cfg == model_config("world") and model.cfg.control_type == "cam"
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_shipped_teacher_missing_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="world export"):
        shipped_teacher_dir(tmp_path)


def test_export_writes_bf16_weights_the_world_commands_load(tmp_path, capsys):
    torch.manual_seed(0)
    vae_dir, teacher_dir, out = tmp_path / "vae", tmp_path / "teacher", tmp_path / "out"
    vae_dir.mkdir()
    config = VAEConfig(dim=8, latent_mean=(0.5,) * 16, latent_std=(2.0,) * 16)
    save_vae(WanVAE(config), vae_dir / VAE_WEIGHTS)
    (vae_dir / VAE_CONFIG).write_text(json.dumps({"dim": 8, "latent_mean": [0.5] * 16, "latent_std": [2.0] * 16}))
    teacher = CausalWanModel(model_config("world"))
    save_model(teacher, teacher_dir)
    assert main(["world", "export", "--vae", str(vae_dir), "--teacher", str(teacher_dir), "--out", str(out)]) == 0
    assert "written" in capsys.readouterr().out
    exported_vae = load_trained_vae(out)
    original_vae = load_trained_vae(vae_dir)
    assert exported_vae.config == original_vae.config
    for (name, a), b in zip(exported_vae.state_dict().items(), original_vae.state_dict().values()):
        torch.testing.assert_close(a, b.bfloat16().float(), rtol=0, atol=0, msg=name)
    exported = load_model(out / "teacher", dtype=torch.float32)
    for (name, a), b in zip(exported.state_dict().items(), teacher.state_dict().values()):
        torch.testing.assert_close(a, b.bfloat16().float(), rtol=0, atol=0, msg=name)
    assert math.isclose((out / VAE_WEIGHTS).stat().st_size, (vae_dir / VAE_WEIGHTS).stat().st_size / 2, rel_tol=0.05)


def test_export_keeps_the_student_schedule(tmp_path):
    from lingbot_rt.distillation.config import StudentSchedule, save_student_schedule, student_schedule
    from lingbot_rt.world.shipped import export_world_weights
    schedule = StudentSchedule(full_frames=3, memory_pool=(2, 2))
    save_model(CausalWanModel(model_config("world")), tmp_path / "student")
    save_student_schedule(schedule, tmp_path / "student")
    out = export_world_weights(tmp_path / "out", student_dir=tmp_path / "student")
    assert student_schedule(out / "student") == schedule
