"""Keys -> world poses with collisions (lingbot_rt.world.walker)."""
import numpy as np
import pytest

from lingbot_rt.model.controls import parse_action_string, poses_from_actions
from lingbot_rt.world.walker import Walker
from tests.world.helpers import box_world, pose

CORRIDOR = ["##########",           # free: x in [1, 9), z in [1, 3)
            "#........#",
            "#........#"] + ["##########"] * 7


def test_w_held_in_free_space_moves_0_05_per_frame_as_the_controller():
    world = box_world(["#" * 12] + ["#" + "." * 10 + "#"] * 10 + ["#" * 12])
    start = pose(2.5, 2.5, yaw_deg=30)
    actions = parse_action_string("w-40,wl-10,i-5,d-10,none-3")
    poses = Walker(world, start).step(actions)
    steps = np.linalg.norm(np.diff(poses[:40, [0, 2], 3], axis=0), axis=1)
    np.testing.assert_allclose(steps, 0.05, rtol=1e-5)
    # in free space the walker is exactly act2cam from the start pose: spawn @ controller poses
    np.testing.assert_allclose(poses, poses_from_actions(actions, start)[1:], atol=1e-12)
    np.testing.assert_allclose(poses, start @ poses_from_actions(actions)[1:], atol=1e-9)


@pytest.mark.parametrize("yaw_deg", [90, 60, 135])
def test_walking_into_a_wall_never_enters_it(yaw_deg):
    world = box_world(CORRIDOR)
    walker = Walker(world, pose(2.5, 1.5, yaw_deg=yaw_deg))
    poses = walker.step(parse_action_string("w-200"))
    radius = world.config.collision_radius
    for c2w in poses:
        x, z = c2w[0, 3], c2w[2, 3]
        assert world.grid[int(np.floor(z)), int(np.floor(x))] < 0           # the camera's cell is free
        assert world.is_free(x, z, radius)                                  # and so is its box
    assert walker.blocked
    assert poses[-1, 0, 3] == pytest.approx(9 - radius, abs=0.05)           # stopped at the far wall


def test_sliding_along_a_wall_keeps_the_parallel_part_of_the_move():
    world = box_world(CORRIDOR)
    walker = Walker(world, pose(2.5, 2.5, yaw_deg=45))    # toward +x and +z; the wall is at z = 3
    poses = walker.step(parse_action_string("w-40"))
    assert poses[-1, 2, 3] <= 3 - world.config.collision_radius
    per_frame_x = np.diff(poses[-10:, 0, 3])
    np.testing.assert_allclose(per_frame_x, 0.05 * np.sin(np.pi / 4), rtol=1e-5)   # still moving along x


def test_turning_is_never_blocked_and_start_in_a_wall_is_rejected():
    world = box_world(CORRIDOR)
    poses = Walker(world, pose(1.3, 1.3)).step(parse_action_string("l-45"))
    np.testing.assert_allclose(poses[-1, :3, :3], pose(0, 0, yaw_deg=90)[:3, :3], atol=1e-12)
    with pytest.raises(ValueError, match="inside a wall"):
        Walker(world, pose(0.5, 0.5))
