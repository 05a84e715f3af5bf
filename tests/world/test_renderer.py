"""The renderer against hand-computed pinhole facts and a per-pixel float64 reference."""
import math

import numpy as np
import pytest
import torch

from lingbot_rt.world.config import WorldConfig
from lingbot_rt.world.map import FREE, generate_map
from lingbot_rt.world.renderer import Renderer, wall_corners
from tests.world.helpers import FLOOR_BLUE, SKY_BLUE, WALL_BLUE, box_world, pose, reference_render

ROOM = ["########",
        "#......#",
        "#......#",
        "#......#",
        "#......#",
        "#......#",
        "#......#",
        "########"]
SIZE = 64
K = (32.0, 32.0, 32.0, 32.0)          # 90 deg field of view on a 64 x 64 frame


def render_one(world, c2w, intrinsics=K, height=SIZE, width=SIZE):
    return Renderer(world).render(torch.from_numpy(c2w[None]), intrinsics, height, width)[0].numpy()


def test_facing_a_wall_centre_pixel_and_vertical_extent():
    world = box_world(ROOM)
    cfg = world.config
    distance = 5.0                    # eye at z = 2, the wall face at z = 7
    frame = render_one(world, pose(4.0, 2.0))
    column = frame[:, SIZE // 2, 2]
    assert column[SIZE // 2] == WALL_BLUE[1]             # a z-face: shade 1
    wall_rows = np.nonzero(column == WALL_BLUE[1])[0]
    assert (np.diff(wall_rows) == 1).all()
    projected = K[1] * cfg.wall_height / distance          # 9.6 px
    assert abs(len(wall_rows) - projected) <= 1
    top_edge, bottom_edge = K[3] + K[1] * cfg.wall_top_y / distance, K[3] + K[1] * cfg.floor_y / distance
    assert abs(wall_rows[0] - top_edge) <= 1 and abs(wall_rows[-1] + 1 - bottom_edge) <= 1
    assert (column[:wall_rows[0]] == SKY_BLUE).all() and (column[wall_rows[-1] + 1:] == FLOOR_BLUE).all()
    # the centre pixel's texel is that of its exact hit point on the wall
    u, v = SIZE // 2, SIZE // 2
    ray = np.array([(u + 0.5 - K[2]) / K[0], (v + 0.5 - K[3]) / K[1], 1.0])
    hit = np.array([4.0, 0.0, 2.0]) + distance * ray
    size = cfg.texture_size
    expected_u = math.floor((hit[0] % 1) * size)
    expected_v = math.floor((hit[1] - cfg.wall_top_y) / cfg.wall_height * size)
    assert tuple(frame[v, u, :2]) == (expected_u * 256 // size, expected_v * 256 // size)


@pytest.mark.parametrize("row", [40, 50, 63])
def test_below_the_horizon_shows_the_floor_at_the_analytic_distance(row):
    world = box_world(ROOM)
    cfg = world.config
    frame = render_one(world, pose(4.0, 2.0))
    u = SIZE // 2
    slope = (row + 0.5 - K[3]) / K[1]                      # ray y per unit of z at pitch 0
    t = cfg.floor_y / slope                                # the floor is eye_height below the eye
    hit_x, hit_z = 4.0 + t * (u + 0.5 - K[2]) / K[0], 2.0 + t
    assert frame[row, u, 2] == FLOOR_BLUE
    size = cfg.texture_size
    assert frame[row, u, 0] == math.floor((hit_x % 1) * size) * 256 // size
    assert frame[row, u, 1] == math.floor((hit_z % 1) * size) * 256 // size


def test_looking_up_shows_sky_and_looking_down_shows_floor():
    world = box_world(ROOM)
    up = render_one(world, pose(3.5, 3.5, yaw_deg=30, pitch_deg=80))
    down = render_one(world, pose(3.5, 3.5, yaw_deg=30, pitch_deg=-80))
    assert (up[SIZE // 2 - 4:SIZE // 2 + 4, SIZE // 2 - 4:SIZE // 2 + 4, 2] == SKY_BLUE).all()
    assert (down[SIZE // 2 - 4:SIZE // 2 + 4, SIZE // 2 - 4:SIZE // 2 + 4, 2] == FLOOR_BLUE).all()


def test_wall_corners_of_a_room_with_a_pillar():
    solid = np.array([[c == "#" for c in row] for row in ["#####", "#...#", "#.#.#", "#...#", "#####"]])
    corners = {tuple(c) for c in wall_corners(solid).astype(int)}
    assert corners == {(1, 1), (4, 1), (1, 4), (4, 4), (2, 2), (3, 2), (2, 3), (3, 3)}


def random_poses(world, count, seed, max_pitch=80.0):
    rng = np.random.default_rng(seed)
    free = np.argwhere(world.grid == FREE)
    cells = free[rng.integers(len(free), size=count)]
    return np.stack([pose(c + rng.uniform(0.25, 0.75), r + rng.uniform(0.25, 0.75), rng.uniform(-180, 180),
                          rng.uniform(-max_pitch, max_pitch)) for r, c in cells])


@pytest.mark.parametrize("layout", ["rooms", "maze"])
def test_matches_per_pixel_reference(layout):
    world = generate_map(3, WorldConfig(grid_size=16, layout=layout, room_size=(3, 5)))
    height, width = 24, 40
    intrinsics = world.config.intrinsics(height, width)
    poses = random_poses(world, 6, seed=1).astype(np.float32)
    frames = Renderer(world).render(torch.from_numpy(poses), intrinsics, height, width).numpy()
    reference = np.stack([reference_render(world, p.astype(np.float64), intrinsics, height, width) for p in poses])
    mismatched = (frames != reference).any(-1).mean()
    assert mismatched < 0.002, f"{mismatched:.2%} of pixels differ from the reference"


def test_batching_and_chunking_do_not_change_frames():
    world = generate_map(5, WorldConfig(grid_size=16))
    poses = torch.from_numpy(random_poses(world, 5, seed=2)).float()
    intrinsics = world.config.intrinsics(16, 24)
    batched = Renderer(world).render(poses, intrinsics, 16, 24)
    one_by_one = torch.cat([Renderer(world).render(p[None], intrinsics, 16, 24) for p in poses])
    small_chunks = Renderer(world, pixels_per_chunk=1).render(poses, intrinsics, 16, 24)
    assert batched.dtype == torch.uint8 and batched.shape == (5, 16, 24, 3)
    assert torch.equal(batched, one_by_one) and torch.equal(batched, small_chunks)


def test_same_seed_same_frames_different_seed_different_frames():
    def frames(seed):
        world = generate_map(seed, WorldConfig(grid_size=16))
        poses = torch.from_numpy(random_poses(world, 2, seed=0)).float()
        return Renderer(world).render(poses, world.config.intrinsics(16, 16), 16, 16)
    assert torch.equal(frames(7), frames(7))
    assert not torch.equal(frames(7), frames(8))


def test_bad_poses_shape_is_rejected():
    with pytest.raises(ValueError, match=r"\[B, 4, 4\]"):
        Renderer(box_world(ROOM)).render(torch.eye(4), K, 8, 8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu():
    world = generate_map(2)
    poses = torch.from_numpy(random_poses(world, 8, seed=3)).float()
    intrinsics = world.config.intrinsics(96, 160)
    cpu = Renderer(world).render(poses, intrinsics, 96, 160)
    gpu = Renderer(world, "cuda").render(poses.cuda(), intrinsics, 96, 160).cpu()
    assert (cpu != gpu).any(-1).float().mean() < 1e-3
