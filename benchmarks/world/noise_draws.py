"""Long-rollout reports of the same seeds under several noise draws (`world long-rollout
--noise-draw`): which misses come with a seed's keys and which with the stream's noise, how
much of a minute's statistics is noise, and whether the students' minutes are stationary.

Each argument is name=dir, dir holding one report per seed (s<seed>.json or <prefix>_s<seed>.json);
a name given several dirs has one noise draw per dir, on the same seeds.

    python benchmarks/world/noise_draws.py --out benchmarks/results/distill/twelfth_run/noise_draws.json \
        --calibrate perfect perfect=benchmarks/results/distill/twelfth_run/map8_as_student \
        perfect=benchmarks/results/distill/twelfth_run/map9_as_student \
        clt=benchmarks/results/distill/eighth_run/h100_rollouts \
        clt=benchmarks/results/distill/twelfth_run/h100_clt_draw1 \
        clt=benchmarks/results/distill/twelfth_run/h100_clt_draw2 \
        pab=benchmarks/results/distill/twelfth_run/h100_pab_draw0

Per student:
* `misses`: per seed, each draw's missed bounds (statistic@minute);
* `pass_rate`: the fraction of seed-draws with every minute within the bounds, and the chance
  that 20 seeds all pass if seeds pass independently at that rate;
* `noise_sd`: the standard deviation between draws of a minute's statistic (the keys fixed),
  and of its change from minute one, beside the bound (ratios as logs; 2+ draws);
* `minute_to_minute_sd`: within a seed-draw, the spread of the student's statistic relative to
  the world's at the same poses (log ratio, or difference for following) over its minutes;
* `per_minute_mean`: the mean over seed-draws of each minute's student / world ratio (frame
  statistics) or student - world difference (following): a collapse is a trend here;
* `scatter`: within a seed-draw, the spread over its minutes of the student's own statistic and
  of the world's at the same poses (log for frame statistics), and their correlation over the
  minutes: whether the student's minutes move with the world's, as the bounds' widening by the
  world's same minute assumes;
* `session_envelope_pass_rate`: the pass rate with each bound widened instead by the furthest
  the world moves from its minute one in any minute of the seed's session (a reading, not the
  report's bounds);
* with `--calibrate NAME`, `calibrated_bounds`: the fixed bounds widened to the furthest any
  minute of NAME's reports moves from its minute one (NAME: reports of perfect world models,
  `another_map.py`), and each student's `calibrated_pass_rate` within them: bounds that every
  perfect world model keeps, with no widening by the played map's same minute;
  `collapse_detection`: the fraction of each student's seed-draws the calibrated bounds and
  the report's bounds fail once a collapse is put into them (`COLLAPSES`: a fade to grey, a
  saturation, a darkening, frozen motion), growing linearly from minute one to its full size
  at the last minute: bounds that pass a collapse do not test for one;
* `shuffled_pass_rate`: the pass rate when each seed-draw's minutes (each with the world's at
  its poses) are put in a random order, `SHUFFLES` orders each. Shuffling removes any trend
  over the 10 minutes and keeps how much the minutes scatter: it is the rate at which the
  bounds pass a student whose minutes scatter as these do and that does not drift at all;
* `following`: the mean over seed-draw minutes of each direction accuracy, the student's and the
  world's at the same poses (None where no report has it), and `worst_forward_drop`, the
  furthest a minute's forward accuracy falls below its seed-draw's minute one.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from lingbot_rt.world.long_rollout import BOUNDS, score_minutes, within_bounds

SHUFFLES = 200
FOLLOWING = ("yaw_direction_accuracy", "forward_direction_accuracy", "backward_direction_accuracy")
REPORT_NAME = re.compile(r"(?:^|_)s(\d+)\.json$")          # s30.json, rollout_clt_s30.json
# full size at the last minute: factors of frame statistics, following accuracy to reach
COLLAPSES = {"fade to grey": {"contrast": 0.5, "sharpness": 0.5},
             "saturation": {"mean_intensity": 1.5, "contrast": 1.5},
             "darkening": {"mean_intensity": 0.6},
             "frozen motion": {"yaw_direction_accuracy": 0.5, "forward_direction_accuracy": 0.5}}


def load_draws(dirs: list[str]) -> tuple[list[int], list[list[dict]]]:
    """The seeds every dir holds and, per dir, their reports in seed order, scored against the
    bounds as `long_rollout` scores them now; refuses dirs whose seeds differ or a report whose
    seed is not its name's."""
    seeds = None
    draws = []
    for d in dirs:
        named = sorted((int(m.group(1)), p) for p in Path(d).glob("*.json") if (m := REPORT_NAME.search(p.name)))
        reports = [json.loads(p.read_text()) for _, p in named]
        for (seed, path), report in zip(named, reports):
            # reports written before "complete" existed were written once, at the end
            complete = report["complete"] if "complete" in report else len(report["per_minute"]) == report["minutes"]
            if report["seed"] != seed or not complete:
                raise ValueError(f"{path}: not the complete report of seed {seed}")
            report.update(score_minutes(report["per_minute"]))
        these = [r["seed"] for r in reports]
        if seeds is not None and these != seeds:
            raise ValueError(f"{d} holds seeds {these}, the first dir {seeds}")
        seeds = these
        draws.append(reports)
    return seeds, draws


