"""The long-rollout report's statistics and bounds on hand-made frames."""
import json

import numpy as np
from PIL import Image
import pytest
import torch

from lingbot_rt.world.long_rollout import (BOUNDS, drift, frame_statistics, ground_truth_minutes, long_rollouts,
                                          noise_seed, parse_seeds, render_minute, score_minutes, through_vae,
                                          within_bounds)
from lingbot_rt.world.evaluate import FPS, action_following
from lingbot_rt.world.map import generate_map, spawn_pose
from lingbot_rt.world.players import play
from lingbot_rt.world.pose_probe import PoseProbe
from lingbot_rt.world.renderer import Renderer
from lingbot_rt.world.stream import world_intrinsics, world_stream_config
from lingbot_rt.world.config import WorldConfig
from lingbot_rt.model.controls import scale_intrinsics


def test_frame_statistics_of_flat_and_striped_frames():
    flat = np.full((2, 8, 8, 3), 128, np.uint8)
    stats = frame_statistics(flat)
    assert stats["mean_intensity"] == pytest.approx(128 / 255, abs=1e-4)
    assert stats["contrast"] == 0 and stats["sharpness"] == 0
    stripes = flat.copy()
    stripes[:, :, ::2] = 0
    striped = frame_statistics(stripes)
    assert striped["contrast"] > 0.2 and striped["sharpness"] > 0.5


def test_within_bounds_flags_drift_blur_and_lost_control():
    first = {"mean_intensity": 0.5, "contrast": 0.2, "sharpness": 0.1, "yaw_direction_accuracy": 0.95,
             "forward_direction_accuracy": 0.9}
    assert all(within_bounds(first, first).values())
    blurred = first | {"sharpness": 0.05, "mean_intensity": 0.7, "yaw_direction_accuracy": 0.8,
                       "forward_direction_accuracy": None}
    checks = within_bounds(blurred, first)
    assert checks == {"mean_intensity": False, "contrast": True, "sharpness": False,
                      "yaw_direction_accuracy": False, "forward_direction_accuracy": None}
    assert set(checks) == set(BOUNDS)


def test_bounds_widen_by_as_far_as_the_world_moved_at_the_same_poses():
    first = {"mean_intensity": 0.5, "contrast": 0.2, "sharpness": 0.1, "yaw_direction_accuracy": 0.95,
             "forward_direction_accuracy": 0.9}
    truth_first = first | {"mean_intensity": 0.4, "forward_direction_accuracy": 0.8}
    truth = truth_first | {"mean_intensity": 0.48, "forward_direction_accuracy": 0.6}    # 1.2x, -0.2
    brighter = first | {"mean_intensity": 0.65, "forward_direction_accuracy": 0.6}       # 1.3x, -0.3
    assert within_bounds(brighter, first)["mean_intensity"] is False                     # the fixed bounds
    widened = within_bounds(brighter, first, truth, truth_first)
    assert widened["mean_intensity"] is True and widened["forward_direction_accuracy"] is True   # 1.3 <= 1.15 * 1.2
    assert within_bounds(first | {"mean_intensity": 0.7}, first, truth, truth_first)["mean_intensity"] is False
    assert within_bounds(first | {"forward_direction_accuracy": 0.5}, first, truth,
                         truth_first)["forward_direction_accuracy"] is False            # -0.4 < -0.15 - 0.2
    # the world moving the other way widens nothing on this side; a missing truth statistic widens nothing
    darker_truth = truth_first | {"mean_intensity": 0.3}
    assert within_bounds(brighter, first, darker_truth, truth_first)["mean_intensity"] is False
    assert within_bounds(brighter, first, {}, {})["mean_intensity"] is False


