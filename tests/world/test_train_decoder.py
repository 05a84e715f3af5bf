"""`world train-decoder` on CPU at tiny sizes: block frame slices, the config's checks, an
end-to-end run with its outputs and exact resume, and the held-out evaluation."""
from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch

from lingbot_rt.model.tiny_decoder import (
    DECODER_CONFIG,
    DECODER_WEIGHTS,
    TinyDecoder,
    load_tiny_decoder,
    tiny_decoder_config,
)
from lingbot_rt.model.vae import VAEConfig, WanVAE, save_vae
from lingbot_rt.world.clips import load_clip_tensors
from lingbot_rt.world.config import WorldConfig
from lingbot_rt.world.data import generate_dataset
from lingbot_rt.world.latents import video_tensor
from lingbot_rt.world.train_decoder import (
    DecoderTrainConfig,
    block_frames,
    evaluate_decoder,
    train_decoder,
    vae_targets,
)
from lingbot_rt.world.train_vae import VAE_CONFIG, VAE_WEIGHTS, load_trained_vae
from lingbot_rt.world.training import CHECKPOINT, read_log

# as tests/world/test_data.py: 3 clips of 9 frames (3 latent frames of 3x5)
SMALL = dict(num_clips=3, frames_per_clip=9, height=24, width=40, seed=5, shard_size=2,
             world=WorldConfig(grid_size=16), progress=False)


def tiny_config(steps: int, **changes) -> DecoderTrainConfig:
    return DecoderTrainConfig(**{"decoder": "tiny", "episode_latents": 3, "block_latents": 3, "batch_size": 2,
                                 "steps": steps, "log_every": 1, **changes})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("world") / "data", **SMALL)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """An untrained tiny VAE in `train_vae`'s output layout (as tests/world/test_shipped.py)."""
    root = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    config = VAEConfig(dim=8, latent_mean=(0.1,) * 16, latent_std=(0.5,) * 16)
    save_vae(WanVAE(config), root / VAE_WEIGHTS)
    (root / VAE_CONFIG).write_text(json.dumps(asdict(config)))
    return root


# ---- block frames --------------------------------------------------------------------------
@pytest.mark.parametrize("block_latents", [1, 3, 4])
def test_block_frames_partition_the_stream(block_latents):
    for num_blocks in (1, 2, 5):
        slices = [block_frames(i, block_latents) for i in range(num_blocks)]
        assert slices[0].start == 0
        assert all(a.stop == b.start for a, b in zip(slices, slices[1:]))
        assert slices[-1].stop == 1 + 4 * (num_blocks * block_latents - 1)
        lengths = [s.stop - s.start for s in slices]
        assert lengths == [4 * block_latents - 3] + [4 * block_latents] * (num_blocks - 1)


def test_block_frames_of_three_latent_blocks():
    assert block_frames(0, 3) == slice(0, 9)
    assert block_frames(1, 3) == slice(9, 21)
    assert block_frames(2, 3) == slice(21, 33)


