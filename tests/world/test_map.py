"""Map generation (lingbot_rt.world.map): determinism, connectivity, landmarks, spawn."""
from collections import deque

import numpy as np
import pytest

from lingbot_rt.world.config import WorldConfig
from lingbot_rt.world.map import FREE, generate_map, spawn_pose
from lingbot_rt.world.textures import LANDMARK_PATTERNS


def connected(free: np.ndarray) -> bool:
    cells = {tuple(c) for c in np.argwhere(free)}
    queue, seen = deque([next(iter(cells))]), set()
    while queue:
        cell = queue.popleft()
        if cell in seen or cell not in cells:
            continue
        seen.add(cell)
        queue.extend((cell[0] + dr, cell[1] + dc) for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)))
    return seen == cells


def test_same_seed_same_map_different_seed_different_map():
    a, b, c = generate_map(11), generate_map(11), generate_map(12)
    assert np.array_equal(a.grid, b.grid) and a.materials == b.materials and a.prompt == b.prompt
    assert np.array_equal(a.colour_table.colours, b.colour_table.colours)
    assert not np.array_equal(a.grid, c.grid)


@pytest.mark.parametrize("layout", ["rooms", "maze"])
@pytest.mark.parametrize("seed", range(4))
def test_layouts_are_walled_connected_and_have_unique_landmarks(layout, seed):
    world = generate_map(seed, WorldConfig(layout=layout))
    free = world.grid == FREE
    assert world.layout == layout
    assert not free[0].any() and not free[-1].any() and not free[:, 0].any() and not free[:, -1].any()
    assert 0.15 < free.mean() < 0.7
    assert connected(free)
    num_walls = world.config.num_wall_materials
    landmarks = world.materials[num_walls:]
    assert len(landmarks) == world.num_pillars + world.num_panels > 0
    assert all(m.pattern in LANDMARK_PATTERNS for m in landmarks)
    for index in range(num_walls, len(world.materials)):
        assert (world.grid == index).sum() == 1            # each landmark material is used once
    assert world.grid.max() == len(world.materials) - 1


def test_prompt_names_the_layout_walls_floor_and_sky():
    world = generate_map(3, WorldConfig(layout="maze"))
    prompt = world.prompt
    assert "maze" in prompt and world.sky.name in prompt and "floor" in prompt and "walls" in prompt


def test_spawn_is_free_level_at_eye_height_and_deterministic():
    world = generate_map(4)
    for seed in range(5):
        start = spawn_pose(world, seed)
        assert world.is_free(start[0, 3], start[2, 3], world.config.collision_radius)
        assert start[1, 3] == 0 and np.allclose(start[:3, 1], [0, 1, 0])          # no pitch, no roll
        np.testing.assert_allclose(start[:3, :3] @ start[:3, :3].T, np.eye(3), atol=1e-12)
        np.testing.assert_array_equal(start, spawn_pose(world, seed))
