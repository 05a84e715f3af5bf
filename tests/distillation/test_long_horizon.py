"""Long-horizon DMD (`distillation/long_horizon.py`): rollouts past the KV window, the window's
conditions, and the trainer's steps on them (tiny models, CPU)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import replace

import pytest
import torch

from lingbot_rt.distillation.action_loss import LatentMotionProbe
from lingbot_rt.distillation.config import DMDConfig
from lingbot_rt.distillation.distributed import Ranks
from lingbot_rt.distillation.job import DMDJob, run_job
from lingbot_rt.distillation.long_horizon import (
    decoded_first_frame,
    long_controls,
    long_image_condition,
    rollout_lengths,
    window_conditions,
)
from lingbot_rt.distillation.self_forcing import student_rollout
from lingbot_rt.distillation.trainer import DMDTrainer
from lingbot_rt.model.checkpoint import load_model
from lingbot_rt.model.vae import WanVAE, vae_config
from lingbot_rt.world.latents import image_condition
from lingbot_rt.world.pose_probe import save_probe

from .helpers import (
    LATENT_HW,
    NUM_FRAMES,
    SCHEDULE,
    load_clips,
    save_tiny,
    synthetic_clips,
    tiny_model,
)

LONG = 12            # 4 blocks of 3 over 1 sink + 3 window slots: the cache rolls twice
DMD = DMDConfig(batch_size=2, steps=4, update_ratio=2, log_every=1, save_every=2, student=SCHEDULE, rollout_frames=LONG)
COMPRESSED = replace(SCHEDULE, full_frames=1, memory_pool=(2, 2))     # the rolling ring pools its leaving frames


@pytest.fixture(scope="module")
def data():
    return synthetic_clips(4)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return WanVAE(vae_config("tiny")).eval()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return save_tiny(root / "student", 2), save_tiny(root / "teacher", 1)


def _long_rollout(model, data, frames: int, exit_step, grad_from: int = 0, schedule=SCHEDULE) -> torch.Tensor:
    index = torch.tensor([0, 1])
    control = long_controls(data, index, frames, torch.Generator().manual_seed(1)).float()
    y = long_image_condition(data.y[index], frames).float()
    return student_rollout(model, data.context[index].float(), y, control, schedule.schedule(), schedule.cache(),
                           torch.Generator().manual_seed(0), exit_step=exit_step, grad_from=grad_from)


@pytest.mark.parametrize("schedule", [SCHEDULE, COMPRESSED], ids=["full", "compressed"])
def test_context_blocks_stream_as_inference_and_only_the_window_takes_gradient(data, schedule):
    model = tiny_model(2)
    x = _long_rollout(model, data, LONG, exit_step=0, grad_from=LONG - NUM_FRAMES, schedule=schedule)
    with torch.no_grad():
        inference = _long_rollout(model, data, LONG, exit_step=None, schedule=schedule)
    context = LONG - NUM_FRAMES
    torch.testing.assert_close(x[:, :, :context].detach(), inference[:, :, :context], rtol=0, atol=0)
    assert not torch.equal(x[:, :, context:].detach(), inference[:, :, context:])   # exit at step 0
    x[:, :, :context].sum().backward(retain_graph=True)
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())
    x[:, :, context:].square().mean().backward()
    assert sum(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in model.parameters()) > 10
    with pytest.raises(ValueError, match="grad_from must be a block boundary"):
        _long_rollout(model, data, LONG, exit_step=0, grad_from=4)


def test_long_controls_and_condition_continue_the_clips(data):
    index = torch.tensor([2, 0])
    control = long_controls(data, index, 14, torch.Generator().manual_seed(0))
    assert control.shape[2] == 14
    torch.testing.assert_close(control[:, :, :NUM_FRAMES], data.control[index], rtol=0, atol=0)
    motions = data.control[:, :, 1:]          # every later frame is a motion (frames 1..F-1) of some clip
    for b in range(2):
        for f in range(NUM_FRAMES, 14):
            segment = (f - NUM_FRAMES) % (NUM_FRAMES - 1)
            assert any(torch.equal(control[b, :, f], motions[c, :, segment]) for c in range(len(data)))
    y = long_image_condition(data.y[index], 10)
    torch.testing.assert_close(y[:, :, :NUM_FRAMES], data.y[index], rtol=0, atol=0)
    assert all(torch.equal(y[:, :, f], data.y[index][:, :, -1]) for f in range(NUM_FRAMES, 10))
    assert rollout_lengths(6, 12, 3) == [6, 9, 12]
    with pytest.raises(ValueError, match=r"rollout_frames \(4\) must be at least the clips' 6"):
        rollout_lengths(6, 4, 3)


def test_window_conditions_are_a_clip_starting_at_the_windows_decoded_first_frame(data, vae):
    index = torch.tensor([1, 3])
    window = torch.randn(2, 16, NUM_FRAMES, *LATENT_HW, generator=torch.Generator().manual_seed(0))
    control = torch.randn(data.control[index].shape).to(data.control.dtype)
    image = decoded_first_frame(vae, window)
    cond = window_conditions(vae, image, control, data, index)
    with torch.no_grad():
        torch.testing.assert_close(image, vae.decode(window[:, :, :1])[:, :, 0].clamp(-1, 1), rtol=0, atol=0)
        expected = image_condition(vae, image, 4 * (NUM_FRAMES - 1) + 1)
    assert cond.y.shape == data.y[index].shape and cond.y.dtype == data.y.dtype
    torch.testing.assert_close(cond.y, expected.to(data.y.dtype), rtol=0, atol=0)
    assert cond.y[:, :4, 0].eq(1).all() and cond.y[:, :4, 1:].eq(0).all()
    torch.testing.assert_close(cond.control[:, :, 0], data.control[index][:, :, 0], rtol=0, atol=0)
    torch.testing.assert_close(cond.control[:, :, 1:], control[:, :, 1:], rtol=0, atol=0)
    torch.testing.assert_close(cond.context, data.context[index], rtol=0, atol=0)


@pytest.mark.parametrize("schedule", [SCHEDULE, COMPRESSED], ids=["full", "compressed"])
def test_a_long_horizon_step_trains_the_student_and_the_critic_on_a_window(dirs, data, vae, tmp_path, schedule):
    trainer = DMDTrainer(*dirs, data, tmp_path / "dmd", replace(DMD, student=schedule), vae=vae)
    assert trainer.lengths == [6, 9, 12]
    student = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    critic = {k: v.clone() for k, v in trainer.critic.state_dict().items()}
    records = [trainer.train_step() for _ in range(4)]
    assert {r["rollout_frames"] for r in records} <= {6, 9, 12} and any(r["rollout_frames"] > 6 for r in records)
    for r in records:
        assert all(torch.isfinite(torch.tensor(r[k])) for k in r if k.endswith("loss"))
    assert any(not torch.equal(v, trainer.student.state_dict()[k]) for k, v in student.items())
    assert any(not torch.equal(v, trainer.critic.state_dict()[k]) for k, v in critic.items())


def test_long_horizon_dmd_resumes_bit_identically_and_needs_the_vae(dirs, data, vae, tmp_path):
    DMDTrainer(*dirs, data, tmp_path / "straight", DMD, vae=vae).train(progress=False)
    DMDTrainer(*dirs, data, tmp_path / "resumed", replace(DMD, steps=2), vae=vae).train(progress=False)
    DMDTrainer(*dirs, data, tmp_path / "resumed", DMD, vae=vae).train(progress=False)
    logs = [[json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
            for run in ("straight", "resumed")]
    assert logs[0] == logs[1] and len(logs[0]) == 4
    recorded = json.loads((tmp_path / "resumed" / "train_config.json").read_text())
    assert recorded["rollout_frames"] == LONG and recorded["student"]["guidance"] == SCHEDULE.guidance
    assert recorded["sources"]["student"] == str(dirs[0])
    straight, resumed = (load_model(tmp_path / run / "student").state_dict() for run in ("straight", "resumed"))
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    with pytest.raises(ValueError, match="needs the data's VAE"):
        DMDTrainer(*dirs, data, tmp_path / "novae", DMD)
    with pytest.raises(ValueError, match="rollout_frames and score_frames must be >= 0"):
        DMDConfig(rollout_frames=-3)


def test_image_condition_streams_bitwise_the_whole_clip_encode(vae):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    clip = torch.full((2, 3, 13, 32, 32), -1.0)
    clip[:, :, 0] = images
    with torch.no_grad():
        whole = vae.encode(clip)
    y = image_condition(vae, images, 13)
    torch.testing.assert_close(y[:, 4:], whole, rtol=0, atol=0)
    assert y[:, :4, 0].eq(1).all() and y[:, :4, 1:].eq(0).all()
    with pytest.raises(ValueError, match="4n\\+1 video frames, got 12"):
        image_condition(vae, images, 12)


def test_a_job_loads_the_vae_only_for_long_horizon_rollouts(dirs, vae, tmp_path):
    loads = []

    def load_vae(device):
        loads.append(device)
        return vae

    for name, config in (("plain", replace(DMD, rollout_frames=0, steps=1)), ("long", replace(DMD, steps=1))):
        job = DMDJob(str(dirs[0]), str(dirs[1]), str(tmp_path / name), load_clips, config, load_vae=load_vae)
        run_job(job, Ranks(), torch.device("cpu"), progress=False)
    assert loads == [torch.device("cpu")]
    records = [json.loads(line) for line in (tmp_path / "long" / "log.jsonl").read_text().splitlines()]
    assert records[0]["rollout_frames"] in (6, 9, 12)
    assert "rollout_frames" not in (tmp_path / "plain" / "log.jsonl").read_text()


def _with_starts(clips, seed: int = 0):
    """The clips with random start images (32x32: the tiny VAE's pixels for a 4x4 latent)."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, 256, (len(clips), clips.num_frames, 32, 32, 3), generator=g, dtype=torch.uint8)
    return dataclasses.replace(clips, starts=starts)


def test_truth_anchored_windows_stream_along_long_clips_and_condition_on_their_frames(dirs, vae, tmp_path):
    """... and the action loss scores a window against the motions of its own frames."""
    long_clips = _with_starts(synthetic_clips(4, frames=LONG))
    motion = torch.randn(4, LONG - 1, 4, generator=torch.Generator().manual_seed(2))
    long_clips = dataclasses.replace(long_clips, motion=motion)
    probe = save_probe(LatentMotionProbe(width=4), tmp_path / "probe.safetensors")
    config = replace(DMD, window_anchor="truth", score_frames=NUM_FRAMES, action_loss_weight=1.0, action_probe=str(probe))
    trainer = DMDTrainer(*dirs, long_clips, tmp_path / "dmd", config, vae=vae)
    assert trainer.lengths == [6, 9, 12] and trainer.clips.num_frames == NUM_FRAMES
    index, length = torch.tensor([3, 1]), 9
    with torch.no_grad():
        window, cond, first, motion = trainer._rollout(index, length, exit_step=1,
                                                       generator=torch.Generator().manual_seed(0))
        start = length - NUM_FRAMES
        expected = image_condition(vae, long_clips.start_images(index, start), 4 * (NUM_FRAMES - 1) + 1)
    assert window.shape[2] == NUM_FRAMES and first == 1
    torch.testing.assert_close(cond.y, expected.to(cond.y.dtype), rtol=0, atol=0)
    torch.testing.assert_close(cond.control[:, :, 1:], long_clips.control[index][:, :, start + 1:length],
                               rtol=0, atol=0)
    torch.testing.assert_close(motion, long_clips.motion[index, start:length - 1], rtol=0, atol=0)
    records = [trainer.train_step() for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(r["critic_loss"])) for r in records)
    assert torch.isfinite(torch.tensor(records[0]["action_loss"]))
    with pytest.raises(ValueError, match="clips of at least 12 latent frames"):
        DMDTrainer(*dirs, synthetic_clips(4), tmp_path / "short", config, vae=vae)
    with pytest.raises(ValueError, match="loaded with their start images"):
        DMDTrainer(*dirs, synthetic_clips(4, frames=LONG), tmp_path / "nostarts", config, vae=vae)
    with pytest.raises(ValueError, match="window_anchor must be one of"):
        DMDConfig(window_anchor="teacher")


def test_a_prefix_of_clips_is_what_a_clip_that_short_holds(data):
    long_clips = _with_starts(synthetic_clips(4, frames=LONG))
    short = long_clips.prefix(NUM_FRAMES)
    assert short.num_frames == NUM_FRAMES and short.starts.shape[1] == NUM_FRAMES
    torch.testing.assert_close(short.control, long_clips.control[:, :, :NUM_FRAMES], rtol=0, atol=0)
    images = long_clips.start_images(torch.tensor([0]), 2)
    assert images.shape == (1, 3, 32, 32) and -1 <= images.min() and images.max() <= 1
    with pytest.raises(ValueError, match="a prefix of 13 latent frames of clips of 12"):
        long_clips.prefix(13)
    with pytest.raises(ValueError, match="loaded without their frames"):
        data.start_images(torch.tensor([0]), 0)
