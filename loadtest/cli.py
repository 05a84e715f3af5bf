"""`lingbot-rt loadtest`: N simulated players against a server, or a ramp to its capacity.

    lingbot-rt loadtest --server 127.0.0.1:50051 --players 4 --duration 60s --out benchmarks/results/loadtest/cpu_4players
    lingbot-rt loadtest --server 127.0.0.1:50051 --ramp 1..8 --duration 30s --target-fps 16 --target-p99-ms 1500 --out DIR

`add_loadtest_command(subparsers)` registers it on the main parser (`lingbot_rt/cli.py`); this
module imports only argparse until the command runs.
"""
from __future__ import annotations

import argparse
import re

DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?$")
UNIT_SECONDS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """"60s", "2m", "1.5h", "500ms" or plain seconds ("90") -> seconds (> 0)."""
    match = DURATION.match(text.strip().lower())
    if match is None:
        raise ValueError(f"bad duration {text!r}: give seconds (90), or a number with s, m, h or ms (60s, 2m)")
    seconds = float(match[1]) * UNIT_SECONDS[match[2]]
    if seconds <= 0:
        raise ValueError(f"bad duration {text!r}: must be more than 0")
    return seconds


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def add_loadtest_command(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("loadtest", help="simulated players over gRPC: fps, latency, drops, errors; "
                                               "or a ramp to the server's capacity")
    p.add_argument("--server", default="127.0.0.1:50051", help="gRPC address HOST:PORT")
    p.add_argument("--players", type=_positive_int, help="players at once (default 4; not with --ramp)")
    p.add_argument("--duration", type=_duration_arg, default=60.0,
                   help="how long each player plays, per run or per ramp step: 60s, 2m, or seconds")
    p.add_argument("--pattern", default="mixed",
                   help="keys: mixed, walk, turns, idle, or an action string looped (w-32,l-16,none-16)")
    p.add_argument("--scene", default="world-0", help="built-in start view (world-<seed>)")
    p.add_argument("--image", help="start image file (JPEG/PNG) instead of --scene")
    p.add_argument("--prompt", default="")
    p.add_argument("--token", help="auth token, when the server requires one")
    p.add_argument("--stagger", type=_duration_arg, default=0.1,
                   help="player i starts i x this after the first (default 0.1 s)")
    p.add_argument("--ramp", help="player counts of the ramp's steps: 1,2,4,8 or 1..8 (+1) or 1..16x2 (x2)")
    p.add_argument("--target-fps", type=_positive_float, default=16.0,
                   help="ramp: every player's delivered FPS must reach this (default 16)")
    p.add_argument("--target-p99-ms", type=_positive_float,
                   help="ramp: action->frame p99 over all players must stay under this (default: not checked)")
    p.add_argument("--machine", default="", help="a note on the machines, kept in the JSON")
    p.add_argument("--out", help="write loadtest.json and loadtest.png into this directory")
    p.set_defaults(func=cmd_loadtest)
    return p


def command_line(args) -> str:
    """The command with every option spelled out, for the record."""
    parts = ["lingbot-rt", "loadtest", "--server", args.server]
    parts += ["--ramp", args.ramp] if args.ramp else ["--players", str(args.players)]
    parts += ["--duration", f"{args.duration:g}s", "--pattern", args.pattern, "--stagger", f"{args.stagger:g}s"]
    parts += ["--image", args.image] if args.image else ["--scene", args.scene]
    if args.ramp:
        parts += ["--target-fps", f"{args.target_fps:g}"]
        if args.target_p99_ms is not None:
            parts += ["--target-p99-ms", f"{args.target_p99_ms:g}"]
    if args.out:
        parts += ["--out", args.out]
    return " ".join(parts)


def cmd_loadtest(args) -> int:
    import asyncio
    from pathlib import Path

    import grpc

    from . import report
    from .driver import Target, parse_ramp, run_players, run_ramp, server_info
    from .patterns import KeyPattern
    from .player import PlayerConfig
    if args.ramp and args.players is not None:
        raise ValueError("give --players (one run) or --ramp (steps), not both")
    steps = parse_ramp(args.ramp) if args.ramp else None
    args.players = None if steps else (args.players or 4)
    if args.out:
        from .plot import require_matplotlib
        require_matplotlib()
    pattern = KeyPattern.parse(args.pattern)
    config = PlayerConfig(args.server, pattern, args.duration, scene=args.scene,
                          image=Path(args.image).read_bytes() if args.image else None, prompt=args.prompt,
                          token=args.token or "", stagger_s=args.stagger)

    async def main() -> tuple[dict, dict]:
        try:
            info = await server_info(args.server, config.token)
        except grpc.aio.AioRpcError as exc:
            raise ValueError(f"cannot ask the server at {args.server}: {exc.code().name}: {exc.details()}") from None
        if steps:
            target = Target(args.target_fps, args.target_p99_ms)
            try:
                return info, await run_ramp(config, steps, target,
                                            progress=lambda step: print(report.step_line(step), flush=True))
            except TimeoutError as exc:          # the server never emptied between steps
                raise ValueError(str(exc)) from None
        return info, await run_players(config, args.players)

    info, result = asyncio.run(main())
    doc = report.document("ramp" if steps else "run", result, command=command_line(args), server=args.server,
                          server_info=info, machine_note=args.machine,
                          config={"players": args.players, "ramp": steps, "duration_s": args.duration,
                                  "pattern": args.pattern, "pattern_segments": [list(s) for s in pattern.segments],
                                  "scene": None if args.image else args.scene, "image": args.image,
                                  "stagger_s": args.stagger})
    print(report.summary_text(doc))
    if args.out:
        json_path, png_path = report.write(doc, args.out)
        print(f"wrote {json_path} and {png_path}")
    return 1 if not steps and result["overall"]["errors"] else 0