def test_the_truth_keeps_its_widened_bounds_and_the_report_states_both():
    rng = np.random.default_rng(0)
    per_minute = []
    for i in range(10):
        truth = {"mean_intensity": rng.uniform(0.3, 0.6), "contrast": rng.uniform(0.05, 0.2),
                 "sharpness": rng.uniform(0.05, 0.1), "yaw_direction_accuracy": rng.uniform(0.6, 1.0),
                 "forward_direction_accuracy": rng.uniform(0.5, 1.0)}
        per_minute.append({"minute": i + 1, **truth, "ground_truth": dict(truth)})
    summary = score_minutes(per_minute)
    assert summary["all_within_bounds"] and all(all(m["within_bounds"].values()) for m in per_minute)
    assert not summary["all_within_fixed_bounds"] and not summary["ground_truth_all_within_fixed_bounds"]
    assert [m["within_fixed_bounds"] for m in per_minute] == [m["ground_truth_within_fixed_bounds"] for m in per_minute]


def minutes(contrast, forward):
    return [{"minute": i + 1, "mean_intensity": 0.5, "contrast": c, "sharpness": 0.1, "yaw_direction_accuracy": 0.95,
             "forward_direction_accuracy": f} for i, (c, f) in enumerate(zip(contrast, forward))]


def test_drift_separates_a_fade_from_scatter():
    fading = drift(minutes([0.20 - 0.01 * i for i in range(10)], [0.9 - 0.02 * i for i in range(10)]))
    # a straight line: the fitted change is exact and its interval has no width
    assert fading["contrast"]["change"] == pytest.approx(-0.09 / 0.155, abs=1e-3)
    assert fading["contrast"]["interval"][1] == pytest.approx(fading["contrast"]["change"], abs=1e-3)
    assert fading["forward_direction_accuracy"]["change"] == pytest.approx(-0.18, abs=1e-4)
    assert fading["mean_intensity"] == {"change": 0.0, "interval": [0.0, 0.0]}
    scatter = drift(minutes([0.15, 0.10, 0.14, 0.11, 0.15, 0.10, 0.14, 0.11, 0.15, 0.10], [0.8] * 10))
    low, high = scatter["contrast"]["interval"]
    assert low < 0 < high and abs(scatter["contrast"]["change"]) < 0.2
    assert drift(minutes([0.1, 0.1], [0.9, 0.9]))["contrast"] is None
    missing = minutes([0.1] * 4, [0.9, None, 0.9, 0.9])
    assert drift(missing)["forward_direction_accuracy"] is None and drift(missing)["contrast"] is not None


def test_ground_truth_minutes_are_the_world_rendered_along_the_session(tmp_path):
    probe = PoseProbe().eval()
    per_minute = ground_truth_minutes(probe, minutes=1, seed=3, height=32, width=32)
    world = generate_map(7)
    _, poses = play(world, spawn_pose(world, 0), 60 * FPS + 1, 3)
    frames = Renderer(world).render(torch.from_numpy(poses[:60 * FPS]), world.config.intrinsics(32, 32), 32, 32).numpy()
    expected = frame_statistics(frames) | action_following(probe, torch.from_numpy(frames)[None],
                                                           torch.from_numpy(poses[:60 * FPS])[None])
    assert per_minute == [expected]
    assert 0 <= expected["forward_direction_accuracy"] <= 1 and expected["moving_steps"] > 0


def test_world_stream_uses_the_world_camera():
    config = world_stream_config()
    assert (config.height, config.width) == (128, 128) and config.shift == 3.0
    np.testing.assert_allclose(scale_intrinsics(np.array(world_intrinsics()), 128, 128),
                               WorldConfig().intrinsics(128, 128), rtol=1e-5)


@pytest.mark.parametrize("text, seeds", [("3", [3]), ("0-4", [0, 1, 2, 3, 4]), ("7,2-3,2", [7, 2, 3]), (" 0 1, 2 ", [0, 1, 2])])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "4-2", "1-", "-3", "1;2"])
def test_parse_seeds_refuses_what_is_not_seeds(text):
    with pytest.raises(ValueError, match="seeds must be numbers or ranges"):
        parse_seeds(text)


