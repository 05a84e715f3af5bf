"""The streaming pipeline end to end on a tiny release (pytest), and the seed's script:

    python tests/test_streaming.py --num_frames 10      # prints frames/s and shapes
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lingbot_rt.model.controls import KEYS, MOVE_PER_FRAME, control_embedding, parse_action_string
from lingbot_rt.model.image_condition import ImageCondition, ImageError, load_image
from lingbot_rt.pipeline import StreamConfig, StreamingInference
from lingbot_rt.pipeline.streaming import CapacityError, latent_frame_ends
from lingbot_rt.pipeline.tiny_checkpoint import make_tiny_checkpoint


def start_image(height: int = 80, width: int = 96, seed: int = 0) -> np.ndarray:
    """A smooth colourful image (not noise), uint8 [H, W, 3]."""
    rows, cols = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    phase = np.random.RandomState(seed).rand(3) * 6
    channels = [np.sin(6 * rows + phase[c]) * np.cos(4 * cols - phase[c]) for c in range(3)]
    return ((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("release") / "tiny")


@pytest.fixture(scope="module")
def pipeline(release) -> StreamingInference:
    return StreamingInference.from_release(release, StreamConfig(max_sessions=2), dtype=torch.float32)


def run(pipeline, actions=None, num_frames=None, seed=0, image=None):
    image = start_image() if image is None else image
    return list(pipeline.stream_generate(image, "a red car in the snow", actions, num_frames=num_frames, seed=seed))


# ---- frames, determinism, actions ----------------------------------------------------------

def test_frame_count_blocks_and_shapes(pipeline):
    blocks = run(pipeline, "w-10,d-5")                 # 15 actions -> 16 frames
    assert [b.first_frame for b in blocks] == [0, 9]
    assert [len(b.frames) for b in blocks] == [9, 7]
    for b in blocks:
        assert b.frames.dtype == np.uint8 and b.frames.shape[1:] == (64, 64, 3)
        assert b.actions.shape == (len(b.frames), len(KEYS)) and b.poses.shape == (len(b.frames), 4, 4)
    blocks = run(pipeline, num_frames=30)              # no keys, given length: 9 + 12 + 9
    assert [len(b.frames) for b in blocks] == [9, 12, 9]
    assert pipeline.free_slots == 2                    # finished streams give their slot back


def test_deterministic_under_seed(pipeline):
    a, b, c = (np.concatenate([blk.frames for blk in run(pipeline, "w-12,l-8", seed=s)]) for s in (7, 7, 8))
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1


def test_action_change_alters_next_block_not_current(pipeline):
    """Keys read by a live source: a change while block 1 is generated shows in block 2 only."""
    def keys_switching_after(num_reads):
        reads = []

        def read():
            reads.append(None)
            return "w" if len(reads) > num_reads else ""
        return read

    still = run(pipeline, keys_switching_after(10), num_frames=45)     # never presses W
    moved = run(pipeline, keys_switching_after(2), num_frames=45)      # W from the 3rd block on
    for index in (0, 1):
        assert np.array_equal(still[index].frames, moved[index].frames)
        assert np.array_equal(still[index].poses, moved[index].poses)
    assert not np.array_equal(still[2].frames, moved[2].frames)
    forward = moved[2].poses[-1][:3, 3] - moved[1].poses[-1][:3, 3]
    np.testing.assert_allclose(forward, [0, 0, 12 * MOVE_PER_FRAME], atol=1e-5)   # 12 frames of W


def test_scripted_actions_drive_the_poses_frame_by_frame(pipeline):
    blocks = run(pipeline, "w-10,d-5")
    poses = np.concatenate([b.poses for b in blocks])
    np.testing.assert_allclose(poses[0], np.eye(4))
    np.testing.assert_allclose(poses[10][:3, 3], [0, 0, 10 * MOVE_PER_FRAME], atol=1e-5)
    np.testing.assert_allclose(poses[15][:3, 3], [5 * MOVE_PER_FRAME, 0, 10 * MOVE_PER_FRAME], atol=1e-5)
    actions = np.concatenate([b.actions for b in blocks])
    assert actions[0].sum() == 0 and actions[1:11, KEYS.index("w")].all() and actions[11:, KEYS.index("d")].all()


def test_block_controls_equal_the_whole_clip_embedding(pipeline):
    """Per-block ray controls, chained through each block's previous latent pose, equal one
    embedding of all the clip's latent poses."""
    session = pipeline.open_session(start_image(), "a road")
    try:
        per_block, latent_poses = [], []
        for actions in ("w-8", "l-6,w-6", "d-4,i-8"):
            plan = pipeline.plan(session, parse_action_string(actions))
            per_block.append(pipeline._control(session, plan))
            latent_poses.append(plan.poses[latent_frame_ends(plan.num_frames)])
            pipeline.denoise([session], [plan])
        whole = control_embedding(np.concatenate(latent_poses), pipeline.intrinsics, 64, 64, "cam")
        torch.testing.assert_close(torch.cat(per_block, 1), whole)
    finally:
        pipeline.close_session(session)


