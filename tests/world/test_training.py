"""Training, sampling and evaluation of the built-in world on CPU, at tiny sizes: the shared
training machinery (EMA, checkpoints, budget), the VAE and teacher jobs (outputs, exact
resume), the DiT inputs made from clips, the Euler sampler, the image metrics, the pose probe,
`evaluate_model` and the `lingbot-rt world train-vae / train-teacher / eval` commands."""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from lingbot_rt.cli import main
from lingbot_rt.model.checkpoint import load_model, save_model
from lingbot_rt.model.config import model_config
from lingbot_rt.model.controls import control_embedding, parse_action_string, poses_from_actions
from lingbot_rt.model.dit import CausalWanModel
from lingbot_rt.model.vae import VAEConfig, WanVAE
from lingbot_rt.model.sampler import NUM_TRAIN_TIMESTEPS, euler_sigmas, sample_euler
from lingbot_rt.world import pose_probe
from lingbot_rt.world.clips import load_clip_tensors
from lingbot_rt.world.data import generate_dataset
from lingbot_rt.world.evaluate import direction_accuracy, evaluate_model, image_metrics, teacher_sampler
from lingbot_rt.world.latents import condition_clips, pad_features, video_tensor
from lingbot_rt.world.metrics import psnr, ssim
from lingbot_rt.world.pose_probe import (GAP, MOTION_SCALE, PoseProbe, load_probe, relative_motion, save_probe,
                                         train_probe)
from lingbot_rt.world.text import world_text_encoder
from lingbot_rt.world.train_teacher import TEACHER_DIR, TeacherTrainConfig, flow_matching_loss, train_teacher
from lingbot_rt.world.train_vae import (VAE_CONFIG, VAE_WEIGHTS, VAETrainConfig, latent_statistics, load_trained_vae,
                                        sample_windows, train_vae)
from lingbot_rt.world.training import CHECKPOINT, EMA, LOG, Budget, load_checkpoint, read_log, save_checkpoint

NUM_CLIPS, FRAMES, SIZE = 2, 17, 64          # 17 frames -> 5 latent frames of 8x8
LATENT_SHAPE = (16, 5, 8, 8)
WORLD = model_config("world")


def vae_config(steps: int) -> VAETrainConfig:
    return VAETrainConfig(dim=8, batch_size=2, steps=steps, log_every=1, save_every=1, stats_windows=4,
                          episode_frames=9, window_frames=4)


def teacher_config(steps: int, **changes) -> TeacherTrainConfig:
    return TeacherTrainConfig(**{"batch_size": 2, "steps": steps, "log_every": 1, "save_every": 1,
                                 "warmup_steps": 10, **changes})


def load_state(run_dir) -> dict:
    return torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=False)


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# ---- shared fixtures: a tiny dataset, a 2-step VAE, the world's text encoder, DiT inputs ---------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("world") / "data", num_clips=NUM_CLIPS, frames_per_clip=FRAMES,
                            height=SIZE, width=SIZE, seed=3, progress=False)


@pytest.fixture(scope="module")
def clips(dataset):
    return load_clip_tensors(dataset)


@pytest.fixture(scope="module")
def vae_run(dataset, tmp_path_factory):
    return train_vae(dataset, tmp_path_factory.mktemp("vae") / "run", vae_config(2), device="cpu")


@pytest.fixture
def vae(vae_run):
    return load_trained_vae(vae_run)


@pytest.fixture(scope="module")
def text_encoder():
    return world_text_encoder()


@pytest.fixture(scope="module")
def conditioned(clips, vae_run, text_encoder):
    return condition_clips(clips, load_trained_vae(vae_run), text_encoder, WORLD.text_len, "cpu")


# ---- training.py --------------------------------------------------------------------------
def test_ema_decay_warms_up_to_the_set_decay():
    ema = EMA(nn.Linear(2, 2), 0.999)
    assert ema.decay_at(0) == pytest.approx(0.1)
    assert ema.decay_at(10) == pytest.approx(11 / 20)
    decays = [ema.decay_at(step) for step in range(0, 100_000, 97)]
    assert all(b >= a for a, b in zip(decays, decays[1:]))
    assert decays[-1] == 0.999 and max(decays) == 0.999
    with pytest.raises(ValueError, match="decay"):
        EMA(nn.Linear(2, 2), 1.0)


