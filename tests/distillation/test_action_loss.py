"""The action loss: the latent motion probe, its training, the loss, and DMD with it (CPU)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lingbot_rt.distillation.action_loss import (
    DecodedMotionProbe,
    LatentMotionProbe,
    action_loss,
    decoded_frames,
    forward_groups,
    load_action_probe,
    load_latent_probe,
    train_decoded_probe,
    train_latent_probe,
)
from lingbot_rt.distillation.config import DMDConfig
from lingbot_rt.distillation.trainer import DMDTrainer
from lingbot_rt.model.tiny_decoder import TinyDecoder, load_tiny_decoder, save_tiny_decoder, tiny_decoder_config
from lingbot_rt.world.pose_probe import MOTION_SCALE, PoseProbe, save_probe

from .helpers import LATENT_HW, NUM_FRAMES, SCHEDULE, save_tiny, synthetic_clips

DMD = DMDConfig(batch_size=2, steps=4, update_ratio=2, log_every=1, save_every=2, student=SCHEDULE)


def moving_clips(num: int, frames: int = NUM_FRAMES, seed: int = 0):
    """Synthetic clips whose latents show their motion: channel 0 steps by the forward motion's
    sign, channel 1 by the yaw's, from one latent frame to the next (a relation a probe can learn)."""
    clips = synthetic_clips(num, seed, frames)
    g = torch.Generator().manual_seed(seed + 1)
    signs = torch.randint(0, 2, (num, frames - 1, 2), generator=g).float() * 2 - 1
    motion = torch.zeros(num, frames - 1, 4)
    motion[..., 1], motion[..., 2] = 0.15 * signs[..., 0], 0.1 * signs[..., 1]
    x0 = clips.x0.float()
    for t in range(1, frames):
        x0[:, :2, t] = x0[:, :2, t - 1] + signs[:, t - 1, :, None, None]
    return dataclasses.replace(clips, x0=x0.to(torch.bfloat16), motion=motion)


@pytest.fixture(scope="module")
def trained():
    return train_latent_probe(moving_clips(40), steps=150, batch_size=64, progress=False)


def test_the_probe_learns_motion_it_can_see_and_scores_held_out_clips(trained):
    probe, accuracy = trained
    assert accuracy["held_out_clips"] == 4
    assert accuracy["forward_direction_accuracy"] >= 0.95 and accuracy["yaw_direction_accuracy"] >= 0.95
    assert not any(p.requires_grad for p in probe.parameters()) and not probe.training


def test_pairs_are_the_probe_on_each_consecutive_pair():
    torch.manual_seed(0)
    probe = LatentMotionProbe(width=8)
    x = torch.randn(2, 16, 4, *LATENT_HW)
    pairs = probe.pairs(x)
    assert pairs.shape == (2, 3, 4)
    torch.testing.assert_close(pairs[1, 2], probe(x[1:2, :, 2], x[1:2, :, 3])[0])


def test_action_loss_is_smooth_l1_on_scaled_motion_with_gradient_to_the_samples(trained):
    probe, _ = trained
    clips = moving_clips(2, seed=3)
    x = clips.x0.float().requires_grad_()
    loss, stats = action_loss(probe, x, clips.motion)
    expected = F.smooth_l1_loss(probe.pairs(x.detach()), clips.motion / MOTION_SCALE, beta=0.1)
    torch.testing.assert_close(loss, expected)
    assert stats["probe_forward_direction_accuracy"] >= 0.9
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    wrong, _ = action_loss(probe, clips.x0.float(), -clips.motion)        # the opposite commands score worse
    assert wrong > loss.detach()
    with pytest.raises(ValueError, match=r"motions \[2, 5, 4\] between them, got \[2, 4, 4\]"):
        action_loss(probe, x, clips.motion[:, :4])


