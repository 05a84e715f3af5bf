"""Scripted players (lingbot_rt.world.players): deterministic, person-like, not stuck."""
import numpy as np

from lingbot_rt.model.controls import KEYS
from lingbot_rt.world.map import generate_map, spawn_pose
from lingbot_rt.world.players import play


def runs(keys):
    """Run-length encoding of the key rows: [(keys string, frames)]."""
    out = []
    for row in keys:
        held = "".join(k for k, v in zip(KEYS, row) if v)
        if out and out[-1][0] == held:
            out[-1][1] += 1
        else:
            out.append([held, 1])
    return out


def walk(seed, num_frames=401):
    world = generate_map(seed)
    return world, *play(world, spawn_pose(world, seed), num_frames, seed)


def test_same_seed_same_walk():
    _, keys_a, poses_a = walk(1)
    _, keys_b, poses_b = walk(1)
    _, keys_c, _ = walk(2)
    assert np.array_equal(keys_a, keys_b) and np.array_equal(poses_a, poses_b)
    assert not np.array_equal(keys_a, keys_c)


def test_walks_hold_keys_turn_stop_look_return_and_do_not_get_stuck():
    kinds, blocked, total, run_lengths, revisits = set(), 0, 0, [], 0
    for seed in range(6):
        world, keys, poses = walk(seed)
        assert keys[0].sum() == 0 and keys.dtype == np.float32 and set(np.unique(keys)) <= {0.0, 1.0}
        segments = runs(keys[1:])
        run_lengths += [n for _, n in segments]
        kinds |= {held for held, _ in segments}
        moved = np.linalg.norm(np.diff(poses[:, [0, 2], 3], axis=0), axis=1)
        pressing = keys[1:, :4].any(1)
        blocked += int((pressing & (moved < 1e-9)).sum())
        total += int(pressing.sum())
        pitch = np.degrees(np.arcsin(-poses[:, 1, 2]))
        assert np.abs(pitch).max() < 85
        # a return: frame k comes back within 0.3 units of frame i < k after going 1+ unit away
        xz = poses[:, [0, 2], 3]
        distance = np.triu(np.linalg.norm(xz[:, None] - xz[None], axis=-1))     # [i, k], k >= i
        went_away = np.maximum.accumulate(distance, axis=1) > 1.0
        revisits += bool((went_away & (distance < 0.3) & np.triu(np.ones_like(went_away), 1)).any())
    assert np.mean(run_lengths) >= 6                        # keys are held for several frames
    assert {"", "w"} <= kinds and kinds & {"j", "l"} and kinds & {"i", "k"}
    assert blocked <= 0.05 * total                          # pressing into walls is rare
    assert revisits >= 3