def test_a_rollout_shorter_than_a_minute_or_without_slots_is_refused():
    with pytest.raises(ValueError, match="minutes must be >= 1, got 0.5"):
        long_rollouts(None, None, seeds=[0], minutes=0.5)
    with pytest.raises(ValueError, match="distinct"):
        long_rollouts(None, None, seeds=[1, 1], minutes=1)
    with pytest.raises(ValueError, match="a noise draw is a number >= 0, got -2"):
        long_rollouts(None, None, seeds=[1], minutes=1, noise_draw=-2)

    class OneSlot:
        free_slots = 1
    with pytest.raises(ValueError, match="2 seeds need as many session slots; the pipeline has 1 free"):
        long_rollouts(OneSlot(), None, seeds=[0, 1], minutes=1)


def test_a_minute_of_the_shipped_student_is_reported_beside_the_world_at_its_poses(tmp_path):
    """One minute (961 frames) through the serving pipeline: the report's ground truth is the
    world rendered along the same scripted keys (`ground_truth_minutes`), minute one keeps its
    own bounds, and the report and the minutes' thumbnails are written. A seed batched with
    another gives what it gives alone (the same truth; its own frames to the pipeline's
    batched-vs-alone tolerance)."""
    from lingbot_rt.distillation.config import student_schedule
    from lingbot_rt.world.shipped import shipped_student_dir
    from lingbot_rt.world.stream import world_streaming
    torch.manual_seed(0)
    probe = PoseProbe().eval()
    config = world_stream_config(student_schedule(shipped_student_dir()), max_sessions=2)
    pipeline = world_streaming(shipped_student_dir(), config=config)
    (report,) = long_rollouts(pipeline, probe, minutes=1, seeds=[5], out_dir=tmp_path, progress=False)
    (minute,) = report["per_minute"]
    assert minute["ground_truth"] == ground_truth_minutes(probe, minutes=1, seed=5)[0]
    assert minute["moving_steps"] == minute["ground_truth"]["moving_steps"] > 0       # the same commanded motion
    assert all(minute["within_bounds"].values()) and report["all_within_bounds"] and report["frames"] == 961
    assert report["complete"] and report["seed"] == 5
    assert minute["mean_intensity"] != minute["ground_truth"]["mean_intensity"]       # the student's own frames
    assert json.loads((tmp_path / "s5" / "long_rollout.json").read_text()) == report
    thumbs = np.array(Image.open(tmp_path / "s5" / "long_rollout_minutes.png"))
    assert thumbs.shape == (2 * 128, 2 * 128, 3)                  # start image and minute one; stream over world
    np.testing.assert_array_equal(thumbs[:128, :128], thumbs[128:, :128])                # the start image twice
    world = generate_map(7)
    _, poses = play(world, spawn_pose(world, 0), 961, 5)
    truth = render_minute(Renderer(world), world.config.intrinsics(128, 128), poses[:1], 128, 128)[0]
    np.testing.assert_array_equal(thumbs[128:, 128:], truth)                             # the world at frame 0

    other, batched = long_rollouts(pipeline, probe, minutes=1, seeds=[6, 5], progress=False)
    assert pipeline.free_slots == 2 and (other["seed"], batched["seed"]) == (6, 5)
    assert batched["per_minute"][0]["ground_truth"] == minute["ground_truth"]
    for name in ("mean_intensity", "contrast", "sharpness"):
        assert batched["per_minute"][0][name] == pytest.approx(minute[name], rel=1e-3), name
    assert other["per_minute"][0]["ground_truth"] != minute["ground_truth"]          # another player's keys

    (redrawn,) = long_rollouts(pipeline, probe, minutes=1, seeds=[5], noise_draw=1, progress=False)
    assert redrawn["noise_draw"] == 1 and report["noise_draw"] == 0
    assert redrawn["per_minute"][0]["ground_truth"] == minute["ground_truth"]         # the same keys and poses
    assert redrawn["per_minute"][0]["mean_intensity"] != minute["mean_intensity"]     # other noise, other frames