def test_balanced_action_loss_weighs_forward_back_and_neither_alike(trained):
    probe, _ = trained
    clips = moving_clips(2, seed=5)
    motion = clips.motion.clone()
    motion[0, :, 1] = 0.15                  # clip 0 walks forward, clip 1 back on its first pair, else still
    motion[1, :, 1] = 0.0
    motion[1, 0, 1] = -0.15
    x = clips.x0.float()
    per_pair = F.smooth_l1_loss(probe.pairs(x), motion / MOTION_SCALE, beta=0.1, reduction="none").mean(-1)
    forward, back, neither = forward_groups(motion)
    assert (forward.sum(), back.sum(), neither.sum()) == (5, 1, 4)
    balanced, stats = action_loss(probe, x, motion, balance=True)
    expected = (per_pair[forward].mean() + per_pair[back].mean() + per_pair[neither].mean()) / 3
    torch.testing.assert_close(balanced, expected)
    torch.testing.assert_close(action_loss(probe, x, motion)[0], per_pair.mean())
    estimate = probe.pairs(x)[1, 0, 1]
    assert stats["probe_backward_direction_accuracy"].item() == float(estimate < 0)   # the one pair walking back
    still = torch.zeros_like(motion)        # one group: balanced is the plain mean, no backward accuracy
    loss, stats = action_loss(probe, x, still, balance=True)
    torch.testing.assert_close(loss, action_loss(probe, x, still)[0])
    assert "probe_backward_direction_accuracy" not in stats


def test_probe_files_round_trip_and_bad_files_get_clear_errors(trained, tmp_path):
    probe, _ = trained
    path = save_probe(probe, tmp_path / "probe.safetensors", steps=150)
    loaded = load_latent_probe(path)
    x = torch.randn(1, 16, 3, *LATENT_HW)
    torch.testing.assert_close(loaded.pairs(x), probe.pairs(x))
    with pytest.raises(FileNotFoundError, match="distill latent-probe"):
        load_latent_probe(tmp_path / "missing.safetensors")
    save_probe(PoseProbe(width=4), tmp_path / "pixel.safetensors")
    with pytest.raises(ValueError, match="not a latent motion probe"):
        load_latent_probe(tmp_path / "pixel.safetensors")
    with pytest.raises(ValueError, match="camera motions"):
        train_latent_probe(synthetic_clips(4), steps=1)


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_tiny_decoder(TinyDecoder(tiny_decoder_config("tiny")).eval(), tmp_path_factory.mktemp("decoder"))


