"""`lingbot-rt`: one command line, a subcommand per job.

    lingbot-rt make-tiny-checkpoint --out ckpt/tiny
    lingbot-rt inspect-checkpoint ckpt/tiny/lingbot_world_fast
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def _dtype(name: str):
    import torch
    try:
        return getattr(torch, DTYPES[name])
    except KeyError:
        raise argparse.ArgumentTypeError(f"dtype must be one of {sorted(DTYPES)}") from None


def cmd_make_tiny_checkpoint(args) -> int:
    from .model.tiny_checkpoint import make_tiny_checkpoint
    out = make_tiny_checkpoint(args.out, config=args.config, control_type=args.control, num_shards=args.shards,
                               fmt=args.format, dtype=args.dtype, seed=args.seed)
    print(f"wrote {out}")
    return 0


def cmd_inspect_checkpoint(args) -> int:
    from .model.checkpoint import load_model
    model = load_model(args.path, dtype=args.dtype, device="cpu" if args.device is None else args.device)
    cfg = model.cfg
    print(json.dumps({"path": args.path, "config": cfg.to_diffusers(), "tensors": len(model.state_dict()),
                      "params": model.num_params(), "dtype": str(model.dtype)}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lingbot-rt", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-tiny-checkpoint", help="write a small random checkpoint in the released layout")
    p.add_argument("--out", required=True, help="release root to create")
    p.add_argument("--config", default="tiny", help="named model config (tiny, wan-1.3b, ...)")
    p.add_argument("--control", default="cam", choices=["cam", "act"])
    p.add_argument("--shards", type=int, default=2, help="safetensors shards per model directory")
    p.add_argument("--format", default="safetensors", choices=["safetensors", "pth"])
    p.add_argument("--dtype", type=_dtype, default="float32", help="storage dtype (float32, bfloat16)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_tiny_checkpoint)

    p = sub.add_parser("inspect-checkpoint", help="validate and load a model directory, print its summary")
    p.add_argument("path", help="a model directory (config.json + weights)")
    p.add_argument("--dtype", type=_dtype, default="float32")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_inspect_checkpoint)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from .model.checkpoint import CheckpointError
    try:
        return args.func(args)
    except CheckpointError as exc:
        print(f"lingbot-rt: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