def test_batched_sessions_match_sessions_alone(pipeline):
    """Two sessions at different positions in one batch give what each gives alone."""
    def fresh(seed):
        return pipeline.open_session(start_image(seed=seed), "a city at night", seed=seed)

    def plan_w(session):
        first, num = pipeline.actions_needed(session)
        return pipeline.plan(session, np.tile(np.eye(len(KEYS), dtype=np.float32)[0], (num, 1)))

    a = fresh(1)
    a_block0 = pipeline.denoise([a], [plan_w(a)])
    a_alone = pipeline.denoise([a], [plan_w(a)])                      # a's second block, alone
    b = fresh(2)
    b_alone = pipeline.denoise([b], [plan_w(b)])                      # b's first block, alone
    for s in (a, b):
        pipeline.close_session(s)

    a, b = fresh(1), fresh(2)
    torch.testing.assert_close(pipeline.denoise([a], [plan_w(a)]), a_block0)
    batched = pipeline.denoise([a, b], [plan_w(a), plan_w(b)])        # a at block 1, b at block 0
    for s in (a, b):
        pipeline.close_session(s)
    torch.testing.assert_close(batched[0], a_alone[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batched[1], b_alone[0], atol=1e-4, rtol=1e-4)


# ---- the I2V condition -----------------------------------------------------------------------

def test_image_condition_equals_whole_clip_encode(pipeline):
    """Lazily extended y equals VAE(image + black frames) frame for frame, through the point
    where it stops encoding, and the mask marks latent frame 0 only."""
    vae = pipeline.vae
    image = load_image(start_image(), 64, 64)
    num_latents = 36              # the tiny VAE's black latents repeat from latent frame 30 on
    clip = torch.cat([image[:, None], torch.full((3, 4 * (num_latents - 1), 64, 64), -1.0)], 1)
    with torch.no_grad():
        whole = vae.encode(clip[None])[0]                             # [16, 36, 8, 8]
    condition = ImageCondition(vae, image, "cpu")
    blocks = [condition.block(first, 3) for first in range(0, num_latents, 3)]
    y = torch.cat(blocks, 1)
    assert condition.is_steady, "the tiny VAE's black latents should repeat within 36 latent frames"
    torch.testing.assert_close(y[4:], whole, atol=1e-5, rtol=1e-5)
    assert (y[:4, 0] == 1).all() and (y[:4, 1:] == 0).all()
    with pytest.raises(ValueError, match="already released"):
        condition.block(0, 3)


# ---- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("image, message", [
    (Image.new("RGBA", (96, 96)), "mode 'RGBA'"),
    (Image.new("CMYK", (96, 96)), "mode 'CMYK'"),
    (np.zeros((20, 20, 3), np.uint8), "enlarge"),
    (np.zeros((96, 96), np.uint8), r"uint8 \[H, W, 3\]"),
    (np.zeros((96, 96, 3), np.float32), r"uint8 \[H, W, 3\]"),
    ("/nonexistent/start.jpg", "does not exist"),
    (42, "must be a path"),
])
def test_bad_image_is_refused_clearly(pipeline, image, message):
    with pytest.raises(ImageError, match=message):
        pipeline.open_session(image, "a forest")
    assert pipeline.free_slots == 2


def test_greyscale_image_is_accepted():
    pixels = load_image(Image.new("L", (64, 64), color=255), 64, 64)
    assert pixels.shape == (3, 64, 64) and torch.all(pixels == 1)


@pytest.mark.parametrize("actions, error, message", [
    ("w-10,x-5", ValueError, r"unknown key\(s\) \['x'\]"),
    ("w10", ValueError, "expected <keys>-<positive frame count>"),
    ("w-0", ValueError, "expected <keys>-<positive frame count>"),
    ("", ValueError, "empty"),
    (np.zeros((10, 4)), ValueError, r"multi-hot array \[F, 8\]"),
    (np.full((10, 8), 0.5), ValueError, "every entry 0 or 1"),
    (lambda: "wq", ValueError, "unknown key 'q'"),
    (3.5, TypeError, "actions must be"),
])
def test_bad_actions_are_refused_clearly(pipeline, actions, error, message):
    with pytest.raises(error, match=message):
        run(pipeline, actions, num_frames=20)
    assert pipeline.free_slots == 2


def test_full_pool_is_refused_and_slots_come_back(pipeline):
    sessions = [pipeline.open_session(start_image(), "a") for _ in range(2)]
    with pytest.raises(CapacityError, match="all 2 session slots are in use"):
        pipeline.open_session(start_image(), "b")
    pipeline.close_session(sessions[0])
    with pytest.raises(ValueError, match="already closed"):
        pipeline.close_session(sessions[0])
    pipeline.close_session(sessions[1])
    assert pipeline.free_slots == 2


