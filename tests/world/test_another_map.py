"""`benchmarks/world/another_map.py`: a seed's keys replayed in their map give its walk, and in
another map the same turns and looks from that map's start view; its report scores the other
map's frames against the played map's truth; the played map itself only through the VAE."""
import sys

import numpy as np
import pytest

from lingbot_rt.world.map import generate_map, spawn_pose
from lingbot_rt.world.players import play
from tests.helpers import load_script

another_map = load_script("benchmarks/world/another_map.py")


def test_replayed_keys_walk_the_same_path_in_their_map_and_turn_alike_in_another():
    world = generate_map(7)
    keys, poses = play(world, spawn_pose(world, 0), 400, 3)
    np.testing.assert_array_equal(another_map.replay(world, keys), poses)
    elsewhere = another_map.replay(generate_map(8), keys)
    def turned(p):                                   # each frame's rotation relative to the start view's
        return np.einsum("ji,tjk->tik", p[0, :3, :3], p[:, :3, :3])
    np.testing.assert_allclose(turned(elsewhere), turned(poses), atol=1e-9)         # the same turns and looks
    assert not np.allclose(elsewhere[:, :3, 3], poses[:, :3, 3])                     # another place


def test_a_report_scores_the_other_map_against_the_truth_of_the_played_one(tmp_path):
    import torch

    from lingbot_rt.world.pose_probe import PoseProbe, save_probe
    torch.manual_seed(0)
    path = save_probe(PoseProbe().eval(), tmp_path / "probe.safetensors")
    report = another_map.seed_report(3, probe_path=str(path), minutes=1, map_seed=7, other_map_seed=8)
    (minute,) = report["per_minute"]
    assert report["complete"] and report["streamed_map_seed"] == 8 and report["all_within_bounds"]
    assert minute["mean_intensity"] != minute["ground_truth"]["mean_intensity"]
    assert minute["ground_truth"]["moving_steps"] > 0


def test_the_same_map_is_refused_unless_it_streams_through_the_vae(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["another_map.py", "--probe", str(tmp_path / "none.safetensors"),
                                     "--other-map-seed", "7", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="--other-map-seed must differ from --map-seed \\(or pass --through-vae\\)"):
        another_map.main()
    monkeypatch.setattr("sys.argv", [*sys.argv, "--through-vae"])
    with pytest.raises(SystemExit, match="no pose probe at"):
        another_map.main()