def parse_groups(groups: list[str], script: str) -> dict[str, list[str]]:
    """name=dir arguments as {name: [dir, ...]} in their order (a name given several dirs has a
    noise draw per dir); exits naming the argument that is not name=dir of an existing dir."""
    parsed: dict[str, list[str]] = {}
    for group in groups:
        name, sep, d = group.partition("=")
        if not sep or not name or not Path(d).is_dir():
            raise SystemExit(f"{script}: {group!r} is not name=dir of reports")
        parsed.setdefault(name, []).append(d)
    return parsed


def shuffled_pass_rate(reports: list[dict], rng: np.random.Generator) -> float:
    """The fraction of `SHUFFLES` random minute orders per report that keep every bound."""
    passed = 0
    for report in reports:
        minutes = report["per_minute"]
        for _ in range(SHUFFLES):
            order = [dict(minutes[i]) for i in rng.permutation(len(minutes))]
            passed += score_minutes(order)["all_within_bounds"]
    return passed / (SHUFFLES * len(reports))


def session_envelope(report: dict) -> dict:
    """`BOUNDS` widened by the furthest the world moves from its own minute one in any minute of
    the report's session."""
    minutes = report["per_minute"]
    truth_first = minutes[0]["ground_truth"]
    bounds = {}
    for name, bound in BOUNDS.items():
        moves = [m["ground_truth"][name] for m in minutes]
        if isinstance(bound, tuple):
            bounds[name] = (bound[0] * min(1.0, min(moves) / truth_first[name]),
                            bound[1] * max(1.0, max(moves) / truth_first[name]))
        else:
            bounds[name] = bound + min(0.0, min(moves) - truth_first[name])
    return bounds


def calibrated_bounds(reports: list[dict]) -> dict:
    """`BOUNDS` widened to the furthest the reports' minutes move from their minute one."""
    bounds = {}
    for name, bound in BOUNDS.items():
        if isinstance(bound, tuple):
            ratios = [m[name] / r["per_minute"][0][name] for r in reports for m in r["per_minute"]]
            bounds[name] = (min(bound[0], min(ratios)), max(bound[1], max(ratios)))
        else:
            changes = [m[name] - r["per_minute"][0][name] for r in reports for m in r["per_minute"]]
            bounds[name] = min(bound, min(changes))
    return bounds


def within(report: dict, bounds: dict) -> bool:
    """Every minute within `bounds` (shaped as `BOUNDS`) of minute one, no widening."""
    first = report["per_minute"][0]
    return all(ok is not False for minute in report["per_minute"]
               for ok in within_bounds(minute, first, bounds=bounds).values())


def collapsed(report: dict, collapse: dict) -> dict:
    """A copy of `report` with `collapse` ({statistic: full size}) grown linearly over its
    minutes: frame statistics scaled toward their factor, following moved toward its value."""
    minutes = [dict(m) for m in report["per_minute"]]
    for i, minute in enumerate(minutes):
        share = i / (len(minutes) - 1)
        for name, size in collapse.items():
            if isinstance(BOUNDS[name], tuple):
                minute[name] *= 1 + (size - 1) * share
            else:
                minute[name] += (size - minute[name]) * share
    return {**report, "per_minute": minutes}


