"""`lingbot-rt`: one command line, a subcommand per job.

    lingbot-rt make-tiny-checkpoint --out ckpt/tiny
    lingbot-rt inspect-checkpoint ckpt/tiny/lingbot_world_fast
    lingbot-rt generate --checkpoint ckpt/tiny --image input.jpg --prompt "a forest" --actions "w-10,d-5" --out out.mp4
    lingbot-rt serve                      # play at http://127.0.0.1:8000
    lingbot-rt serve --stages ray         # the DiT and VAE stages in two Ray actors
    lingbot-rt serve --ingress serve      # behind Ray Serve's gRPC proxy (services/serve_app.py)
    lingbot-rt web --server 127.0.0.1:9000  # the browser player alone, in front of a gRPC server
    lingbot-rt loadtest --server 127.0.0.1:50051 --players 4 --duration 60s   # loadtest/README.md
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


def _dtype_name(dtype) -> str | None:
    """torch.bfloat16 -> "bfloat16" (the Serve app's arguments are plain data); None stays None."""
    return str(dtype).removeprefix("torch.") if dtype else None


def cmd_make_tiny_checkpoint(args) -> int:
    from .pipeline.tiny_checkpoint import make_tiny_checkpoint
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


def _stream_config(args):
    from .pipeline.release import release_stream_config
    return release_stream_config(args.checkpoint, args.config, height=args.height, width=args.width,
                                 commit=args.commit, compile=args.compile, fused_qkv=args.fused_qkv or None,
                                 decoder=args.decoder)


def _load_pipeline(args, config):
    from .pipeline import StreamingInference
    device = args.device or ("cuda" if _cuda_available() else "cpu")
    dtype = args.dtype or (_dtype("bf16") if device.startswith("cuda") else _dtype("fp32"))
    return StreamingInference.from_release(args.checkpoint, config, device=device, dtype=dtype,
                                           vae_dtype=args.vae_dtype, text_device=args.text_device)


def _check_image_early(args) -> None:
    """Refuse a bad start image before minutes of model loading."""
    from pathlib import Path

    from .model.image_condition import load_image
    from .pipeline.release import ReleaseManifest
    config, manifest = _stream_config(args), ReleaseManifest.read(Path(args.checkpoint))
    load_image(args.image, config.height or manifest.height, config.width or manifest.width)


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def cmd_generate(args) -> int:
    from tqdm import tqdm

    from .pipeline.actions import action_source
    from .pipeline.video import VideoWriter
    source = action_source(args.actions)
    num_frames = args.num_frames or source.num_frames
    _check_image_early(args)
    pipeline = _load_pipeline(args, _stream_config(args))
    seconds = {"denoise": 0.0, "decode": 0.0}
    with VideoWriter(args.out, pipeline.config.fps) as video, \
            tqdm(total=num_frames, unit="frame", desc="generate") as progress:
        for block in pipeline.stream_generate(args.image, args.prompt, source, num_frames=num_frames, seed=args.seed):
            video.write(block.frames)
            progress.update(len(block.frames))
            for stage, value in block.timings.items():
                seconds[stage] += value
    total = sum(seconds.values())
    print(f"wrote {args.out}: {video.num_frames} frames {pipeline.height}x{pipeline.width} at "
          f"{pipeline.config.fps} fps; generated at {video.num_frames / total:.1f} frames/s "
          f"(denoise {seconds['denoise']:.2f} s, decode {seconds['decode']:.2f} s)")
    return 0


def cmd_serve(args) -> int:
    import asyncio
    from pathlib import Path

    from .world.release import ensure_default_release
    from .services.app import ServeAddresses, run, run_serve
    from .services.gateway import GatewayConfig
    from .services.scheduler import SchedulerConfig
    from .services.serve_app import ServeAppArgs, load_executor
    app = ServeAppArgs(
        # Serve's replicas may run elsewhere than this directory: give them an absolute path
        checkpoint=str(Path(args.checkpoint).absolute()) if args.ingress == "serve" else args.checkpoint,
        config=args.config, height=args.height, width=args.width, commit=args.commit, compile=args.compile,
        fused_qkv=args.fused_qkv, decoder=args.decoder, max_sessions=args.max_sessions, warm_up_blocks=args.warm_up,
        stages=args.stages, device=args.device, dtype=_dtype_name(args.dtype),
        vae_dtype=_dtype_name(args.vae_dtype),
        text_device=args.text_device,
        scheduler=SchedulerConfig(max_batch=args.max_batch, max_waiting=args.max_waiting, pace=args.pace,
                                  lead=args.lead),
        gateway=GatewayConfig(auth_tokens=frozenset(args.token or ()), jpeg_quality=args.jpeg_quality,
                              idle_timeout_s=args.idle_timeout, max_session_s=args.max_session),
        metrics_host=args.host, metrics_port=args.metrics_port or None)
    ensure_default_release(args.checkpoint)
    addresses = ServeAddresses(args.host, args.port, args.web_port, args.metrics_port or None)
    if args.ingress == "serve":
        run_serve(app, addresses, grace=args.grace)
        return 0
    executor = load_executor(app)
    try:
        asyncio.run(run(executor, app.scheduler, app.gateway, addresses, grace=args.grace))
    finally:
        executor.shutdown()
    return 0


def cmd_web(args) -> int:
    from aiohttp import web

    from .services.web import make_app
    print(f"play at http://{args.host}:{args.port}  (gRPC lingbot.v1.WorldService at {args.server}; Ctrl-C stops)",
          flush=True)
    web.run_app(make_app(args.server), host=args.host, port=args.port, print=None)
    return 0


def cmd_play(args) -> int:
    import asyncio
    import statistics
    from pathlib import Path

    import numpy as np

    from .model.controls import parse_action_string
    from .services.client import PlayError, play_script
    image = Path(args.image).read_bytes() if args.image else None
    try:
        frames, session = asyncio.run(play_script(args.server, parse_action_string(args.actions),
                                                  scene="" if image else args.scene, image=image,
                                                  prompt=args.prompt, seed=args.seed, token=args.token or ""))
    except PlayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.out:
        from .pipeline.video import VideoWriter
        with VideoWriter(args.out, fps=session.fps) as writer:
            writer.write(np.stack([np.asarray(frame.image()) for frame in frames]))
    latencies = sorted(f.latency_s * 1e3 for f in frames if f.latency_s is not None)
    span = frames[-1].received - frames[0].received if len(frames) > 1 else 0.0
    print(json.dumps({
        "session_id": session.session_id, "frames": len(frames), "size": [session.height, session.width],
        "delivered_fps": round((len(frames) - 1) / span, 2) if span else None,
        "action_to_frame_ms": {"count": len(latencies),
                               "p50": round(statistics.median(latencies), 1) if latencies else None,
                               "max": round(latencies[-1], 1) if latencies else None},
        "out": args.out}, indent=2))
    return 0


def add_stream_arguments(p: argparse.ArgumentParser, checkpoint_default: str | None = None) -> None:
    """Options shared by the commands that load a release and stream from it."""
    from .model.rollout import COMMIT_MODES
    from .pipeline.streaming import COMPILE_MODES, DECODERS
    p.add_argument("--checkpoint", required=checkpoint_default is None, default=checkpoint_default,
                   help="release root (lingbot_world_fast/, VAE, umT5, tokenizer)")
    p.add_argument("--config", help="StreamConfig YAML (schedule, cache window, size, fps)")
    p.add_argument("--height", type=int, help="frame height (default: the release's)")
    p.add_argument("--width", type=int, help="frame width (default: the release's)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--text-device", help="device of the text encoder (default: --device)")
    p.add_argument("--dtype", type=_dtype, help="DiT dtype (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--vae-dtype", type=_dtype, help="VAE dtype (default: the DiT's; fp32 is upstream's choice)")
    p.add_argument("--commit", choices=COMMIT_MODES, help="how a block enters the KV cache: a clean pass (5 "
                   "forwards per block) or the last denoising pass (4); default: the stream config's")
    p.add_argument("--compile", choices=COMPILE_MODES,
                   help="torch.compile the DiT block (an inductor mode) and the VAE's streaming encoder and decoder")
    p.add_argument("--fused-qkv", action="store_true", help="one QKV GEMM per self-attention")
    p.add_argument("--decoder", choices=DECODERS, help="what decodes the frames: the VAE or the release's "
                   "distilled tiny decoder (tiny_decoder/); default: the stream config's")


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

    p = sub.add_parser("generate", help="stream a clip offline from an image, a prompt and an action string")
    add_stream_arguments(p)
    p.add_argument("--image", required=True, help="start image (RGB)")
    p.add_argument("--prompt", default="", help="text prompt")
    p.add_argument("--actions", default="none-32",
                   help="keys per video frame, e.g. 'w-10,d-5,none-5' (w,a,s,d move; i,j,k,l look)")
    p.add_argument("--num-frames", type=int, help="frames to write (default: 1 + the actions' frames)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .mp4")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("serve", help="serve sessions: gRPC gateway, browser player, /metrics")
    from .services.executor import STAGES
    from .services.serve_app import ServeAppArgs
    defaults = ServeAppArgs()                # also the Serve app's (deploy/serve/lingbot-rt.yaml)
    gateway_defaults = defaults.gateway
    add_stream_arguments(p, checkpoint_default=defaults.checkpoint)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (with --ingress serve: Serve's gRPC proxy's, "
                   "on all interfaces)")
    p.add_argument("--web-port", type=int, default=8000, help="browser player port")
    p.add_argument("--metrics-port", type=int, default=defaults.metrics_port,
                   help="Prometheus /metrics port (0: off; with --ingress serve: replica i of a node on port + i)")
    p.add_argument("--max-sessions", type=int, default=defaults.max_sessions,
                   help="KV cache slots: sessions playing at once")
    p.add_argument("--max-batch", type=int, default=defaults.scheduler.max_batch, help="sessions per DiT step")
    p.add_argument("--warm-up", type=int, default=defaults.warm_up_blocks, metavar="BLOCKS",
                   help="blocks played at batch sizes 1, 2 and --max-batch before listening (default: enough "
                        "to fill the KV window with --compile, else none)")
    p.add_argument("--max-waiting", type=int, default=defaults.scheduler.max_waiting,
                   help="sessions queued for a slot before refusing")
    p.add_argument("--no-pace", dest="pace", action="store_false",
                   help="make blocks as fast as possible instead of when each player's stream needs them "
                        "(throughput measurements; players then buffer, and wait longer for their actions)")
    p.add_argument("--lead", type=float, default=defaults.scheduler.lead,
                   help="fraction of a block's duration a block may start before it is due")
    p.add_argument("--token", action="append", help="require this auth token (repeatable)")
    p.add_argument("--jpeg-quality", type=int, default=gateway_defaults.jpeg_quality)
    p.add_argument("--grace", type=float, default=5.0, help="seconds running sessions get on shutdown")
    p.add_argument("--idle-timeout", type=float, default=gateway_defaults.idle_timeout_s,
                   help="end a session after this many seconds without an action")
    p.add_argument("--max-session", type=float, default=gateway_defaults.max_session_s,
                   help="end a session after this many seconds")
    p.add_argument("--stages", default=defaults.stages, choices=STAGES,
                   help="where the DiT and VAE stages run: this process, or two pipelined Ray actors")
    p.add_argument("--ingress", default="gateway", choices=("gateway", "serve"),
                   help="the gRPC server: this process's gateway, or Ray Serve's gRPC proxy in front of replicas "
                        "(local Ray, or the cluster in RAY_ADDRESS; deploy/README.md)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("web", help="serve the browser player alone, bridged to a gRPC server (e.g. Serve's proxy)")
    p.add_argument("--server", default="127.0.0.1:9000", help="gRPC address HOST:PORT of lingbot.v1.WorldService")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="browser player port")
    p.set_defaults(func=cmd_web)

    p = sub.add_parser("play", help="play a session on a server from a key script; print fps and latency")
    p.add_argument("--server", default="127.0.0.1:50051", help="gRPC address HOST:PORT")
    p.add_argument("--scene", default="world-0", help="built-in start view (world-<seed>)")
    p.add_argument("--image", help="start image file (JPEG/PNG) instead of --scene")
    p.add_argument("--prompt", default="")
    p.add_argument("--actions", default="w-32,l-16,none-16",
                   help="keys held per frame: <keys>-<frames>,... (e.g. w-32,l-16,none-16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--token", help="auth token, when the server requires one")
    p.add_argument("--out", help="also write the frames to this .mp4")
    p.set_defaults(func=cmd_play)

    # loadtest/ is a top-level package; its cli module imports argparse only
    from loadtest.cli import add_loadtest_command
    add_loadtest_command(sub)

    from .world.cli import add_world_commands
    add_world_commands(sub)
    from .distillation.cli import add_distill_commands
    add_distill_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from .model.checkpoint import CheckpointError
    from .services.executor import StageError
    try:
        return args.func(args)
    except (CheckpointError, StageError, ValueError, FileNotFoundError) as exc:
        print(f"lingbot-rt: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