def test_ema_update_at_step_0_is_nine_tenths_new():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(model, 0.999)
    old = {k: v.clone() for k, v in ema.model.state_dict().items()}
    assert not any(p.requires_grad for p in ema.model.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()(torch.randn(8, 3))                   # moves the batch-norm running stats
    ema.update(model, step=0)
    new = model.state_dict()
    for name, param in ema.model.named_parameters():
        torch.testing.assert_close(param, 0.9 * new[name] + 0.1 * old[name])
        assert not torch.equal(param, new[name])
    for name, buffer in ema.model.named_buffers():     # buffers are copied, not averaged
        assert torch.equal(buffer, new[name]), name
    ema.update(model, step=10_000)                       # the set decay from then on
    for name, param in ema.model.named_parameters():
        expected = 0.999 * (0.9 * new[name] + 0.1 * old[name]) + 0.001 * new[name]
        torch.testing.assert_close(param, expected)


def _train_steps(model, optimizer, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(5, 3)).square().mean().backward()
        optimizer.step()


def test_checkpoint_round_trip_restores_model_ema_optimizer_and_rng(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema = EMA(model, 0.99)
    _train_steps(model, optimizer, 3)
    ema.update(model, 2)
    generator = torch.Generator().manual_seed(5)
    torch.rand(7, generator=generator)
    path = save_checkpoint(tmp_path, 3, model, ema, optimizer, generator, extra={"note": 1})
    assert path == tmp_path / CHECKPOINT and not list(tmp_path.glob("*.tmp"))
    expected_draw, expected_global = torch.rand(4, generator=generator), torch.rand(4)

    torch.manual_seed(1)                                  # a fresh run: other weights, no optimiser state
    model2 = nn.Linear(3, 2)
    optimizer2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    ema2 = EMA(model2, 0.99)
    generator2 = torch.Generator().manual_seed(123)
    assert load_checkpoint(tmp_path, model2, ema2, optimizer2, generator2) == {"step": 3, "extra": {"note": 1}}
    assert_same_tensors(model2.state_dict(), model.state_dict())
    assert_same_tensors(ema2.model.state_dict(), ema.model.state_dict())
    state, state2 = optimizer.state_dict(), optimizer2.state_dict()
    assert state["param_groups"] == state2["param_groups"]
    for index in state["state"]:
        assert_same_tensors(state["state"][index], state2["state"][index])
    assert torch.equal(torch.rand(4, generator=generator2), expected_draw)
    assert torch.equal(torch.rand(4), expected_global)    # the global RNG too
    # and training on gives the same weights
    torch.manual_seed(9)
    _train_steps(model, optimizer, 2)
    torch.manual_seed(9)
    _train_steps(model2, optimizer2, 2)
    assert_same_tensors(model2.state_dict(), model.state_dict())


def test_load_checkpoint_without_a_checkpoint_starts_at_step_0(tmp_path):
    model = nn.Linear(2, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert load_checkpoint(tmp_path, model, None, torch.optim.SGD(model.parameters(), lr=1.0),
                           torch.Generator()) == {"step": 0, "extra": {}}
    assert_same_tensors(model.state_dict(), before)


def test_budget_stops_at_steps_or_deadline():
    budget = Budget(3, None)
    assert [budget.done(step) for step in range(5)] == [False, False, False, True, True]
    assert not Budget(3, minutes=60).done(0)
    assert Budget(3, minutes=0).done(0)


# ---- train_vae.py ---------------------------------------------------------------------------
def test_train_vae_writes_weights_config_and_log(vae_run):
    for name in (VAE_WEIGHTS, VAE_CONFIG, LOG, CHECKPOINT, "train_config.json"):
        assert (vae_run / name).is_file(), name
    config = json.loads((vae_run / VAE_CONFIG).read_text())
    assert config["dim"] == 8 and config["z_dim"] == 16
    assert len(config["latent_mean"]) == 16 and len(config["latent_std"]) == 16
    assert all(math.isfinite(m) for m in config["latent_mean"]) and min(config["latent_std"]) > 0
    assert config["latent_mean"] != [0.0] * 16          # measured, not the defaults
    records = read_log(vae_run)
    assert [(r["step"], r["window"]) for r in records] == [(1, 0), (2, 1)]     # one episode of 2 windows
    assert all(math.isfinite(r[k]) for r in records for k in ("loss", "l1", "mse", "kl", "psnr", "grad_norm"))
    assert load_state(vae_run)["step"] == 2
    assert json.loads((vae_run / "train_config.json").read_text())["steps"] == 2


def test_trained_vae_encodes_and_decodes_a_clip(vae, clips):
    video = video_tensor(clips.frames[:1])
    assert video.shape == (1, 3, FRAMES, SIZE, SIZE) and -1 <= video.min() and video.max() <= 1
    with torch.no_grad():
        latents = vae.encode(video)
        frames = vae.decode(latents)
    assert latents.shape == (1, *LATENT_SHAPE) and torch.isfinite(latents).all()
    assert frames.shape == (1, 3, FRAMES, SIZE, SIZE) and frames.abs().max() <= 1


def test_vae_train_config_checks_its_windows():
    assert VAETrainConfig(episode_frames=81, window_frames=8).windows_per_episode == 10
    with pytest.raises(ValueError, match="window_frames must be a positive multiple of 4"):
        VAETrainConfig(window_frames=6)
    with pytest.raises(ValueError, match="episode_frames must be 1 \\+ a multiple of window_frames=8"):
        VAETrainConfig(episode_frames=80)


def test_train_vae_episode_longer_than_the_clips_says_so(dataset, tmp_path):
    with pytest.raises(ValueError, match="episode_frames=21 .* clips have 17"):
        train_vae(dataset, tmp_path, replace(vae_config(1), episode_frames=21), device="cpu")


def test_stream_detach_keeps_the_cache_and_cuts_its_graph(clips):
    torch.manual_seed(0)
    model = WanVAE(VAEConfig(dim=8))
    video = video_tensor(clips.frames[:1, :9])
    encoder, decoder = model.stream_encoder(), model.stream_decoder()
    z = encoder.moments(video[:, :, :5])[0]
    decoder.decode_raw(z)
    before = [c.clone() for c in encoder.cache + decoder.cache if c is not None]
    assert any(c.grad_fn is not None for c in encoder.cache + decoder.cache if c is not None)
    encoder.detach_()
    decoder.detach_()
    after = [c for c in encoder.cache + decoder.cache if c is not None]
    assert all(c.grad_fn is None for c in after)
    assert all(torch.equal(a, b) for a, b in zip(after, before)) and len(after) == len(before)
    # the stream goes on from the detached state exactly as from the attached one
    with torch.no_grad():
        whole = model.stream_encoder().moments(video)[0]
    torch.testing.assert_close(torch.cat([z, encoder.moments(video[:, :, 5:])[0]], 2).detach(), whole)


def test_load_trained_vae_without_a_finished_run_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-vae"):
        load_trained_vae(tmp_path)


def test_stored_latent_statistics_normalise_the_windows_they_were_measured_on(vae, clips):
    # train_vae measures the EMA VAE's mu on stats_windows=4 windows (one batch of 8) drawn with seed 1;
    # the stored VAE normalises those same windows to per-channel mean 0 and std 1
    windows = sample_windows(clips, 8, 9, torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = vae.encode(windows).transpose(0, 1).flatten(1)           # [16, N]
    torch.testing.assert_close(z.mean(1), torch.zeros(16), atol=1e-3, rtol=0)
    torch.testing.assert_close(z.std(1), torch.ones(16), atol=1e-3, rtol=0)
    # and latent_statistics on the stored weights gives the stored numbers again
    stored_mean, stored_std = vae.config.latent_mean, vae.config.latent_std
    mean, std = latent_statistics(vae, clips, 9, 4, torch.Generator().manual_seed(1))
    np.testing.assert_allclose(mean, stored_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(std, stored_std, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def vae_resumed(dataset, vae_run, tmp_path_factory):
    """(4 steps in one invocation, the 2-step vae_run continued to 4 by a second invocation)."""
    root = tmp_path_factory.mktemp("vae_resume")
    full = train_vae(dataset, root / "full", vae_config(4), device="cpu")
    split = root / "split"
    shutil.copytree(vae_run, split)
    train_vae(dataset, split, vae_config(4), device="cpu")
    return full, split


def test_train_vae_second_invocation_continues_from_the_checkpoint(vae_resumed):
    full, split = vae_resumed
    assert load_state(split)["step"] == 4
    full_log, split_log = read_log(full), read_log(split)
    assert [r["step"] for r in split_log] == [1, 2, 3, 4]
    assert split_log[:2] == full_log[:2]


def test_train_vae_resume_is_exact(vae_resumed):
    full, split = vae_resumed
    full_state, split_state = load_state(full), load_state(split)
    assert read_log(split) == read_log(full)
    assert_same_tensors(split_state["model"], full_state["model"])
    assert_same_tensors(split_state["ema"], full_state["ema"])


# ---- latents.py ---------------------------------------------------------------------------
def test_condition_clips_shapes(conditioned):
    n = NUM_CLIPS
    assert len(conditioned) == n
    assert conditioned.x0.shape == (n, *LATENT_SHAPE)
    assert conditioned.y.shape == (n, 20, *LATENT_SHAPE[1:])
    assert conditioned.control.shape == (n, WORLD.control_channels, *LATENT_SHAPE[1:]) == (n, 384, 5, 8, 8)
    assert conditioned.context.shape == (n, WORLD.text_len, WORLD.text_dim)
    assert conditioned.empty_context.shape == (WORLD.text_len, WORLD.text_dim)
    for tensor in (conditioned.x0, conditioned.y, conditioned.control, conditioned.context):
        assert tensor.dtype == torch.bfloat16 and torch.isfinite(tensor.float()).all()


def test_condition_clips_motion_is_the_camera_motion_between_latent_frames(conditioned, clips):
    """Latent frame t starts at video frame 4t: its motion to t + 1 is that of frames 4t -> 4t + 4,
    and a prefix of the clips keeps its pairs."""
    n, frames = NUM_CLIPS, LATENT_SHAPE[1]
    assert conditioned.motion.shape == (n, frames - 1, 4) and conditioned.motion.dtype == torch.float32
    poses = clips.poses[1].double()
    expected = relative_motion(poses[0:-4:4][:frames - 1], poses[4::4][:frames - 1]).float()
    torch.testing.assert_close(conditioned.motion[1], expected)
    assert conditioned.motion.abs().amax() > 0
    torch.testing.assert_close(conditioned.prefix(3).motion, conditioned.motion[:, :2])


def test_condition_clips_mask_and_image_latent(conditioned, clips, vae):
    mask, image_latent = conditioned.y[:, :4].float(), conditioned.y[:, 4:]
    assert (mask[:, :, 0] == 1).all() and (mask[:, :, 1:] == 0).all()
    frames = video_tensor(clips.frames)
    image_clip = torch.full_like(frames, -1.0)           # the first frame, then black
    image_clip[:, :, 0] = frames[:, :, 0]
    with torch.no_grad():
        expected, x0 = vae.encode(image_clip), vae.encode(frames)
    torch.testing.assert_close(image_latent, expected.to(torch.bfloat16), atol=1e-5, rtol=0)
    torch.testing.assert_close(conditioned.x0, x0.to(torch.bfloat16), atol=1e-5, rtol=0)
    # the encoder is causal: latent frame 0 sees video frame 0 only, which both share
    torch.testing.assert_close(image_latent[:, :, 0], conditioned.x0[:, :, 0], atol=1e-5, rtol=0)
    assert not torch.equal(image_latent[:, :, 1:], conditioned.x0[:, :, 1:])


def test_condition_clips_control_and_context(conditioned, clips, text_encoder):
    for index in range(NUM_CLIPS):
        expected = control_embedding(clips.poses[index, ::4].numpy(), clips.intrinsics[index].numpy(), SIZE, SIZE,
                                     "cam")
        assert torch.equal(conditioned.control[index], expected)
        features = text_encoder.encode([clips.prompts[index]])[0]
        assert torch.equal(conditioned.context[index], pad_features(features, WORLD.text_len).to(torch.bfloat16))
        assert conditioned.context[index, len(features):].abs().sum() == 0
    empty = pad_features(text_encoder.encode([""])[0], WORLD.text_len).to(torch.bfloat16)
    assert torch.equal(conditioned.empty_context, empty)
    assert not torch.equal(conditioned.context[0], conditioned.empty_context)


# ---- train_teacher.py -----------------------------------------------------------------------
class Recorder(nn.Module):
    """Stands in for the DiT: records its inputs; v = w * x_t (or `fn(...)` when given)."""

    def __init__(self, fn=None):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.fn, self.calls = fn, []

    def forward(self, x, t, context, y, control, attention="bidirectional"):
        self.calls.append(dict(x=x, t=t, context=context, y=y, control=control, attention=attention))
        return self.w * (x if self.fn is None else self.fn(x, t, context, y, control))


def test_flow_matching_loss_is_finite_and_trains_the_dit(conditioned):
    torch.manual_seed(0)
    model = CausalWanModel(WORLD)
    loss = flow_matching_loss(model, conditioned, torch.tensor([0, 1, 1]), teacher_config(1),
                              torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.head.head.weight.grad.abs().sum() > 0


def test_flow_matching_target_is_noise_minus_x0(conditioned):
    # an oracle that knows x0 predicts v = (x_t - x0) / sigma = eps - x0: its loss is zero
    index = torch.tensor([1, 0])
    x0 = conditioned.x0[index].float()
    model = Recorder(lambda x, t, *_: (x - x0) / (t / NUM_TRAIN_TIMESTEPS).view(-1, 1, 1, 1, 1))
    loss = flow_matching_loss(model, conditioned, index, teacher_config(1), torch.Generator().manual_seed(3))
    assert loss.item() < 1e-6
    t = model.calls[0]["t"]
    assert t.shape == (2,) and (t > 0).all() and (t < NUM_TRAIN_TIMESTEPS).all()
    assert torch.equal(model.calls[0]["y"], conditioned.y[index])


def test_flow_matching_dropout_uses_the_empty_prompt_and_zero_control(conditioned):
    index = torch.tensor([0, 1, 1, 0])
    model = Recorder()
    flow_matching_loss(model, conditioned, index, teacher_config(1, text_dropout=1.0, control_dropout=0.0),
                       torch.Generator().manual_seed(0))
    call = model.calls[-1]
    assert torch.equal(call["context"], conditioned.empty_context.expand(4, -1, -1))
    assert torch.equal(call["control"], conditioned.control[index])
    flow_matching_loss(model, conditioned, index, teacher_config(1, text_dropout=0.0, control_dropout=1.0),
                       torch.Generator().manual_seed(0))
    call = model.calls[-1]
    assert torch.equal(call["context"], conditioned.context[index])
    assert (call["control"] == 0).all() and call["control"].shape == conditioned.control[index].shape


@pytest.fixture(scope="module")
def teacher_runs(conditioned, tmp_path_factory):
    """(4 steps in one invocation, 2 steps then a second invocation to 4)."""
    root = tmp_path_factory.mktemp("teacher")
    full = train_teacher(conditioned, root / "full", teacher_config(4))
    split = train_teacher(conditioned, root / "split", teacher_config(2))
    assert load_state(split)["step"] == 2
    train_teacher(conditioned, split, teacher_config(4))
    return full, split


def test_train_teacher_writes_a_loadable_model_directory(teacher_runs, conditioned):
    full, _ = teacher_runs
    assert (full / TEACHER_DIR / "config.json").is_file() and (full / LOG).is_file()
    model = load_model(full / TEACHER_DIR, dtype=torch.float32)
    assert model.cfg == WORLD
    ema = {k: v.to(torch.bfloat16).float() for k, v in load_state(full)["ema"].items()}
    assert_same_tensors(model.state_dict(), ema)         # the EMA weights, stored in bf16
    with torch.no_grad():
        v = model(conditioned.x0[:1].float(), torch.tensor([500.0]), conditioned.context[:1], conditioned.y[:1],
                  conditioned.control[:1])
    assert v.shape == (1, *LATENT_SHAPE) and torch.isfinite(v).all()
    records = read_log(full)
    assert [r["step"] for r in records] == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in records)


def test_train_teacher_resume_is_exact(teacher_runs):
    full, split = teacher_runs
    full_state, split_state = load_state(full), load_state(split)
    assert split_state["step"] == full_state["step"] == 4
    assert read_log(split) == read_log(full)
    assert_same_tensors(split_state["model"], full_state["model"])
    assert_same_tensors(split_state["ema"], full_state["ema"])
    for index in full_state["optimizer"]["state"]:
        assert_same_tensors(split_state["optimizer"]["state"][index], full_state["optimizer"]["state"][index])


def test_train_teacher_init_starts_from_a_model_directory(teacher_runs, conditioned, tmp_path):
    full, _ = teacher_runs
    start = {k: v.float() for k, v in load_model(full / TEACHER_DIR, dtype=torch.float32).state_dict().items()}
    run = train_teacher(conditioned, tmp_path / "warm", teacher_config(1, lr=0.0, init=str(full / TEACHER_DIR)))
    state = load_state(run)
    assert_same_tensors(state["model"], start)             # lr 0: still exactly the init weights
    assert_same_tensors(state["ema"], start)
    assert json.loads((run / "train_config.json").read_text())["init"] == str(full / TEACHER_DIR)
    other = tmp_path / "other"
    save_model(CausalWanModel(model_config("tiny")), other)
    with pytest.raises(ValueError, match="--init .* holds a"):
        train_teacher(conditioned, tmp_path / "bad", teacher_config(1, init=str(other)))


# ---- sampler.py -----------------------------------------------------------------------------
@pytest.mark.parametrize("shift", [1.0, 3.0, 10.0])
def test_euler_sigmas_fall_from_1_to_0(shift):
    sigmas = euler_sigmas(6, shift)
    assert len(sigmas) == 7 and sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert all(b < a for a, b in zip(sigmas, sigmas[1:]))
    assert sigmas[3] == pytest.approx(shift * 0.5 / (1 + (shift - 1) * 0.5))
    if shift == 1.0:
        np.testing.assert_allclose(sigmas, np.linspace(1, 0, 7))
    with pytest.raises(ValueError, match="num_steps"):
        euler_sigmas(0, shift)


def _constant_field(x, t, context, y, control):
    """v = context[:, 0, 0] + control[:, 0, 0, 0, 0] per sample, times a fixed field."""
    per_sample = context[:, 0, 0] + (0 if control is None else control[:, 0, 0, 0, 0])
    return per_sample.view(-1, 1, 1, 1, 1) * FIELD


FIELD = torch.linspace(-1, 2, 16 * 3 * 4 * 4).view(16, 3, 4, 4)


def _inputs(a, b, ca=0.0, cb=0.0):
    context = torch.tensor([a, b]).view(2, 1, 1).expand(2, 4, 8).clone()
    control = torch.tensor([ca, cb]).view(2, 1, 1, 1, 1).expand(2, 6, 3, 4, 4).clone()
    return context, control


def test_sample_euler_of_a_constant_field_is_start_minus_v():
    # x += (s_next - s) v from s = 1 to 0 sums to x_start - v for a constant v
    noise = torch.randn(2, 16, 3, 4, 4) + 3.0
    model = Recorder(_constant_field)
    context, control = _inputs(0.5, -2.0, 0.25, 1.0)
    out = sample_euler(model, noise, context, None, control, num_steps=5, shift=3.0, attention="causal")
    v = torch.tensor([0.75, -1.0]).view(2, 1, 1, 1, 1) * FIELD
    torch.testing.assert_close(out, noise - v, atol=1e-5, rtol=1e-5)
    assert len(model.calls) == 5 and all(c["attention"] == "causal" for c in model.calls)
    timesteps = [c["t"] for c in model.calls]
    for t, sigma in zip(timesteps, euler_sigmas(5, 3.0)):
        assert t.shape == (2,) and torch.allclose(t, torch.tensor(sigma * NUM_TRAIN_TIMESTEPS))


def test_sample_euler_guidance_1_ignores_uncond():
    noise = torch.randn(2, 16, 3, 4, 4) + 3.0
    context, control = _inputs(0.5, -2.0)
    uncond_context, uncond_control = _inputs(7.0, 7.0, 7.0, 7.0)
    model = Recorder(_constant_field)
    out = sample_euler(model, noise, context, None, control, num_steps=3, guidance=1.0,
                       uncond_context=uncond_context, uncond_control=uncond_control)
    assert all(c["x"].shape[0] == 2 for c in model.calls)          # one pass, conditional only
    torch.testing.assert_close(out, noise - torch.tensor([0.5, -2.0]).view(2, 1, 1, 1, 1) * FIELD)


@pytest.mark.parametrize("guidance", [0.0, 3.0])
def test_sample_euler_guidance_combines_cond_and_uncond(guidance):
    noise = torch.randn(2, 16, 3, 4, 4) + 3.0
    context, control = _inputs(0.5, -2.0, 0.25, 1.0)
    uncond_context, uncond_control = _inputs(0.1, 0.2, -0.5, 0.0)
    model = Recorder(_constant_field)
    y = torch.randn(2, 20, 3, 4, 4)
    out = sample_euler(model, noise, context, y, control, num_steps=4, guidance=guidance,
                       uncond_context=uncond_context, uncond_control=uncond_control)
    v_cond, v_uncond = torch.tensor([0.75, -1.0]), torch.tensor([-0.4, 0.2])
    v = (v_uncond + guidance * (v_cond - v_uncond)).view(2, 1, 1, 1, 1) * FIELD
    torch.testing.assert_close(out, noise - v, atol=1e-5, rtol=1e-5)
    call = model.calls[0]
    assert call["x"].shape[0] == 4 and torch.equal(call["y"], torch.cat([y, y]))
    assert torch.equal(call["context"], torch.cat([context, uncond_context]))
    with pytest.raises(ValueError, match="uncond_context"):
        sample_euler(model, noise, context, y, control, num_steps=2, guidance=guidance)


# ---- metrics.py -----------------------------------------------------------------------------
def _frames(seed, shape=(3, 24, 32, 3)):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_direction_accuracy_counts_the_steps_that_turn_move_and_move_back():
    commanded = torch.tensor([[0.0, 0.2, 0.0, 0.0], [0.0, -0.2, 0.1, 0.0], [0.0, -0.2, 0.0, 0.0],
                              [0.0, 0.05, -0.1, 0.0]], dtype=torch.float64)
    estimated = torch.tensor([[0.0, 0.1, 0.0, 0.0], [0.0, 0.01, 0.2, 0.0], [0.0, -0.1, 0.0, 0.0],
                              [0.0, -0.3, 0.1, 0.0]], dtype=torch.float64)
    assert direction_accuracy(estimated, commanded) == {
        "yaw_direction_accuracy": 0.5, "forward_direction_accuracy": round(2 / 3, 4),
        "backward_direction_accuracy": 0.5, "turning_steps": 2, "moving_steps": 3, "backward_steps": 2}
    assert direction_accuracy(estimated[:1], commanded[:1])["backward_direction_accuracy"] is None


def test_psnr_identical_and_constant_offset():
    frames = _frames(0, (2, 3, 24, 32, 3)).clamp(10, 240)
    same = psnr(frames, frames)
    assert same.shape == (6,) and (same >= 90).all()
    shifted = frames + 5
    torch.testing.assert_close(psnr(shifted, frames), torch.full((6,), 20 * math.log10(255 / 5)))
    half = frames.clone()
    half[..., :16, :] += 10                                    # half the pixels off by 10: mse (10/255)^2 / 2
    torch.testing.assert_close(psnr(half, frames), torch.full((6,), 10 * math.log10(2 * 255**2 / 100)))


def test_image_metrics_take_psnr_of_the_mean_error_over_clips():
    truth = torch.randint(10, 240, (2, 49, 16, 16, 3), dtype=torch.uint8)
    frames = truth.clone()
    frames[1] += 5                                           # clip 0 exact, clip 1 off by 5 levels
    metrics = image_metrics(frames, truth)
    expected = 20 * math.log10(255 / 5) + 10 * math.log10(2)   # mean MSE (0 + (5/255)^2) / 2
    assert metrics["psnr_3s"] == metrics["psnr"] == pytest.approx(expected, abs=1e-3)
    assert metrics["psnr_frame_mean_3s"] == pytest.approx((100 + 20 * math.log10(255 / 5)) / 2, abs=1e-3)
    assert metrics["psnr_per_second"] == [pytest.approx(expected, abs=1e-3)] * 4     # frames 1-15, 16-31, 32-47, 48
    assert metrics["psnr_per_frame"] == [pytest.approx(expected, abs=0.01)] * 49
    assert metrics["ssim"] < 1 and metrics["ssim_3s"] == metrics["ssim"]


def test_ssim_identical_noisy_constant_and_bad_input():
    frames = _frames(1).clamp(40, 215)
    torch.testing.assert_close(ssim(frames, frames), torch.ones(3))
    noise = torch.randn(frames.shape, generator=torch.Generator().manual_seed(2))
    scores = [ssim((frames.float() + sigma * noise).round().clamp(0, 255).to(torch.uint8), frames).mean().item()
              for sigma in (2, 10, 40)]
    assert 1 > scores[0] > scores[1] > scores[2]
    # flat images: no variance, SSIM is the luminance term (2 a b + C1) / (a^2 + b^2 + C1)
    a, b = torch.full((1, 16, 16, 3), 51, dtype=torch.uint8), torch.full((1, 16, 16, 3), 153, dtype=torch.uint8)
    c1 = 0.01**2                     # (float32 E[x^2] - E[x]^2 leaves a variance of ~1e-8: 1e-4 slack)
    torch.testing.assert_close(ssim(a, b), torch.tensor([(2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)]),
                               atol=2e-4, rtol=0)
    with pytest.raises(ValueError, match="uint8"):
        ssim(frames.float(), frames.float())
    with pytest.raises(ValueError, match="uint8"):
        psnr(frames[..., :2], frames[..., :2])


# ---- pose_probe.py --------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["", "l-10,", "j-7,i-3,"])
@pytest.mark.parametrize("keys, expected", [
    ("w", (0.0, 0.2, 0.0, 0.0)), ("s", (0.0, -0.2, 0.0, 0.0)), ("d", (0.2, 0.0, 0.0, 0.0)),
    ("a", (-0.2, 0.0, 0.0, 0.0)), ("l", (0.0, 0.0, 8.0, 0.0)), ("j", (0.0, 0.0, -8.0, 0.0)),
    ("i", (0.0, 0.0, 0.0, 8.0)), ("k", (0.0, 0.0, 0.0, -8.0)), ("wd", (0.2, 0.2, 0.0, 0.0)),
])
def test_relative_motion_of_four_frames_of_a_key(prefix, keys, expected):
    actions = parse_action_string(f"{prefix}{keys}-{GAP}")
    poses = torch.from_numpy(poses_from_actions(actions))
    start = len(actions) - GAP
    motion = relative_motion(poses[start:start + 1], poses[start + GAP:start + GAP + 1])[0]
    assert motion.shape == (4,)
    expected = torch.tensor([expected[0], expected[1], math.radians(expected[2]), math.radians(expected[3])],
                            dtype=torch.float64)
    torch.testing.assert_close(motion, expected, atol=1e-5, rtol=0)


def test_pose_probe_motion_covers_every_pair(clips):
    torch.manual_seed(0)
    probe = PoseProbe(width=8).eval()
    frames = clips.frames[0]
    motion = probe.motion(frames)
    assert motion.shape == (FRAMES - GAP, 4)
    with torch.no_grad():
        expected = probe(frames[:1], frames[GAP:GAP + 1])[0] * MOTION_SCALE
    torch.testing.assert_close(motion[0], expected)


def test_train_probe_runs_and_moves_the_weights(clips):
    torch.manual_seed(0)
    init = PoseProbe().state_dict()
    probe = train_probe(clips, steps=3, batch_size=4, seed=0)
    assert not probe.training
    trained = probe.state_dict()
    assert init.keys() == trained.keys() and not all(torch.equal(init[k], trained[k]) for k in init)
    assert all(torch.isfinite(v).all() for v in trained.values())
    again = train_probe(clips, steps=3, batch_size=4, seed=0)
    assert_same_tensors(again.state_dict(), trained)


def test_probe_round_trips_through_safetensors_with_its_width(tmp_path):
    torch.manual_seed(0)
    probe = PoseProbe(width=8).eval()
    path = save_probe(probe, tmp_path / "probes" / "probe.safetensors", clips=3, steps=5)
    loaded = load_probe(path)
    assert not loaded.training and loaded.convs[0].out_channels == 8
    assert_same_tensors(loaded.state_dict(), probe.state_dict())
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"clips": "3", "steps": "5"}


def test_load_probe_refuses_what_is_not_a_probe(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-probe"):
        load_probe(tmp_path / "missing.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_probe(tmp_path / "garbage.safetensors")
    save_file({"weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not a pose probe"):
        load_probe(tmp_path / "other.safetensors")
    save_file({"convs.0.weight": torch.zeros(8, 32, 3, 3)}, tmp_path / "latent.safetensors")
    with pytest.raises(ValueError, match="must read two RGB frames"):
        load_probe(tmp_path / "latent.safetensors")
    state = PoseProbe(width=8).state_dict()
    del state["head.bias"]
    save_file(state, tmp_path / "short.safetensors")
    with pytest.raises(ValueError, match="head.bias"):
        load_probe(tmp_path / "short.safetensors")


def test_cli_train_probe_writes_the_probe_train_probe_makes(dataset, clips, tmp_path, capsys):
    out = tmp_path / "probe.safetensors"
    assert main(["world", "train-probe", "--data", str(dataset), "--out", str(out), "--clips", str(NUM_CLIPS),
                 "--steps", "2", "--batch-size", "4", "--width", "8", "--device", "cpu"]) == 0
    assert str(out) in capsys.readouterr().out
    assert_same_tensors(load_probe(out).state_dict(),
                        train_probe(clips, steps=2, batch_size=4, seed=0, width=8).state_dict())


# ---- evaluate.py ----------------------------------------------------------------------------
class OracleModel(nn.Module):
    """A 'DiT' that knows the clean latents: v = (x_t - x0) / sigma = eps - x0, so Euler sampling
    lands on x0 and the generated clips are the VAE's reconstructions."""

    def __init__(self, x0):
        super().__init__()
        self.cfg, self.x0 = WORLD, x0.float()

    def forward(self, x, t, context, y, control, attention="bidirectional"):
        x0 = self.x0.repeat(x.shape[0] // len(self.x0), 1, 1, 1, 1)
        return (x - x0) / (t / NUM_TRAIN_TIMESTEPS).view(-1, 1, 1, 1, 1)


def test_evaluate_teacher_report_and_files(clips, vae, text_encoder, conditioned, tmp_path):
    model = OracleModel(conditioned.x0)
    report = evaluate_model(teacher_sampler(model, num_steps=2, guidance=3.0), vae, text_encoder, clips,
                            PoseProbe(width=8).eval(), text_len=WORLD.text_len, out_dir=tmp_path / "eval")
    assert {"model", "copy_first_frame", "vae_reconstruction", "action_following"} <= report.keys()
    assert report["clips"] == NUM_CLIPS and report["frames"] == FRAMES and report["resolution"] == [SIZE, SIZE]
    for name in ("model", "copy_first_frame", "vae_reconstruction"):
        metrics = report[name]
        assert len(metrics["psnr_per_second"]) == len(metrics["ssim_per_second"]) == math.ceil(FRAMES / 16)
        assert len(metrics["psnr_per_frame"]) == FRAMES
    assert report["copy_first_frame"]["psnr_per_frame"][0] >= 90
    np.testing.assert_allclose(report["model"]["psnr_per_frame"], report["vae_reconstruction"]["psnr_per_frame"],
                               atol=0.05)
    following = report["action_following"]
    assert following.keys() == {"model", "true_frames"}
    assert following["model"]["moving_steps"] == following["true_frames"]["moving_steps"]
    assert json.loads((tmp_path / "eval" / "eval.json").read_text()) == report
    with Image.open(tmp_path / "eval" / "eval_strip.png") as strip:   # 2 rows per clip, frames 0, 8, 16
        assert strip.size == (3 * SIZE, 2 * NUM_CLIPS * SIZE)


def test_evaluate_teacher_runs_the_world_dit(clips, vae, text_encoder):
    torch.manual_seed(0)
    model = CausalWanModel(WORLD).eval()
    report = evaluate_model(teacher_sampler(model, num_steps=2), vae, text_encoder, clips,
                            PoseProbe(width=8).eval(), text_len=WORLD.text_len)
    assert report["sampler"] == {"kind": "teacher", "steps": 2, "shift": 3.0, "guidance": 3.0, "seed": 0}
    assert report["dit_flops_per_frame"] > 0
    assert math.isfinite(report["model"]["psnr"]) and math.isfinite(report["model"]["ssim"])


# ---- the commands -----------------------------------------------------------------------------
def test_cli_train_vae_train_teacher_eval(dataset, tmp_path, capsys, monkeypatch):
    vae_dir, teacher_dir, eval_dir = tmp_path / "vae", tmp_path / "teacher", tmp_path / "eval"
    assert main(["world", "train-vae", "--data", str(dataset), "--out", str(vae_dir), "--dim", "8",
                 "--episode-frames", "9", "--window-frames", "4", "--batch-size", "2", "--steps", "1",
                 "--max-clips", "2", "--device", "cpu"]) == 0
    assert (vae_dir / VAE_WEIGHTS).is_file() and (vae_dir / VAE_CONFIG).is_file()
    assert load_state(vae_dir)["step"] == 2           # whole episodes: 2 windows of 4 frames
    assert main(["world", "train-teacher", "--data", str(dataset), "--vae", str(vae_dir), "--out", str(teacher_dir),
                 "--batch-size", "2", "--steps", "1", "--device", "cpu"]) == 0
    assert load_model(teacher_dir / TEACHER_DIR, dtype=torch.float32).cfg == WORLD
    assert load_state(teacher_dir)["step"] == 1
    capsys.readouterr()
    eval_args = ["world", "eval", "--data", str(dataset), "--vae", str(vae_dir), "--teacher",
                 str(teacher_dir / TEACHER_DIR), "--probe-data", str(dataset), "--probe-steps", "1", "--clips", "2",
                 "--steps", "1", "--out", str(eval_dir), "--device", "cpu"]
    assert main(eval_args) == 0
    for name in ("eval.json", "eval_strip.png", "probe.safetensors"):
        assert (eval_dir / name).is_file(), name
    report = json.loads((eval_dir / "eval.json").read_text())
    assert report["clips"] == 2 and report["sampler"]["steps"] == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["psnr_3s"]["model"] == report["model"]["psnr_3s"]
    # a second eval reuses the stored probe instead of training one
    monkeypatch.setattr(pose_probe, "train_probe", lambda *a, **k: pytest.fail("probe retrained"))
    assert main(eval_args) == 0


def test_cli_eval_without_a_trained_vae_fails_cleanly(dataset, tmp_path, capsys):
    assert main(["world", "eval", "--data", str(dataset), "--vae", str(tmp_path / "none"), "--teacher",
                 str(tmp_path / "none"), "--probe-data", str(dataset), "--out", str(tmp_path / "eval"),
                 "--device", "cpu"]) == 2
    assert "train-vae" in capsys.readouterr().err