def test_block_frames_match_the_tiny_stream():
    decoder = TinyDecoder(tiny_decoder_config("tiny")).eval()
    stream = decoder.stream_decoder()
    z = torch.randn(1, 16, 9, 2, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = decoder.stream_decoder().decode_raw(z)
        for index in range(3):
            block = stream.decode_raw(z[:, :, 3 * index:3 * (index + 1)])
            torch.testing.assert_close(block, whole[:, :, block_frames(index, 3)], atol=1e-6, rtol=0)


# ---- config --------------------------------------------------------------------------------
def test_config_frames_and_blocks():
    config = DecoderTrainConfig()
    assert config.episode_frames == 81 and config.blocks_per_episode == 7
    assert tiny_config(1, episode_latents=6).blocks_per_episode == 2


@pytest.mark.parametrize("changes,match", [
    (dict(episode_latents=7, block_latents=3), "multiple of block_latents"),
    (dict(episode_latents=3, block_latents=0), "multiple of block_latents"),
    (dict(decoder="huge"), "unknown tiny decoder config 'huge'"),
])
def test_config_rejects(changes, match):
    with pytest.raises(ValueError, match=match):
        DecoderTrainConfig(**changes)


# ---- targets -------------------------------------------------------------------------------
def test_vae_targets_are_the_vae_stream_of_normalised_means(dataset, vae_dir):
    vae = load_trained_vae(vae_dir)
    video = video_tensor(load_clip_tensors(dataset).frames[:2])
    latents, target = vae_targets(vae, video)
    assert latents.shape == (2, 16, 3, 3, 5) and target.shape == video.shape
    assert target.min() >= -1 and target.max() <= 1
    with torch.no_grad():
        mu, _ = vae.stream_encoder().moments(video)
        torch.testing.assert_close(latents, (mu - 0.1) / 0.5, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(target, vae.decode(latents), atol=1e-5, rtol=1e-5)


def test_evaluate_decoder_streams_partial_blocks(tmp_path, vae_dir):
    """17 frames = 5 latent frames: blocks of 3 leave a last block of 2; the stream's PSNRs do
    not depend on the block size (streamed = one call)."""
    data = generate_dataset(tmp_path / "data", **{**SMALL, "num_clips": 2, "frames_per_clip": 17})
    clips = load_clip_tensors(data)
    torch.manual_seed(0)
    decoder, vae = TinyDecoder(tiny_decoder_config("tiny")).eval(), load_trained_vae(vae_dir)
    reports = [evaluate_decoder(decoder, vae, clips, block_latents=n) for n in (1, 3, 5)]
    assert [r["block_latents"] for r in reports] == [1, 3, 5]
    assert all(r["clips"] == 2 and r["frames"] == 17 for r in reports)
    for key in ("psnr_tiny_vs_vae", "psnr_tiny_vs_frames", "psnr_vae_vs_frames"):
        assert math.isfinite(reports[0][key])
        assert all(r[key] == pytest.approx(reports[0][key], abs=1.1e-3) for r in reports), key


# ---- end to end ----------------------------------------------------------------------------
def test_train_decoder_writes_a_decoder_and_resumes(dataset, vae_dir, tmp_path):
    out = tmp_path / "decoder"
    assert train_decoder(dataset, vae_dir, out, tiny_config(2), heldout_clips=1, device="cpu") == out
    for name in (DECODER_WEIGHTS, DECODER_CONFIG, "eval.json", CHECKPOINT, "train_config.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "eval.json").read_text())
    assert report["step"] == 2 and report["clips"] == 1 and report["frames"] == 9
    for key in ("psnr_tiny_vs_vae", "psnr_tiny_vs_frames", "psnr_vae_vs_frames"):
        assert math.isfinite(report[key]), key
    decoder = load_tiny_decoder(out)
    assert decoder.config == tiny_decoder_config("tiny") and report["params"] == decoder.num_params()
    first = {k: v.clone() for k, v in decoder.state_dict().items()}
    assert [r["step"] for r in read_log(out)] == [1, 2]

    # the evaluation of the written decoder is reproducible from outside
    heldout = load_clip_tensors(dataset)
    heldout = type(heldout)(heldout.frames[-1:], heldout.poses[-1:], heldout.intrinsics[-1:], heldout.keys[-1:],
                            heldout.prompts[-1:], heldout.paths[-1:])
    again = evaluate_decoder(decoder, load_trained_vae(vae_dir), heldout, block_latents=3)
    for key in ("psnr_tiny_vs_vae", "psnr_tiny_vs_frames", "psnr_vae_vs_frames"):
        assert again[key] == pytest.approx(report[key], abs=2e-3), key

    train_decoder(dataset, vae_dir, out, tiny_config(4), heldout_clips=1, device="cpu")
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4]
    assert json.loads((out / "eval.json").read_text())["step"] == 4
    resumed = load_tiny_decoder(out).state_dict()
    assert any(not torch.equal(resumed[k], first[k]) for k in first), "steps 3-4 left the weights unchanged"


def test_resume_equals_an_uninterrupted_run(dataset, vae_dir, tmp_path):
    train_decoder(dataset, vae_dir, tmp_path / "split", tiny_config(1), heldout_clips=1, device="cpu")
    train_decoder(dataset, vae_dir, tmp_path / "split", tiny_config(3), heldout_clips=1, device="cpu")
    train_decoder(dataset, vae_dir, tmp_path / "full", tiny_config(3), heldout_clips=1, device="cpu")
    split, full = (load_tiny_decoder(tmp_path / name).state_dict() for name in ("split", "full"))
    for key in full:
        torch.testing.assert_close(split[key], full[key], atol=0, rtol=0, msg=key)
    assert read_log(tmp_path / "split") == read_log(tmp_path / "full")


def test_train_decoder_needs_training_clips(dataset, vae_dir, tmp_path):
    for heldout in (3, 4):
        with pytest.raises(ValueError, match="none to train on"):
            train_decoder(dataset, vae_dir, tmp_path / "out", tiny_config(1), heldout_clips=heldout, device="cpu")


def test_train_decoder_needs_long_enough_clips(dataset, vae_dir, tmp_path):
    with pytest.raises(ValueError, match="episode_latents=6 needs 21 frames"):
        train_decoder(dataset, vae_dir, tmp_path / "out", tiny_config(1, episode_latents=6), heldout_clips=1,
                      device="cpu")