def test_stream_config_yaml(tmp_path):
    path = tmp_path / "stream.yaml"
    path.write_text("height: 128\nwidth: 128\nschedule_indices: [0, 500]\nshift: 5\ncommit: last_step\n")
    config = StreamConfig.from_yaml(path)
    assert config == replace(StreamConfig(), height=128, width=128, schedule_indices=(0, 500), shift=5.0,
                             commit="last_step")
    path.write_text("heigth: 128\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['heigth'\]"):
        StreamConfig.from_yaml(path)
    path.write_text("height: 100\n")
    with pytest.raises(ValueError, match="multiples of 16"):
        StreamConfig.from_yaml(path)


# ---- the seed's script ---------------------------------------------------------------------

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="stream a few frames and print frames/s and shapes")
    parser.add_argument("--num_frames", type=int, default=10)
    parser.add_argument("--checkpoint", help="release root (default: a tiny random one in a temp dir)")
    parser.add_argument("--actions", default="w-8,l-8,d-8,none-8")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.checkpoint or make_tiny_checkpoint(Path(tmp) / "tiny")
        dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
        pipeline = StreamingInference.from_release(root, device=args.device, dtype=dtype)
        start, total = time.perf_counter(), 0
        for block in pipeline.stream_generate(start_image(), "a fantasy world", args.actions,
                                              num_frames=args.num_frames):
            total += len(block.frames)
            print(f"block {block.index}: frames {tuple(block.frames.shape)} {block.frames.dtype}, "
                  f"poses {tuple(block.poses.shape)}, denoise {block.timings['denoise'] * 1e3:.0f} ms, "
                  f"decode {block.timings['decode'] * 1e3:.0f} ms")
        seconds = time.perf_counter() - start
        print(f"{total} frames of {pipeline.height}x{pipeline.width} in {seconds:.2f} s: "
              f"{total / seconds:.1f} frames/s on {args.device}")


if __name__ == "__main__":
    main()


def test_fused_qkv_and_compile_options_transform_the_pipelines_dit(release):
    """The serving options: `fused_qkv` streams the same frames; `compile` compiles every block
    (compiled lazily at the first pass, which this CPU test does not run)."""
    plain = StreamingInference.from_release(release, StreamConfig(), dtype=torch.float32)
    fused = StreamingInference.from_release(release, StreamConfig(fused_qkv=True), dtype=torch.float32)
    assert all(block.self_attn.qkv_fused is not None for block in fused.dit.blocks)
    for a, b in zip(run(plain, num_frames=21), run(fused, num_frames=21)):
        np.testing.assert_allclose(a.frames.astype(np.int16), b.frames.astype(np.int16), atol=1)
    compiled = StreamingInference.from_release(release, StreamConfig(compile="reduce-overhead"), dtype=torch.float32)
    assert all(block._compiled_call_impl is not None for block in compiled.dit.blocks)
    assert compiled.vae.decoder._compiled_call_impl is not None
    assert all(hasattr(run, "_torchdynamo_orig_callable") for run, _ in compiled.vae.encoder.steps)
    with pytest.raises(ValueError, match="compile must be one of"):
        StreamConfig(compile="fast")


def test_command_line_stream_options_override_the_release_config(release):
    from lingbot_rt.cli import _stream_config, build_parser
    args = build_parser().parse_args(["generate", "--checkpoint", str(release), "--image", "x.png", "--prompt", "p",
                                      "--actions", "w-4", "--out", "o.mp4", "--commit", "last_step",
                                      "--compile", "default", "--fused-qkv", "--height", "32"])
    config = _stream_config(args)
    assert (config.commit, config.compile, config.fused_qkv, config.height, config.width) == \
        ("last_step", "default", True, 32, 64)
    unchanged = _stream_config(build_parser().parse_args(["generate", "--checkpoint", str(release), "--image", "x.png",
                                                          "--prompt", "p", "--actions", "w-4", "--out", "o.mp4"]))
    assert (unchanged.commit, unchanged.compile, unchanged.fused_qkv) == ("clean", "off", False)


def test_the_vae_decodes_in_the_dits_dtype_unless_told(release):
    """One dtype knob for both models by default (bf16 on a GPU); `vae_dtype` (`--vae-dtype fp32`,
    upstream's choice) separates them. In bf16 the VAE streams within a few levels of fp32."""
    from lingbot_rt.pipeline.release import load_release
    assert load_release(release, dtype=torch.bfloat16).vae.dtype == torch.bfloat16
    assert load_release(release, dtype=torch.float32).vae.dtype == torch.float32
    mixed = StreamingInference.from_release(release, StreamConfig(), dtype=torch.float32, vae_dtype=torch.bfloat16)
    assert (mixed.dit.dtype, mixed.vae.dtype) == (torch.float32, torch.bfloat16)
    plain = StreamingInference.from_release(release, StreamConfig(), dtype=torch.float32)
    for a, b in zip(run(plain, num_frames=21), run(mixed, num_frames=21)):
        difference = np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16))
        assert 0 < difference.max() <= 8 and difference.mean() < 1.0
