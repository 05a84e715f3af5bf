"""`benchmarks/world/following_over_time.py`: how far frames move along the keys, and how many
moving steps stand still, from the probe's motions against the commanded ones."""

import numpy as np
import pytest
import torch

from lingbot_rt.world.evaluate import FORWARD_MOVING
from lingbot_rt.world.map import generate_map, spawn_pose
from lingbot_rt.world.players import play
from lingbot_rt.world.pose_probe import GAP, relative_motion
from tests.helpers import load_script

following_over_time = load_script("benchmarks/world/following_over_time.py")


@pytest.fixture(scope="module")
def walk():
    """A scripted walk's commanded motions [N, 4] (it walks both ways), and how far a moving
    step walks on average."""
    world = generate_map(7)
    _, poses = play(world, spawn_pose(world, 0), 400, 0)
    commanded = relative_motion(torch.from_numpy(poses[:-GAP]), torch.from_numpy(poses[GAP:]))
    forward = commanded[:, 1][commanded[:, 1].abs() > FORWARD_MOVING]
    assert (forward > 0).any() and (forward < 0).any()
    return commanded, forward.abs().mean().item()


def test_frames_that_move_as_commanded_move_along_the_keys_and_never_stall(walk):
    commanded, distance = walk
    read = following_over_time.forward_along(commanded, commanded)
    assert read["forward_along"] == pytest.approx(distance, abs=1e-4) and read["stalled"] == 0.0


def test_frames_that_move_the_other_way_read_negative_and_frames_that_stand_still_stall(walk):
    commanded, distance = walk
    backwards = following_over_time.forward_along(-commanded, commanded)
    still = following_over_time.forward_along(torch.zeros_like(commanded), commanded)
    assert backwards == {"forward_along": pytest.approx(-distance, abs=1e-4), "stalled": 0.0}
    assert still == {"forward_along": 0.0, "stalled": 1.0}


def test_a_segment_with_no_moving_step_reads_none(walk):
    commanded, _ = walk
    turning_only = commanded.clone()
    turning_only[:, 1] = 0
    assert following_over_time.forward_along(commanded, turning_only) == {"forward_along": None, "stalled": None}


def test_the_strip_draws_the_worst_followed_segment_of_every_source():
    rows = [{"second": 0, "forward": 0.9}, {"second": 2, "forward": 0.4}, {"second": 4, "forward": None}]
    frames = np.arange(6 * 2 * 3 * 3, dtype=np.uint8).reshape(6, 2, 3, 3)            # 6 frames of 2x3
    second, strip = following_over_time.weakest_strip(rows, {"a": frames, "b": 255 - frames}, 2, 1)
    assert second == 2 and strip.shape == (2 * 2, 2 * 3, 3)
    assert (strip[:2, :3] == frames[2]).all() and (strip[2:, 3:] == 255 - frames[3]).all()
    with pytest.raises(ValueError, match="no segment moves"):
        following_over_time.weakest_strip([{"second": 0, "forward": None}], {"a": frames}, 2, 1)


def test_pooled_forward_weighs_each_segment_by_its_moving_steps():
    def rows(*segments):
        return [{"second": second, "forward": forward, "moving_steps": steps} for second, forward, steps in segments]
    per_seed = {s: {"student": rows((0, 1.0, 10), (4, 0.5, 30), (8, forward, steps)),
                    "truth": rows((0, 1.0, 10), (4, 1.0, 30), (8, 1.0, steps)),
                    "truth_through_vae": rows((0, None, 0), (4, None, 0), (8, None, 0))}
                for s, forward, steps in ((0, 0.0, 10), (1, None, 0))}
    pooled = following_over_time.pooled_forward(per_seed, [4], 12)
    assert pooled == [{"seconds": [0, 4], "student": 1.0, "truth": 1.0, "truth_through_vae": None, "moving_steps": 20},
                      {"seconds": [4, 12], "student": 0.4286, "truth": 1.0, "truth_through_vae": None, "moving_steps": 70}]


@pytest.mark.parametrize("bad", [["--pool", "6"], ["--pool", "16,4"], ["--start", "-1"]])
def test_a_pool_split_off_the_segments_or_a_negative_start_is_refused_before_anything_loads(bad, capsys):
    with pytest.raises(SystemExit):
        following_over_time.main(["--student", "nowhere", "--seconds", "60", "--segment", "4", *bad,
                                  "--out", "unused.json"])
    assert f"{bad[0]} must be" in capsys.readouterr().err
