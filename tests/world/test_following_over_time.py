"""`benchmarks/world/following_over_time.py`: how far frames move along the keys, and how many
moving steps stand still, read from the probe's motions against the commanded ones."""
import importlib.util
from pathlib import Path

import pytest
import torch

from lingbot_rt.world.evaluate import FORWARD_MOVING
from lingbot_rt.world.map import generate_map, spawn_pose
from lingbot_rt.world.players import play
from lingbot_rt.world.pose_probe import GAP, relative_motion

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "world" / "following_over_time.py"
spec = importlib.util.spec_from_file_location("following_over_time", SCRIPT)
following_over_time = importlib.util.module_from_spec(spec)
spec.loader.exec_module(following_over_time)


class ReadsAs:
    """A probe whose reading of every step is the commanded motion times `factor`."""

    def __init__(self, poses: torch.Tensor, factor: float):
        self.motions = relative_motion(poses[:-GAP].double(), poses[GAP:].double()) * factor

    def motion(self, frames: torch.Tensor) -> torch.Tensor:
        return self.motions


@pytest.fixture(scope="module")
def walk():
    world = generate_map(7)
    _, poses = play(world, spawn_pose(world, 0), 400, 0)
    poses = torch.from_numpy(poses)
    forward = relative_motion(poses[:-GAP], poses[GAP:])[:, 1]
    moving = forward.abs() > FORWARD_MOVING
    assert moving.any() and (forward[moving] < 0).any()          # the walk moves both ways
    return poses, forward[moving].abs().mean().item()


def test_frames_that_move_as_commanded_move_along_the_keys_and_never_stall(walk):
    poses, distance = walk
    read = following_over_time.forward_along(ReadsAs(poses, 1.0), torch.zeros(len(poses)), poses)
    assert read["forward_along"] == pytest.approx(distance, abs=1e-4) and read["stalled"] == 0.0


def test_frames_that_move_the_other_way_read_negative_and_frames_that_stand_still_stall(walk):
    poses, distance = walk
    backwards = following_over_time.forward_along(ReadsAs(poses, -1.0), torch.zeros(len(poses)), poses)
    still = following_over_time.forward_along(ReadsAs(poses, 0.0), torch.zeros(len(poses)), poses)
    assert backwards == {"forward_along": pytest.approx(-distance, abs=1e-4), "stalled": 0.0}
    assert still == {"forward_along": 0.0, "stalled": 1.0}


def test_a_segment_with_no_moving_step_reads_none(walk):
    poses, _ = walk
    standing = poses[:1].repeat(20, 1, 1)
    assert following_over_time.forward_along(ReadsAs(standing, 1.0), torch.zeros(20), standing) == \
        {"forward_along": None, "stalled": None}