def detected(reports: list[dict], collapse: dict, bounds: dict) -> dict:
    """The fractions of `reports` that `bounds` and the report's own bounds fail once `collapse`
    is put into them."""
    hit = [collapsed(r, collapse) for r in reports]
    return {"calibrated": round(float(np.mean([not within(r, bounds) for r in hit])), 3),
            "report": round(float(np.mean([not score_minutes(r["per_minute"])["all_within_bounds"] for r in hit])), 3)}


def relative(value: float, truth: float, bound) -> float:
    """A statistic against the world's: log ratio for a ratio bound, difference otherwise."""
    return float(np.log(value / truth)) if isinstance(bound, tuple) else value - truth


def following(reports: list[dict]) -> dict:
    """The reports' direction accuracies averaged over their minutes, the student's and the
    world's (None where no minute has one), and the worst forward drop from minute one."""
    minutes = [m for r in reports for m in r["per_minute"]]

    def mean(values):
        values = [v for v in values if v is not None]
        return round(float(np.mean(values)), 4) if values else None
    out = {name: {"student": mean(m.get(name) for m in minutes),
                  "world": mean(m["ground_truth"].get(name) for m in minutes)} for name in FOLLOWING}
    forward = "forward_direction_accuracy"
    out["worst_forward_drop"] = round(min(m[forward] - r["per_minute"][0][forward]
                                          for r in reports for m in r["per_minute"][1:]), 4)
    return out


