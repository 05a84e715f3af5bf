"""`benchmarks/world/following_gap.py`: the distance ahead of a pose facing a wall and of one
facing away from it, and the summary of hand-made seed-minutes whose gap goes with their
close-wall frames."""

import numpy as np

from lingbot_rt.world.map import FREE, generate_map, pose_at
from tests.helpers import load_script

following_gap = load_script("benchmarks/world/following_gap.py")


def test_distance_ahead_of_a_wall_and_away_from_it():
    world = generate_map(7)
    # a free cell with a solid cell to its +x side (yaw pi/2 faces +x) and a free one to its -x side
    rows, cols = np.nonzero((world.grid[:, 1:-1] == FREE) & (world.grid[:, 2:] != FREE) & (world.grid[:, :-2] == FREE))
    z, x = rows[0] + 0.5, cols[0] + 1 + 0.5
    facing, away = following_gap.distance_ahead(world, np.stack([pose_at(x, z, np.pi / 2), pose_at(x, z, -np.pi / 2)]))
    assert 0.44 < facing <= 0.5                      # the cell's centre is half a unit from its face
    assert away >= 1.45


def rows(gaps: list[float], near: list[float]) -> list[dict]:
    return [{"seed": 0, "minute": i % 2 + 1, "gap": g, "near_wall": n, "median_ahead": 3.0 - n,
             "sharpness_ratio": 1.0, "contrast_ratio": 1.0 + i} for i, (g, n) in enumerate(zip(gaps, near))]


def test_summary_of_a_gap_that_goes_with_close_walls():
    s = following_gap.summarise(rows([-0.4, -0.3, -0.1, 0.0], [0.4, 0.3, 0.1, 0.0]))
    assert s["correlation_with_gap"]["near_wall"] == -1.0
    assert s["correlation_with_gap"]["median_ahead"] == 1.0
    assert s["correlation_with_gap"]["sharpness_ratio"] is None          # constant: no correlation to give
    assert s["mean_gap_by_near_wall"] == {"at_or_below_median": -0.05, "above_median": -0.35, "median_near_wall": 0.2}
    assert s["mean_gap_per_minute"] == [-0.25, -0.15]
    assert [r["gap"] for r in s["worst"]] == [-0.4, -0.3, -0.1, 0.0]


def test_no_minute_above_the_median_reads_none():
    s = following_gap.summarise(rows([-0.2, -0.1, 0.0], [0.0, 0.0, 0.3]))
    assert s["mean_gap_by_near_wall"]["above_median"] == 0.0
    assert following_gap.summarise(rows([-0.2, -0.1], [0.1, 0.1]))["mean_gap_by_near_wall"] == {
        "at_or_below_median": -0.15, "above_median": None, "median_near_wall": 0.1}
