"""`lingbot-rt world long-rollout`: does a streaming student hold up for minutes?

`minutes` of play (at 16 FPS, 10 minutes = 9600 frames) through the same `StreamingInference`
the server runs, with the rolling KV cache: a scripted player's keys (`players.play` in a
generated map: walks, turns, looks, retraces) from the map's spawn view, one session per player
seed, all seeds batched as the server batches its players. Per minute of generated video:

* frame statistics: mean intensity, contrast (std of intensity within a frame), sharpness
  (mean |Laplacian| of the intensity), each averaged over the minute's frames;
* action following: the pose probe's motion on the generated frames against the commanded
  camera motion (`evaluate.action_following`: yaw / forward direction accuracy and errors).

Bounds, each relative to minute one (a collapse shows as drift to grey or saturated colour,
blur, or frozen motion): mean intensity within +-15%, contrast and sharpness within x0.7 to
x1.3, yaw direction accuracy at least minute one's minus 0.10, forward direction accuracy at
least minute one's minus 0.15 (`BOUNDS`, the fixed bounds).

The world itself changes from minute to minute, so each minute also carries the statistics of
the ground truth rendered at the same poses, with the probe's action following on it
(`ground_truth`). The world leaves the fixed bounds: over seeds 0-49 of map 7 the truth is
outside them in 37 seeds (its mean intensity spans 0.75-1.37x minute one as the keys look at
more or less sky; the first pose probe's forward accuracy on the true frames moved from -0.39
to +0.35 against minute one with the motions the keys command,
`benchmarks/results/world/truth_minutes_map7.json`; the committed probe's, trained on 5x the
clips for 5x the steps, moves -0.16 to +0.16 on seeds 0-19, `.../world/pose_probes/`). A bound
the world fails does not detect a collapse, so each minute's bound is widened by as far as the
truth moved from its own minute one at the same poses (`within_bounds`): a ratio bound
(lo, hi) becomes (lo * min(1, r), hi * max(1, r)) for the truth's ratio r, a difference bound b
becomes b + min(0, d) for the truth's difference d. The world always passes these; a student
passes them when it moves no further than the fixed bounds beyond where the world moves. The
report states per minute which hold (`within_bounds`), and the fixed ones for the student and
the truth (`within_fixed_bounds`, `ground_truth_within_fixed_bounds`).

Minute one is itself one noisy sample, so the report also fits a line through each
statistic's minutes (`drift`): the change over the run it implies, relative to the mean for
the frame statistics and in accuracy points for action following, with +-2 standard errors.
A collapse is a drift; a student whose minutes scatter around a level is not drifting, whether
or not a minute leaves the bounds.

A seed fixes both the player's keys and the stream's noise. `noise_draw` k > 0 keeps the keys
and draws the stream's noise from another seed (`noise_seed`): rerunning a seed with other
draws tells a miss that comes with the keys from one that comes with the noise.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from ..model.vae import check_video, video_to_uint8
from ..pipeline.actions import ScriptedActions
from ..pipeline.streaming import StreamingInference
from .evaluate import FPS, action_following
from .latents import video_tensor
from .map import generate_map, spawn_pose
from .players import play
from .pose_probe import PoseProbe
from .renderer import Renderer

BOUNDS = {"mean_intensity": (0.85, 1.15), "contrast": (0.7, 1.3), "sharpness": (0.7, 1.3),
          "yaw_direction_accuracy": -0.10, "forward_direction_accuracy": -0.15}
LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def frame_statistics(frames: np.ndarray) -> dict:
    """uint8 [T, H, W, 3] -> mean intensity, contrast and sharpness, averaged over the frames."""
    gray = torch.from_numpy(frames).float().mean(-1, keepdim=True).permute(0, 3, 1, 2) / 255.0    # [T, 1, H, W]
    return {"mean_intensity": round(gray.mean().item(), 4),
            "contrast": round(gray.flatten(1).std(1).mean().item(), 4),
            "sharpness": round(F.conv2d(gray, LAPLACIAN).abs().mean().item(), 5)}


def drift(per_minute: list[dict]) -> dict:
    """Least-squares trend of each bounded statistic over the minutes: {name: {"change": the
    fitted change from the first to the last minute (relative to the mean for frame statistics),
    "interval": change +- 2 standard errors}}; None for fewer than 3 minutes or missing values."""
    out = {}
    for name, bound in BOUNDS.items():
        values = np.array([m[name] for m in per_minute if m[name] is not None], dtype=np.float64)
        if len(values) < 3 or len(values) < len(per_minute):
            out[name] = None
            continue
        (slope, _), cov = np.polyfit(np.arange(len(values), dtype=np.float64), values, 1, cov=True)
        stderr = np.sqrt(cov[0, 0])          # residual variance over n - 2 degrees of freedom
        scale = (len(values) - 1) / (values.mean() if isinstance(bound, tuple) else 1.0)
        change, half = slope * scale, 2 * stderr * scale
        out[name] = {"change": round(float(change), 4), "interval": [round(float(change - half), 4),
                                                                     round(float(change + half), 4)]}
    return out


def within_bounds(minute: dict, first: dict, truth: dict | None = None, truth_first: dict | None = None, *,
                  bounds: dict = BOUNDS) -> dict:
    """Which of `bounds` (shaped as `BOUNDS`) a minute's statistics keep against minute one's:
    True / False, None where a statistic is missing. Given the ground truth's same minute and
    minute one, each bound is widened by as far as the truth moved (the module's docstring)."""
    checks = {}
    for name, bound in bounds.items():
        value, reference = minute.get(name), first.get(name)
        known = truth is not None and truth.get(name) is not None and truth_first.get(name) is not None
        if value is None or reference is None:
            checks[name] = None
        elif isinstance(bound, tuple):
            moved = truth[name] / truth_first[name] if known else 1.0
            checks[name] = bound[0] * min(1.0, moved) <= value / reference <= bound[1] * max(1.0, moved)
        else:
            moved = truth[name] - truth_first[name] if known else 0.0
            checks[name] = value >= reference + bound + min(0.0, moved)
    return checks


def score_minutes(per_minute: list[dict]) -> dict:
    """Check every minute of a report against minute one (in place: `within_bounds`,
    `within_fixed_bounds`, `ground_truth_within_fixed_bounds`); returns whether all hold."""
    first = per_minute[0]
    for minute in per_minute:
        truth, truth_first = minute.get("ground_truth"), first.get("ground_truth")
        minute["within_bounds"] = within_bounds(minute, first, truth, truth_first)
        minute["within_fixed_bounds"] = within_bounds(minute, first)
        if truth is not None:
            minute["ground_truth_within_fixed_bounds"] = within_bounds(truth, truth_first)

    def holds(key: str) -> bool:
        return all(v is not False for m in per_minute for v in m.get(key, {}).values())

    return {"all_within_bounds": holds("within_bounds"), "all_within_fixed_bounds": holds("within_fixed_bounds"),
            "ground_truth_all_within_fixed_bounds": holds("ground_truth_within_fixed_bounds")}


def minute_statistics(frames: np.ndarray, poses: np.ndarray, probe: PoseProbe) -> dict:
    """One minute of video (uint8 [T, H, W, 3], c2w poses [T, 4, 4]): its frame statistics and
    the pose probe's action following against the poses."""
    device = next(probe.parameters()).device
    following = action_following(probe, torch.from_numpy(frames)[None].to(device),
                                 torch.from_numpy(poses)[None].to(device))
    return frame_statistics(frames) | following


def render_minute(renderer: Renderer, intrinsics: np.ndarray, poses: np.ndarray, height: int,
                  width: int) -> np.ndarray:
    """The world's true frames at `poses` (uint8 [T, H, W, 3]), rendered 96 at a time."""
    poses = torch.from_numpy(poses)
    return np.concatenate([renderer.render(poses[i:i + 96], intrinsics, height, width).numpy()
                           for i in range(0, len(poses), 96)])


@torch.no_grad()
def through_vae(pipeline: StreamingInference, frames: np.ndarray, chunk: int = 64) -> np.ndarray:
    """uint8 [T, H, W, 3] (T = 4n+1) encoded by the pipeline's VAE and decoded as its stream
    decodes (its tiny decoder where it has one): what the decoder allows a student to show.
    Streamed `chunk` latent frames at a time: the frames of one pass over the clip (the VAE's
    streams are exact, to float rounding) in bounded memory, so minutes of video fit."""
    check_video(torch.from_numpy(frames).permute(3, 0, 1, 2)[None])     # a view: 4n+1 frames, sizes
    encoder, decoder = pipeline.vae.stream_encoder(), (pipeline.decoder or pipeline.vae).stream_decoder()
    cuts = [0, *range(1 + 4 * chunk, len(frames), 4 * chunk), len(frames)]
    passed = []
    for start, stop in zip(cuts[:-1], cuts[1:]):
        video = video_tensor(torch.from_numpy(frames[start:stop])[None].to(pipeline.device))
        passed.append(video_to_uint8(decoder.decode(encoder.encode(video))[0]).cpu().numpy())
    return np.concatenate(passed)


@torch.no_grad()
def ground_truth_minutes(probe: PoseProbe, *, minutes: int, map_seed: int = 7, seed: int = 0, height: int = 128,
                         width: int = 128) -> list[dict]:
    """The statistics of each minute of the world itself rendered along a scripted session's
    poses (`play` with `seed` from the map's spawn view): what a long rollout's ground truth is."""
    world = generate_map(map_seed)
    _, poses = play(world, spawn_pose(world, 0), minutes * 60 * FPS + 1, seed)
    renderer, intrinsics, per_minute = Renderer(world), world.config.intrinsics(height, width), []
    for start in range(0, minutes * 60 * FPS, 60 * FPS):
        path = poses[start:start + 60 * FPS]
        per_minute.append(minute_statistics(render_minute(renderer, intrinsics, path, height, width), path, probe))
    return per_minute


def noise_seed(seed: int, draw: int) -> int:
    """The stream's noise seed for a player seed's `draw`-th noise draw: the seed itself for
    draw 0 (what a session with that seed streams), and for other draws seeds distinct from
    every other (seed, draw) with seed < 1_000_003."""
    if draw < 0:
        raise ValueError(f"a noise draw is a number >= 0, got {draw}")
    return seed if draw == 0 else seed + draw * 1_000_003


def parse_seeds(text: str) -> list[int]:
    """Player seeds from "0-49", "3", "0,4,7-9" or "0 1 2", in that order, each once."""
    seeds = []
    for part in re.split(r"[,\s]+", text.strip()):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()) or int(last or first) < int(first):
            raise ValueError(f"seeds must be numbers or ranges like 0-49, separated by commas or spaces; got {text!r}")
        seeds += [s for s in range(int(first), int(last or first) + 1) if s not in seeds]
    return seeds


