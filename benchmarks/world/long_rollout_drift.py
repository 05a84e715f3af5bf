"""The `drift` of long-rollout reports written before the report carried it (same function as
`lingbot_rt.world.long_rollout.drift`), for the student's and the ground truth's frame statistics.

    python benchmarks/world/long_rollout_drift.py benchmarks/results/distill/dmd_data_loss_h100/long_rollout_seeds/*.json \
        --out benchmarks/results/distill/dmd_data_loss_h100/long_rollout_seeds/drift.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lingbot_rt.world.long_rollout import drift


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    result = {"command": " ".join(sys.argv), "reports": {}}
    for path in args.reports:
        minutes = json.loads(Path(path).read_text())["per_minute"]
        truth = [dict.fromkeys(("yaw_direction_accuracy", "forward_direction_accuracy")) | m["ground_truth"]
                 for m in minutes if "ground_truth" in m]       # older reports: the truth's frame statistics only
        result["reports"][path] = {"student": drift(minutes),
                                   "ground_truth": {k: v for k, v in drift(truth).items() if v is not None}
                                   if len(truth) == len(minutes) else None}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for path, row in result["reports"].items():
        print(Path(path).name, {k: v["change"] if v else None for k, v in row["student"].items()})


if __name__ == "__main__":
    main()
