"""A perfect world model that streams another map: can it keep the long-rollout bounds?

A student does not know map 7. Past its window it invents scenery. The most it can do is
stream *a* world of this kind perfectly, with exact frames and exact motion. This plays each
seed's keys (those `world long-rollout` plays in map 7) in another map, starting at that map's
spawn view. The walker there turns and looks as in map 7, relative to the start view; its
moves differ where that map's walls stop them. It renders the world along those poses and
writes a long-rollout report per seed: these frames and their following as the "student",
map 7's truth at map 7's poses as the ground truth, scored with `long_rollout.score_minutes`.

If such a world leaves the bounds, the bounds ask more of a student than being a perfect world
model. `noise_draws.py` reads the reports like a student's. Resumes: a seed whose report is
complete is skipped. `--workers` plays seeds in parallel processes.

`--through-vae` passes the streamed frames through the world VAE and the stream's tiny decoder
(`long_rollout.through_vae`, the whole session as one stream): the world as the student's decoder
can show it, which is all a student can reach. With it the streamed map may be map 7 itself:
the student's ceiling on the very frames it is judged against.

    python benchmarks/world/another_map.py --probe benchmarks/results/world/pose_probe.safetensors \
        --seeds 30-49 --other-map-seed 8 --workers 2 --out benchmarks/results/distill/twelfth_run/map8_as_student
"""
from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lingbot_rt.world.evaluate import FPS
from lingbot_rt.world.long_rollout import (BOUNDS, drift, ground_truth_minutes, minute_statistics, parse_seeds,
                                          render_minute, score_minutes, through_vae)
from lingbot_rt.world.map import generate_map, spawn_pose
from lingbot_rt.world.players import play
from lingbot_rt.world.pose_probe import load_probe
from lingbot_rt.world.renderer import Renderer
from lingbot_rt.world.shipped import shipped_student_dir
from lingbot_rt.world.stream import world_streaming
from lingbot_rt.world.walker import Walker

SIZE = 128


def replay(world, keys: np.ndarray) -> np.ndarray:
    """Poses [F, 4, 4] of `keys` [F, 8] (keys[0] unused, as `play` returns them) walked in `world`
    from its spawn view."""
    walker = Walker(world, spawn_pose(world, 0))
    poses = np.empty((len(keys), 4, 4))
    poses[0] = walker.pose
    for i in range(1, len(keys)):
        poses[i] = walker.step(keys[i][None])[0]
    return poses


def seed_report(seed: int, *, probe_path: str, minutes: int, map_seed: int, other_map_seed: int,
                through_vae_of: str | None = None) -> dict:
    """One seed: map 7's keys walked in the other map, its minutes against map 7's truth; with
    `through_vae_of` (a student directory) its frames pass through that student's stream's VAE
    and decoder first."""
    torch.set_num_threads(1)
    probe = load_probe(probe_path)
    num_frames = minutes * 60 * FPS + 1
    played = generate_map(map_seed)
    keys, _ = play(played, spawn_pose(played, 0), num_frames, seed)
    other = generate_map(other_map_seed)
    poses = replay(other, keys)
    frames = render_minute(Renderer(other), other.config.intrinsics(SIZE, SIZE), poses, SIZE, SIZE)
    if through_vae_of:
        frames = through_vae(world_streaming(through_vae_of), frames)
    truth = ground_truth_minutes(probe, minutes=minutes, map_seed=map_seed, seed=seed, height=SIZE, width=SIZE)
    per_minute = []
    for minute, start in enumerate(range(0, minutes * 60 * FPS, 60 * FPS)):
        cut = slice(start, start + 60 * FPS)
        per_minute.append({"minute": minute + 1, **minute_statistics(frames[cut], poses[cut], probe),
                           "ground_truth": truth[minute]})
    return {"minutes": minutes, "complete": True, "frames": num_frames, "fps": FPS, "map_seed": map_seed,
            "streamed_map_seed": other_map_seed, "through_vae": bool(through_vae_of), "seed": seed,
            "resolution": [SIZE, SIZE],
            "bounds": {k: list(v) if isinstance(v, tuple) else v for k, v in BOUNDS.items()},
            **score_minutes(per_minute), "drift": drift(per_minute), "per_minute": per_minute}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--probe", required=True)
    ap.add_argument("--seeds", default="30-49")
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--map-seed", type=int, default=7, help="the map the long rollouts play (the ground truth)")
    ap.add_argument("--other-map-seed", type=int, default=8, help="the map the perfect world model streams")
    ap.add_argument("--through-vae", action="store_true",
                    help="pass the frames through the world VAE and the shipped student's stream decoder")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", required=True, help="a report per seed: <out>/s<seed>.json")
    args = ap.parse_args()
    if args.other_map_seed == args.map_seed and not args.through_vae:
        raise SystemExit("another_map.py: --other-map-seed must differ from --map-seed (or pass --through-vae)")
    if not Path(args.probe).is_file():
        raise SystemExit(f"another_map.py: no pose probe at {args.probe}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def done(seed: int) -> bool:
        path = out / f"s{seed}.json"
        return path.is_file() and json.loads(path.read_text()).get("complete", False)

    todo = [s for s in parse_seeds(args.seeds) if not done(s)]
    work = functools.partial(seed_report, probe_path=args.probe, minutes=args.minutes, map_seed=args.map_seed,
                             other_map_seed=args.other_map_seed,
                             through_vae_of=str(shipped_student_dir()) if args.through_vae else None)
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for report in tqdm(pool.imap_unordered(work, todo), total=len(todo), unit="seed", desc="another map"):
            (out / f"s{report['seed']}.json").write_text(json.dumps(report, indent=2) + "\n")
            print(f"seed {report['seed']}: all within bounds {report['all_within_bounds']}; misses "
                  + (" ".join(f"{k}@{m['minute']}" for m in report["per_minute"]
                              for k, ok in m["within_bounds"].items() if ok is False) or "-"), flush=True)


if __name__ == "__main__":
    main()