def summarise(dirs: list[str], seeds: list[int], draws: list[list[dict]]) -> dict:
    """One student's reports (`load_draws` of `dirs`, a dir per noise draw): the readings the
    module's docstring lists."""
    misses = {seed: [[f"{k}@{m['minute']}" for m in r["per_minute"] for k, ok in m["within_bounds"].items()
                      if ok is False] for r in (draw[i] for draw in draws)] for i, seed in enumerate(seeds)}
    passed = [r["all_within_bounds"] for draw in draws for r in draw]
    rate = sum(passed) / len(passed)
    out = {"dirs": dirs, "seeds": seeds, "draws": len(draws),
           "pass_per_draw": [sum(r["all_within_bounds"] for r in draw) for draw in draws],
           "pass_rate": {"seed_draws": len(passed), "rate": round(rate, 3), "all_of_20_seeds": round(rate ** 20, 3)},
           "seeds_missing_in_every_draw": [s for s, m in misses.items() if all(m)],
           "session_envelope_pass_rate": round(float(np.mean([within(r, session_envelope(r)) for draw in draws
                                                               for r in draw])), 3),
           "shuffled_pass_rate": round(shuffled_pass_rate([r for draw in draws for r in draw],
                                                           np.random.default_rng(0)), 3),
           "following": following([r for draw in draws for r in draw]),
           "misses": misses, "noise_sd": {}, "minute_to_minute_sd": {}, "scatter": {}, "per_minute_mean": {}}
    for name, bound in BOUNDS.items():
        # [draw, seed, minute]: the student's statistic, and relative to the world at the same poses
        value = np.array([[[m[name] for m in r["per_minute"]] for r in draw] for draw in draws], dtype=np.float64)
        rel = np.array([[[relative(m[name], m["ground_truth"][name], bound) for m in r["per_minute"]] for r in draw]
                        for draw in draws])
        own = np.log(value) if isinstance(bound, tuple) else value
        if len(draws) > 1:
            change = own[..., 1:] - own[..., :1]
            out["noise_sd"][name] = {"minute": round(float(own.std(0, ddof=1).mean()), 4),
                                     "change_from_minute_one": round(float(change.std(0, ddof=1).mean()), 4),
                                     "bound": round(float(np.log(bound[1])) if isinstance(bound, tuple) else -bound, 4)}
        out["minute_to_minute_sd"][name] = round(float(rel.std(-1, ddof=1).mean()), 4)
        world = own - rel                                     # the world's own statistic (log for ratios)
        correlation = [np.corrcoef(a, b)[0, 1] for a, b in zip(own.reshape(-1, own.shape[-1]),
                                                               world.reshape(-1, own.shape[-1]))
                       if a.std() > 0 and b.std() > 0]
        out["scatter"][name] = {"student": round(float(own.std(-1, ddof=1).mean()), 4),
                                "world": round(float(world.std(-1, ddof=1).mean()), 4),
                                "correlation": round(float(np.mean(correlation)), 3) if correlation else None}
        per_minute = rel.mean((0, 1))
        out["per_minute_mean"][name] = [round(float(np.exp(v) if isinstance(bound, tuple) else v), 4)
                                        for v in per_minute]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("groups", nargs="+", help="name=dir of s<seed>.json reports, a dir per noise draw")
    ap.add_argument("--calibrate", help="a group (perfect world models) whose minutes set calibrated bounds")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    groups = parse_groups(args.groups, "noise_draws.py")
    if args.calibrate is not None and args.calibrate not in groups:
        raise SystemExit(f"noise_draws.py: --calibrate {args.calibrate!r} names no group")
    loaded = {name: load_draws(dirs) for name, dirs in groups.items()}
    result = {"command": " ".join(sys.argv),
              "students": {name: summarise(dirs, *loaded[name]) for name, dirs in groups.items()}}
    if args.calibrate is not None:
        bounds = calibrated_bounds([r for draw in loaded[args.calibrate][1] for r in draw])
        result["calibrated_bounds"] = {"by": args.calibrate, "bounds": bounds}
        for name, dirs in groups.items():
            runs = [(k, r) for k, draw in enumerate(loaded[name][1]) for r in draw]
            misses = [f"seed {r['seed']} ({dirs[k]})" for k, r in runs if not within(r, bounds)]
            result["students"][name]["calibrated_pass_rate"] = {"seed_draws": len(runs),
                                                                "passed": len(runs) - len(misses), "misses": misses}
            result["students"][name]["collapse_detection"] = {
                kind: detected([r for _, r in runs], collapse, bounds) for kind, collapse in COLLAPSES.items()}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, s in result["students"].items():
        print(f"{name}: {s['draws']} draws of seeds {s['seeds'][0]}-{s['seeds'][-1]}; within every bound per draw "
              f"{s['pass_per_draw']}; seed-draw pass rate {s['pass_rate']['rate']} (20 of 20 seeds: "
              f"{s['pass_rate']['all_of_20_seeds']}); with the minutes shuffled {s['shuffled_pass_rate']}; "
              f"within the session envelope {s['session_envelope_pass_rate']}; "
              f"missing in every draw {s['seeds_missing_in_every_draw'] or '-'}")
        print("  following (student / world): " + ", ".join(
            f"{k.split('_')[0]} {v['student']} / {v['world']}" for k, v in s["following"].items() if isinstance(v, dict))
            + f"; worst forward drop from minute one {s['following']['worst_forward_drop']}")
        for stat, sd in s["noise_sd"].items():
            print(f"  {stat}: noise sd {sd['minute']} (change from minute one {sd['change_from_minute_one']}, bound "
                  f"{sd['bound']}); minute-to-minute sd against the world {s['minute_to_minute_sd'][stat]}")
        for stat, sc in s["scatter"].items():
            print(f"  {stat}: minute-to-minute sd student {sc['student']}, world {sc['world']}; "
                  f"correlation {sc['correlation']}")
        for stat, means in s["per_minute_mean"].items():
            print(f"  {stat} per minute, against the world: {' '.join(f'{v:.3f}' for v in means)}")
    if args.calibrate is not None:
        shown = {k: [round(x, 3) for x in b] if isinstance(b, tuple) else round(b, 3) for k, b in bounds.items()}
        print(f"bounds calibrated by {args.calibrate}: {shown}")
        for name, s in result["students"].items():
            rate = s["calibrated_pass_rate"]
            print(f"  {name}: {rate['passed']} of {rate['seed_draws']} seed-draws within them; a collapse fails "
                  + ", ".join(f"{kind} {d['calibrated']} ({d['report']} with the report's bounds)"
                              for kind, d in s["collapse_detection"].items()) + " of them")


if __name__ == "__main__":
    main()
