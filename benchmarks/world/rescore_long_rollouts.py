"""Long-rollout reports checked again with the report's current bounds (`long_rollout.score_minutes`):
reports written before they carried the truth's action following get it from a
`truth_minutes.py` result of the same map and seeds, after checking that the truth's frame
statistics there are the report's (same poses, resolution and renderer). Prints and writes, per
named set of reports, the seeds within every bound and the misses, with the widened bounds and
with the fixed ones.

    python benchmarks/world/rescore_long_rollouts.py --truth benchmarks/results/world/truth_minutes_map7.json \
        --out benchmarks/results/distill/rescored_long_rollouts.json cm=benchmarks/results/distill/.../rollout_cm_s*.json
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

from lingbot_rt.world.long_rollout import score_minutes

FRAME_STATISTICS = ("mean_intensity", "contrast", "sharpness")


def with_truth_following(report: dict, truth: dict[int, list[dict]], path: str) -> list[dict]:
    """The report's minutes, each ground truth completed from `truth` (the seed's minutes)."""
    minutes = [dict(m) for m in report["per_minute"]]
    if all("forward_direction_accuracy" in m.get("ground_truth", {}) for m in minutes):
        return minutes
    if report["seed"] not in truth:
        raise SystemExit(f"{path}: no truth minutes for seed {report['seed']} (run truth_minutes.py with it)")
    for minute, true in zip(minutes, truth[report["seed"]]):
        stored = minute.get("ground_truth", {})
        if any(abs(stored[k] - true[k]) > 1e-4 for k in FRAME_STATISTICS if k in stored):
            raise SystemExit(f"{path}: minute {minute['minute']}'s ground truth is not the truth file's "
                             f"({ {k: stored[k] for k in FRAME_STATISTICS} } vs { {k: true[k] for k in FRAME_STATISTICS} })")
        minute["ground_truth"] = true
    return minutes


def misses(minutes: list[dict], key: str) -> list[str]:
    """`statistic@minute` for every check under `key` that a minute fails."""
    return [f"{k}@{m['minute']}" for m in minutes for k, ok in m[key].items() if ok is False]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sets", nargs="+", help="name=glob[,glob...] of long_rollout.json reports")
    ap.add_argument("--truth", required=True, help="a truth_minutes.py result of the reports' map")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    truth_file = json.loads(Path(args.truth).read_text())
    truth = {s["seed"]: s["per_minute"] for s in truth_file["per_seed"]}
    result = {"command": " ".join(sys.argv), "sets": {}}
    for entry in args.sets:
        name, _, pattern = entry.partition("=")
        paths = sorted(path for part in pattern.split(",") for path in glob.glob(part))
        if not paths:
            raise SystemExit(f"{name}: no report matches {pattern}")
        rows = []
        for path in paths:
            report = json.loads(Path(path).read_text())
            if report["map_seed"] != truth_file["map_seed"]:
                raise SystemExit(f"{path}: map {report['map_seed']}, the truth file's is {truth_file['map_seed']}")
            minutes = with_truth_following(report, truth, path)
            summary = score_minutes(minutes)
            rows.append({"report": path, "seed": report["seed"], **summary, "misses": misses(minutes, "within_bounds"),
                         "fixed_bound_misses": misses(minutes, "within_fixed_bounds"),
                         "truth_fixed_bound_misses": misses(minutes, "ground_truth_within_fixed_bounds")})
        counts = {key: sum(r[key] for r in rows) for key in summary}
        result["sets"][name] = {"seeds": len(rows), "within_every_bound": counts["all_within_bounds"],
                                "within_every_fixed_bound": counts["all_within_fixed_bounds"],
                                "truth_within_every_fixed_bound": counts["ground_truth_all_within_fixed_bounds"],
                                "minutes_with_a_miss": sum(len({m.split("@")[1] for m in r["misses"]}) for r in rows),
                                "reports": rows}
        s = result["sets"][name]
        listed = " ".join(f"s{r['seed']}:{m}" for r in rows for m in r["misses"]) or "-"
        print(f"{name}: {s['within_every_bound']}/{s['seeds']} seeds within every bound "
              f"({s['minutes_with_a_miss']} seed-minutes with a miss: {listed}); fixed bounds: student "
              f"{s['within_every_fixed_bound']}/{s['seeds']}, truth {s['truth_within_every_fixed_bound']}/{s['seeds']}")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
