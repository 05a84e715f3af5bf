"""`benchmarks/world/noise_draws.py` on hand-made reports: the shuffled pass rate of minutes
that never move is 1 and of a minute far from the rest is 0; draws of different seeds are refused."""
import json

import numpy as np
import pytest
from tests.helpers import load_script

noise_draws = load_script("benchmarks/world/noise_draws.py")

STATS = {"mean_intensity": 0.4, "contrast": 0.12, "sharpness": 0.006, "yaw_direction_accuracy": 0.98,
         "forward_direction_accuracy": 0.85}


def report(seed: int, intensities: list[float]) -> dict:
    minutes = [{"minute": i + 1, **STATS, "mean_intensity": v, "ground_truth": dict(STATS)}
               for i, v in enumerate(intensities)]
    return {"seed": seed, "complete": True, "all_within_bounds": len(set(intensities)) == 1, "per_minute": minutes}


def test_shuffled_pass_rate_of_steady_and_of_one_stray_minute():
    rng = np.random.default_rng(0)
    assert noise_draws.shuffled_pass_rate([report(0, [0.4] * 10)], rng) == 1.0
    assert noise_draws.shuffled_pass_rate([report(0, [0.4] * 9 + [0.8])], rng) == 0.0   # first or not, it misses


def test_summary_counts_passes_per_draw_and_refuses_draws_of_other_seeds(tmp_path):
    for draw, seeds in (("a", (3, 4)), ("b", (3, 4)), ("c", (3, 5))):
        (tmp_path / draw).mkdir()
        for seed in seeds:
            steady = [0.4] * 10 if (draw, seed) != ("b", 4) else [0.4] * 9 + [0.8]
            (tmp_path / draw / f"s{seed}.json").write_text(json.dumps(report(seed, steady)))
    dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
    summary = noise_draws.summarise(dirs, *noise_draws.load_draws(dirs))
    assert summary["pass_per_draw"] == [2, 1] and summary["pass_rate"]["rate"] == 0.75
    assert summary["misses"][4] == [[], ["mean_intensity@10"]] and summary["seeds_missing_in_every_draw"] == []
    assert summary["per_minute_mean"]["mean_intensity"][-1] == pytest.approx(np.exp(np.log(2) / 4), abs=1e-4)
    with pytest.raises(ValueError, match="holds seeds \\[3, 5\\], the first dir \\[3, 4\\]"):
        noise_draws.load_draws([str(tmp_path / "a"), str(tmp_path / "c")])


def test_the_session_envelope_widens_every_minute_by_the_furthest_the_world_moves():
    """The world brightens 1.3x at minute 5 only; the student is 1.4x at minute 9. Widened by
    the world's same minute the student misses; by the session's furthest move (1.15 x 1.3) it
    holds, and at 1.6x it misses both."""
    from lingbot_rt.world.long_rollout import score_minutes
    for student, same_minute, envelope in ((1.4, False, True), (1.6, False, False)):
        r = report(0, [0.4] * 8 + [0.4 * student, 0.4])
        r["per_minute"][4]["ground_truth"]["mean_intensity"] = 0.4 * 1.3
        assert score_minutes(r["per_minute"])["all_within_bounds"] is same_minute
        assert noise_draws.within(r, noise_draws.session_envelope(r)) is envelope


def test_calibrated_bounds_reach_as_far_as_the_calibrating_minutes_move_and_no_further():
    steady, brighter = report(0, [0.4] * 10), report(1, [0.4] * 9 + [0.52])          # 1.3x at minute 10
    brighter["per_minute"][5]["forward_direction_accuracy"] = 0.85 - 0.2               # -0.2 at minute 6
    bounds = noise_draws.calibrated_bounds([steady, brighter])
    assert bounds["mean_intensity"] == (0.85, pytest.approx(1.3)) and bounds["contrast"] == (0.7, 1.3)
    assert bounds["forward_direction_accuracy"] == pytest.approx(-0.2) and bounds["yaw_direction_accuracy"] == -0.1
    assert noise_draws.within(steady, bounds) and noise_draws.within(brighter, bounds)
    assert not noise_draws.within(report(2, [0.4] * 9 + [0.6]), bounds)                # 1.5x: beyond them


def test_a_collapse_grows_to_its_full_size_at_the_last_minute_and_the_bounds_catch_it():
    steady = report(0, [0.4] * 10)
    faded = noise_draws.collapsed(steady, {"contrast": 0.5, "forward_direction_accuracy": 0.5})
    assert [m["contrast"] for m in faded["per_minute"]][::9] == [0.12, pytest.approx(0.06)]
    assert faded["per_minute"][9]["forward_direction_accuracy"] == pytest.approx(0.5)
    assert steady["per_minute"][9]["contrast"] == 0.12                                   # the report is kept
    bounds = noise_draws.calibrated_bounds([steady])
    assert noise_draws.detected([steady], {"mean_intensity": 1.0}, bounds) == {"calibrated": 0.0, "report": 0.0}
    assert noise_draws.detected([steady], {"contrast": 0.5}, bounds) == {"calibrated": 1.0, "report": 1.0}


def test_reports_named_with_a_prefix_and_written_before_complete_existed_are_read(tmp_path):
    old = report(7, [0.4] * 10)
    del old["complete"]
    old["minutes"] = 10
    (tmp_path / "rollout_clt_s7.json").write_text(json.dumps(old))
    (tmp_path / "drift.json").write_text("{}")                                        # not a report
    seeds, (reports,) = noise_draws.load_draws([str(tmp_path)])
    assert seeds == [7] and reports[0]["all_within_bounds"]
    old["minutes"] = 11                                                               # a stopped run
    (tmp_path / "rollout_clt_s7.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="not the complete report of seed 7"):
        noise_draws.load_draws([str(tmp_path)])


def test_following_averages_the_minutes_and_finds_the_worst_forward_drop():
    """Backward accuracy only in some minutes (None elsewhere, and absent from older reports'
    truth) is averaged where it exists; the drop is from each report's own minute one."""
    a, b = report(0, [0.4] * 10), report(1, [0.4] * 10)
    a["per_minute"][3]["forward_direction_accuracy"] = 0.85 - 0.3
    for i, minute in enumerate(b["per_minute"]):
        minute["backward_direction_accuracy"] = (0.5, None)[i % 2]
    summary = noise_draws.following([a, b])
    assert summary["forward_direction_accuracy"] == {"student": pytest.approx(0.85 - 0.3 / 20), "world": 0.85}
    assert summary["backward_direction_accuracy"] == {"student": 0.5, "world": None}
    assert summary["yaw_direction_accuracy"] == {"student": 0.98, "world": 0.98}
    assert summary["worst_forward_drop"] == pytest.approx(-0.3)


def test_groups_keep_each_names_dirs_in_order_and_refuse_a_missing_dir(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    groups = noise_draws.parse_groups([f"clt={tmp_path / 'a'}", f"lb={tmp_path / 'b'}", f"clt={tmp_path / 'b'}"], "x.py")
    assert groups == {"clt": [str(tmp_path / "a"), str(tmp_path / "b")], "lb": [str(tmp_path / "b")]}
    with pytest.raises(SystemExit, match=r"x.py: 'lb=.*nowhere' is not name=dir"):
        noise_draws.parse_groups([f"lb={tmp_path / 'nowhere'}"], "x.py")
    with pytest.raises(SystemExit, match="is not name=dir"):
        noise_draws.parse_groups([str(tmp_path / "a")], "x.py")