def test_noise_draws_keep_a_seed_for_draw_zero_and_give_distinct_seeds_otherwise():
    seeds = {noise_seed(seed, draw) for seed in range(50) for draw in range(4)}
    assert len(seeds) == 200 and all(noise_seed(seed, 0) == seed for seed in range(50))


@pytest.mark.parametrize("extra, message", [(["--seeds", "1;2"], "seeds must be numbers or ranges"),
                                            (["--noise-draw", "-1"], "a noise draw is a number >= 0, got -1"),
                                            ([], "no pose probe at")])
def test_cli_long_rollout_refuses_bad_seeds_and_a_missing_probe(tmp_path, capsys, extra, message):
    from lingbot_rt.cli import main
    from lingbot_rt.world.shipped import shipped_student_dir
    assert main(["world", "long-rollout", "--student", str(shipped_student_dir()), "--probe",
                 str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "out"), "--device", "cpu", *extra]) == 2
    assert message in capsys.readouterr().err


def test_the_truth_through_the_vae_is_the_truth_as_the_stream_decodes_it():
    """`through_vae`: 9 true frames out as 9 frames of the same size, close to those frames and
    further from another view's; a clip that is not 4n+1 frames is refused; streamed in chunks of
    3 latent frames, 41 frames come out as in one pass (to float rounding)."""
    from lingbot_rt.distillation.config import student_schedule
    from lingbot_rt.world.shipped import shipped_student_dir
    from lingbot_rt.world.stream import world_streaming
    pipeline = world_streaming(shipped_student_dir(), config=world_stream_config(student_schedule(shipped_student_dir())))
    world = generate_map(7)
    renderer, intrinsics = Renderer(world), world.config.intrinsics(pipeline.height, pipeline.width)
    _, poses = play(world, spawn_pose(world, 0), 9 + 160, 3)
    truth, other = (render_minute(renderer, intrinsics, p, pipeline.height, pipeline.width) for p in (poses[:9], poses[-9:]))
    passed = through_vae(pipeline, truth)
    assert passed.shape == truth.shape and passed.dtype == np.uint8
    error = lambda a, b: np.abs(a.astype(float) - b.astype(float)).mean()
    assert error(passed, truth) < 0.5 * error(other, truth)
    with pytest.raises(ValueError, match="video has 8 frames; the VAE encodes 4n\\+1 frames"):
        through_vae(pipeline, truth[:8])
    longer = render_minute(renderer, intrinsics, poses[:41], pipeline.height, pipeline.width)
    chunked, whole = (through_vae(pipeline, longer, chunk=c).astype(int) for c in (3, 64))
    assert chunked.shape == whole.shape and np.abs(chunked - whole).max() <= 1 and (chunked != whole).mean() < 1e-4


def test_a_session_started_into_the_walk_holds_its_poses_and_keys_from_there():
    """`ScriptedSession(start=k)`: the stream's frame i is the walk's frame k + i, and the key
    that moves it to frame i is the walk's key k + i."""
    from lingbot_rt.distillation.config import student_schedule
    from lingbot_rt.world.long_rollout import ScriptedSession
    from lingbot_rt.world.shipped import shipped_student_dir
    from lingbot_rt.world.stream import world_streaming
    pipeline = world_streaming(shipped_student_dir(), config=world_stream_config(
        student_schedule(shipped_student_dir()), max_sessions=2))
    world = generate_map(7)
    keys, poses = play(world, spawn_pose(world, 0), 200 + 49, 5)
    image = np.zeros((pipeline.height, pipeline.width, 3), np.uint8)
    late, early = (ScriptedSession(pipeline, world, image, 5, 49, start=s) for s in (200, 0))
    assert np.array_equal(late.world_poses, poses[200:]) and np.array_equal(early.world_poses, poses[:49])
    assert np.array_equal(late.actions.block(1, 48), keys[201:]) and np.array_equal(early.actions.block(1, 48), keys[1:49])
    assert not np.array_equal(late.actions.block(1, 48), early.actions.block(1, 48))