def test_decoded_probe_reads_the_frames_that_end_consecutive_latents_with_gradient(decoder_dir):
    decoder = load_tiny_decoder(decoder_dir)
    torch.manual_seed(1)
    probe = DecodedMotionProbe(decoder, PoseProbe(width=4)).requires_grad_(False)
    x = torch.randn(2, 16, 4, *LATENT_HW)
    video = decoder.stream_decoder().decode(x)                       # what a player's stream shows
    assert video.shape[2] == 13
    frames = decoded_frames(decoder, x)
    assert frames.shape == (2, 4, 8 * LATENT_HW[0], 8 * LATENT_HW[1], 3) and frames.dtype == torch.uint8
    as_uint8 = ((video[:, :, ::4] + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)
    torch.testing.assert_close(frames, as_uint8, atol=1, rtol=0)
    pairs = probe.pairs(x)
    assert pairs.shape == (2, 3, 4)
    torch.testing.assert_close(pairs[1, 2], probe.probe.read(video[1:2, :, 8], video[1:2, :, 12])[0])
    checkpointed = x.clone().requires_grad_()
    probe.pairs(checkpointed).square().sum().backward()              # recomputed decode: the same gradient
    direct = x.clone().requires_grad_()
    probe._pairs(direct).square().sum().backward()
    assert checkpointed.grad.abs().sum() > 0
    torch.testing.assert_close(checkpointed.grad, direct.grad)


def test_decoded_probe_trains_on_decoded_truth_and_its_file_loads_behind_the_decoder(decoder_dir, trained, tmp_path):
    decoder = load_tiny_decoder(decoder_dir)
    clips = moving_clips(20)
    probe, accuracy = train_decoded_probe(clips, decoder, steps=60, batch_size=32, progress=False)
    assert accuracy["held_out_clips"] == 2 and accuracy["moving_steps"] > 0
    assert not any(p.requires_grad for p in probe.parameters())
    path = save_probe(probe, tmp_path / "decoded.safetensors")
    loaded = load_action_probe(path, decoder_dir)
    assert isinstance(loaded, DecodedMotionProbe)
    x = clips.x0[:1].float()
    frames = decoded_frames(decoder, x)[0]
    torch.testing.assert_close(loaded.pairs(x)[0], probe(frames[:-1], frames[1:]), atol=2e-2, rtol=0)
    assert isinstance(load_action_probe(save_probe(trained[0], tmp_path / "latent.safetensors"), None),
                      LatentMotionProbe)
    with pytest.raises(ValueError, match="not a pose probe"):
        load_action_probe(tmp_path / "latent.safetensors", decoder_dir)
    with pytest.raises(FileNotFoundError, match="distill decoded-probe"):
        load_action_probe(tmp_path / "missing.safetensors", decoder_dir)
    with pytest.raises(FileNotFoundError, match="tiny decoder"):
        load_action_probe(path, tmp_path / "no_decoder")
    with pytest.raises(ValueError, match="camera motions"):
        train_decoded_probe(synthetic_clips(4), decoder, steps=1)


def test_config_refuses_an_action_loss_without_a_probe_or_along_chained_paths():
    with pytest.raises(ValueError, match="action_loss_weight needs action_probe"):
        DMDConfig(action_loss_weight=1.0)
    with pytest.raises(ValueError, match="window_anchor 'truth'"):
        DMDConfig(action_loss_weight=1.0, action_probe="p.safetensors", rollout_frames=42)
    with pytest.raises(ValueError, match="action_loss_weight must be >= 0"):
        DMDConfig(action_loss_weight=-1.0)
    with pytest.raises(ValueError, match="action_loss_balance .* needs action_loss_weight"):
        DMDConfig(action_loss_balance=True)
    with pytest.raises(ValueError, match="action_decoder .* needs action_loss_weight"):
        DMDConfig(action_decoder="decoder")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return save_tiny(root / "student", 2), save_tiny(root / "teacher", 1)


def test_the_action_loss_joins_the_generator_loss_with_its_weight(dirs, trained, decoder_dir, tmp_path):
    """Same step, same draws: the weighted run's generator loss is the plain run's plus the
    weight times the action loss it reports, and its update differs."""
    probe_path = save_probe(trained[0], tmp_path / "probe.safetensors")
    data = moving_clips(4)
    plain = DMDTrainer(*dirs, data, tmp_path / "plain", DMD)
    weighted = DMDTrainer(*dirs, data, tmp_path / "weighted",
                          dataclasses.replace(DMD, action_loss_weight=2.0, action_probe=str(probe_path)))
    balanced = DMDTrainer(*dirs, data, tmp_path / "balanced", dataclasses.replace(
        DMD, action_loss_weight=2.0, action_probe=str(probe_path), action_loss_balance=True))
    a, b, c = plain.train_step(), weighted.train_step(), balanced.train_step()
    assert c["generator_loss"] == pytest.approx(a["generator_loss"] + 2.0 * c["action_loss"], rel=1e-4, abs=1e-6)
    assert c["action_loss"] != pytest.approx(b["action_loss"])
    assert "action_loss" not in a and b["action_loss"] > 0 and 0 <= b["probe_forward_direction_accuracy"] <= 1
    assert b["generator_loss"] == pytest.approx(a["generator_loss"] + 2.0 * b["action_loss"], rel=1e-4, abs=1e-6)
    assert any(not torch.equal(v, weighted.student.state_dict()[k]) for k, v in plain.student.state_dict().items())
    decoded_path = save_probe(PoseProbe(width=4), tmp_path / "decoded.safetensors")
    decoded = DMDTrainer(*dirs, data, tmp_path / "decoded", dataclasses.replace(
        DMD, action_loss_weight=2.0, action_probe=str(decoded_path), action_decoder=str(decoder_dir)))
    d = decoded.train_step()
    assert d["generator_loss"] == pytest.approx(a["generator_loss"] + 2.0 * d["action_loss"], rel=1e-4, abs=1e-6)
    assert d["action_loss"] != pytest.approx(b["action_loss"])
    assert any(not torch.equal(v, decoded.student.state_dict()[k]) for k, v in weighted.student.state_dict().items())
    with pytest.raises(ValueError, match="camera motions"):
        DMDTrainer(*dirs, synthetic_clips(4), tmp_path / "no_motion",
                   dataclasses.replace(DMD, action_loss_weight=1.0, action_probe=str(probe_path)))