class ScriptedSession:
    """One scripted player of a long rollout: its keys from the map's spawn view, the world's
    poses along them, its stream's session, and its minutes as they close. With `start` > 0 the
    stream begins `start` frames into the scripted walk (`image` is then the world's view there)."""

    def __init__(self, pipeline: StreamingInference, world, image: np.ndarray, seed: int, num_frames: int,
                 noise_draw: int = 0, start: int = 0):
        self.seed, self.num_frames, self.noise_draw = seed, num_frames, noise_draw
        keys, poses = play(world, spawn_pose(world, 0), start + num_frames, seed)
        self.world_poses = poses[start:]                                   # world_poses[i]: the stream's frame i
        self.actions = ScriptedActions(keys[start + 1:])
        self.session = pipeline.open_session(image, world.prompt, noise_seed(seed, noise_draw))
        self.frames, self.poses, self.per_minute, self.thumbs = [], [], [], []

    @property
    def done(self) -> bool:
        return self.session.num_video_frames >= self.num_frames

    def add(self, frames: np.ndarray, poses: np.ndarray, renderer: Renderer, intrinsics: np.ndarray,
            probe: PoseProbe) -> bool:
        """Append a block's frames; score the minute they complete, if any (returns whether one closed)."""
        self.frames.append(frames)
        self.poses.append(poses)
        per_minute = 60 * FPS
        if sum(len(f) for f in self.frames) < per_minute:
            return False
        frames, poses = np.concatenate(self.frames), np.concatenate(self.poses)
        start = len(self.per_minute) * per_minute            # the stream's frame i is the world's frame i
        truth_path = self.world_poses[start:start + per_minute]
        height, width = frames.shape[1:3]
        truth_frames = render_minute(renderer, intrinsics, truth_path, height, width)
        self.per_minute.append({"minute": len(self.per_minute) + 1,
                                **minute_statistics(frames[:per_minute], poses[:per_minute], probe),
                                "ground_truth": minute_statistics(truth_frames, truth_path, probe)})
        self.thumbs.append(np.concatenate([frames[0], truth_frames[0]]))     # the stream over the world
        self.frames, self.poses = [frames[per_minute:]], [poses[per_minute:]]
        return True


@torch.no_grad()
def stream_blocks(pipeline: StreamingInference, players: list[ScriptedSession]):
    """Every player's session block by block, the live sessions batched through the pipeline's
    `denoise` as the server batches its players: yields (player, uint8 frames [T, H, W, 3],
    c2w poses [T, 4, 4]), each session cut at its `num_frames`."""
    while live := [p for p in players if not p.done]:
        plans = [pipeline.plan(p.session, p.actions.block(*pipeline.actions_needed(p.session))) for p in live]
        latents = pipeline.denoise([p.session for p in live], plans)
        for player, plan, block in zip(live, plans, latents):
            keep = min(plan.num_frames, player.num_frames - plan.first_frame)
            yield player, pipeline.decode(player.session, block)[:keep], plan.poses[:keep]


@torch.no_grad()
def long_rollouts(pipeline: StreamingInference, probe: PoseProbe, *, seeds: list[int], minutes: float = 10.0,
                  map_seed: int = 7, noise_draw: int = 0, out_dir: str | Path | None = None,
                  progress: bool = True) -> list[dict]:
    """`minutes` of scripted play for every seed, the sessions batched through the pipeline's
    `denoise` as the server batches its players (each seed's frames depend on its seed and
    `noise_draw` alone).
    With `out_dir`, each seed's report goes to <out_dir>/s<seed>/long_rollout.json, rewritten
    as each of its minutes closes ("complete": false until the last), with the minutes'
    first frames beside it (long_rollout_minutes.png: the start image, then each minute's first
    frame, the stream's over the world's at the same pose)."""
    if minutes < 1:
        raise ValueError(f"a long rollout reports per whole minute: minutes must be >= 1, got {minutes}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    noise_seed(0, noise_draw)
    if pipeline.free_slots < len(seeds):
        raise ValueError(f"{len(seeds)} seeds need as many session slots; the pipeline has {pipeline.free_slots} "
                         f"free (StreamConfig.max_sessions)")
    height, width = pipeline.height, pipeline.width
    world = generate_map(map_seed)
    renderer, intrinsics = Renderer(world), world.config.intrinsics(height, width)
    image = renderer.render(spawn_pose(world, 0)[None], intrinsics, height, width)[0].numpy()
    num_frames = int(round(minutes * 60 * FPS)) + 1
    players = []
    try:
        for seed in seeds:
            players.append(ScriptedSession(pipeline, world, image, seed, num_frames, noise_draw))
        with tqdm(total=num_frames * len(seeds), unit="frame", desc="long rollouts", disable=not progress) as bar:
            for player, frames, poses in stream_blocks(pipeline, players):
                if player.add(frames, poses, renderer, intrinsics, probe) and out_dir is not None:
                    _write_report(player, image, num_frames, map_seed, (height, width), out_dir)
                bar.update(len(frames))
    finally:
        for player in players:
            pipeline.close_session(player.session)
    return [_write_report(p, image, num_frames, map_seed, (height, width), out_dir) for p in players]


def _write_report(player: ScriptedSession, image: np.ndarray, num_frames: int, map_seed: int,
                  resolution: tuple[int, int], out_dir: str | Path | None) -> dict:
    report = {"minutes": len(player.per_minute), "complete": player.done, "frames": num_frames, "fps": FPS,
              "map_seed": map_seed, "seed": player.seed, "noise_draw": player.noise_draw,
              "resolution": list(resolution),
              "bounds": {k: list(v) if isinstance(v, tuple) else v for k, v in BOUNDS.items()},
              **score_minutes(player.per_minute), "drift": drift(player.per_minute), "per_minute": player.per_minute}
    if out_dir is not None:
        out = Path(out_dir) / f"s{player.seed}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "long_rollout.json").write_text(json.dumps(report, indent=2) + "\n")
        Image.fromarray(np.concatenate([np.concatenate([image, image]), *player.thumbs], 1)).save(
            out / "long_rollout_minutes.png")
    return report
