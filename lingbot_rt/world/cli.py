"""`lingbot-rt world ...`: commands of the built-in world.

    lingbot-rt world gen-data --out data/world --clips 1000 --frames 81 --height 240 --width 416
    lingbot-rt world train-vae --data data/world --out runs/world/vae --minutes 5
    lingbot-rt world train-decoder --data data/world --vae runs/world/vae --out runs/world/decoder --minutes 5
    lingbot-rt world train-teacher --data data/world --vae runs/world/vae --out runs/world/teacher --minutes 9
    lingbot-rt world train-probe --data data/world --out runs/world/probe.safetensors
    lingbot-rt world eval --data data/world-heldout --vae runs/world/vae --teacher runs/world/teacher/teacher \
        --probe runs/world/probe.safetensors --out runs/world/eval

`add_world_commands(subparsers)` adds the `world` command to the main parser's subparsers;
`build(parser)` fills any parser with the world subcommands (tests use a fresh one). Each
subcommand sets `func(args) -> exit code`.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def cmd_gen_data(args) -> int:
    from .data import generate_dataset
    out = generate_dataset(args.out, num_clips=args.clips, frames_per_clip=args.frames, height=args.height,
                           width=args.width, seed=args.seed, shard_size=args.shard_size, device=args.device,
                           progress=not args.quiet, workers=args.workers)
    print(f"wrote {args.clips} clips under {out}")
    return 0


def _device(name: str | None) -> str:
    import torch
    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def cmd_train_vae(args) -> int:
    from .train_vae import VAETrainConfig, train_vae
    config = VAETrainConfig(dim=args.dim, batch_size=args.batch_size, steps=args.steps, minutes=args.minutes,
                            lr=args.lr, seed=args.seed, episode_frames=args.episode_frames,
                            window_frames=args.window_frames, stats_windows=args.stats_windows)
    out = train_vae(args.data, args.out, config, max_clips=args.max_clips, device=_device(args.device))
    print(f"VAE written to {out}")
    return 0


def cmd_train_decoder(args) -> int:
    from .train_decoder import DecoderTrainConfig, train_decoder
    config = DecoderTrainConfig(decoder=args.decoder, batch_size=args.batch_size, steps=args.steps,
                                minutes=args.minutes, lr=args.lr, seed=args.seed,
                                episode_latents=args.episode_latents, block_latents=args.block_latents)
    out = train_decoder(args.data, args.vae, args.out, config, max_clips=args.max_clips,
                        heldout_clips=args.heldout_clips, device=_device(args.device))
    print(f"tiny decoder written to {out}: {(out / 'eval.json').read_text()}")
    return 0


def cmd_train_teacher(args) -> int:
    from .train_teacher import TeacherTrainConfig, train_teacher
    device = _device(args.device)
    config = TeacherTrainConfig(batch_size=args.batch_size, steps=args.steps, minutes=args.minutes, lr=args.lr,
                                seed=args.seed, init=args.init)
    from .latents import load_conditioned_clips
    out = train_teacher(load_conditioned_clips(args.data, args.vae, device, args.max_clips), args.out, config)
    print(f"teacher written to {out}")
    return 0


def cmd_train_probe(args) -> int:
    from .clips import load_clip_tensors
    from .pose_probe import save_probe, train_probe
    clips = load_clip_tensors(args.data, max_clips=args.clips, device=_device(args.device))
    probe = train_probe(clips, steps=args.steps, batch_size=args.batch_size, seed=args.seed, width=args.width)
    out = save_probe(probe, args.out, data=args.data, clips=len(clips), steps=args.steps, batch_size=args.batch_size,
                     seed=args.seed, width=args.width)
    print(f"pose probe written to {out}")
    return 0


def cmd_eval(args) -> int:
    import json

    import torch
    from ..model.checkpoint import load_model
    from .clips import load_clip_tensors
    from .evaluate import evaluate_model, student_sampler, teacher_sampler
    from .pose_probe import load_probe, save_probe, train_probe
    from .text import TEXT_LEN, world_text_encoder
    from .train_vae import load_trained_vae
    device = _device(args.device)
    vae = load_trained_vae(args.vae, device=device)
    model = load_model(args.teacher or args.student, dtype=torch.float32, device=device).eval()
    if args.teacher:
        sample = teacher_sampler(model, num_steps=args.steps, guidance=args.guidance)
    else:
        student = _student_schedule(args.schedule, args.student)
        sample = student_sampler(model, student.schedule(), student.cache(), action_guidance=student.action_guidance)
    clips = load_clip_tensors(args.data, max_clips=args.clips, device=device)
    probe_path = Path(args.probe or Path(args.out) / "probe.safetensors")
    if args.probe or probe_path.is_file():
        probe = load_probe(probe_path, device)
    else:
        probe = train_probe(load_clip_tensors(args.probe_data, max_clips=args.probe_clips, device=device),
                            steps=args.probe_steps)
        save_probe(probe, probe_path, data=args.probe_data, clips=args.probe_clips, steps=args.probe_steps)
    decoder = None
    if args.decoder:
        from ..model.tiny_decoder import load_tiny_decoder
        decoder = load_tiny_decoder(args.decoder, device=device)
    report = evaluate_model(sample, vae, world_text_encoder(device), clips, probe, text_len=TEXT_LEN,
                            out_dir=args.out, decoder=decoder)
    summary = {k: report[k]["psnr_3s"] for k in ("model", "copy_first_frame", "vae_reconstruction")}
    if decoder is not None:
        summary["model_tiny_decoder"] = report["tiny_decoder"]["model"]["psnr_3s"]
    print(json.dumps({"psnr_3s": summary, "action_following": report["action_following"]}, indent=2))
    return 0


def _student_schedule(path: str | None, student_dir: str):
    """The student's StudentSchedule from YAML, or the one its directory records."""
    from ..config_io import load_config
    from ..distillation.config import StudentSchedule, student_schedule
    return load_config(StudentSchedule, path) if path else student_schedule(student_dir)


def cmd_long_rollout(args) -> int:
    import json

    from .long_rollout import long_rollouts, noise_seed, parse_seeds
    from .pose_probe import load_probe
    from .stream import world_stream_config, world_streaming
    device = _device(args.device)
    seeds = parse_seeds(args.seeds)
    noise_seed(0, args.noise_draw)                     # refuses a bad draw before anything loads
    probe = load_probe(args.probe, device)
    config = world_stream_config(_student_schedule(args.schedule, args.student), max_sessions=len(seeds))
    reports = long_rollouts(world_streaming(args.student, device=device, config=config), probe, seeds=seeds,
                            minutes=args.minutes, map_seed=args.map_seed, noise_draw=args.noise_draw, out_dir=args.out)
    for report in reports:
        print(json.dumps({k: v for k, v in report.items() if k not in ("per_minute", "bounds")}))
    return 0 if all(report["all_within_bounds"] for report in reports) else 1


def cmd_export(args) -> int:
    from .shipped import SHIPPED_DIR, export_world_weights
    out = export_world_weights(args.out or SHIPPED_DIR, vae_dir=args.vae, teacher_dir=args.teacher,
                               student_dir=args.student, decoder_dir=args.decoder)
    print(f"world weights written to {out}")
    return 0


def cmd_release(args) -> int:
    from .release import make_world_release
    out = make_world_release(args.out, args.weights)
    print(f"the built-in world's release written to {out} (serve it: lingbot-rt serve --checkpoint {out})")
    return 0


def _add_run_arguments(p: argparse.ArgumentParser, batch_size: int, steps: int, lr: float = 3e-4) -> None:
    """Options every training run takes (after its own)."""
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--steps", type=int, default=steps, help="total steps of the run")
    p.add_argument("--minutes", type=float, help="stop this invocation after this wall-clock time")
    p.add_argument("--max-clips", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")


def build(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the world subcommands to `parser`; returns it."""
    sub = parser.add_subparsers(dest="world_command", required=True)
    p = sub.add_parser("gen-data", help="render training clips of the built-in world (LingBot input format)")
    p.add_argument("--out", required=True, help="dataset directory (created; an existing one is resumed)")
    p.add_argument("--clips", type=int, required=True, help="number of clips")
    p.add_argument("--frames", type=int, default=81, help="frames per clip, 4n+1")
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--width", type=int, default=416)
    p.add_argument("--seed", type=int, default=0, help="dataset seed: clip i's map and walk come from (seed, i)")
    p.add_argument("--shard-size", type=int, default=100, help="clips per shard directory")
    p.add_argument("--device", default="cpu", help="render device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--workers", type=int, default=1, help="processes generating clips in parallel")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_gen_data)

    p = sub.add_parser("train-vae", help="train the world's small Wan2.1-architecture VAE")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="run directory (resumed when it holds a checkpoint)")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--episode-frames", type=int, default=81, help="frames streamed per episode, 1 + a multiple "
                   "of --window-frames (at most the clips' length)")
    p.add_argument("--window-frames", type=int, default=8, help="frames per optimiser step, 4k")
    p.add_argument("--stats-windows", type=int, default=64, help="episodes measured for the latent mean/std")
    _add_run_arguments(p, batch_size=16, steps=20_000)
    p.set_defaults(func=cmd_train_vae)

    p = sub.add_parser("train-decoder", help="distil the world VAE's decoder into a small streaming decoder")
    p.add_argument("--data", required=True)
    p.add_argument("--vae", required=True, help="a train-vae run directory (or the shipped weights directory)")
    p.add_argument("--out", required=True, help="run directory (resumed when it holds a checkpoint)")
    p.add_argument("--decoder", default="world", help="named tiny decoder size (world, wan2.1, tiny)")
    p.add_argument("--episode-latents", type=int, default=21, help="latent frames per episode (1 + 4(n-1) frames)")
    p.add_argument("--block-latents", type=int, default=3, help="latent frames per optimiser step")
    p.add_argument("--heldout-clips", type=int, default=16, help="the dataset's last clips, kept for eval.json")
    _add_run_arguments(p, batch_size=32, steps=20_000, lr=1e-3)
    p.set_defaults(func=cmd_train_decoder)

    p = sub.add_parser("train-teacher", help="train the world's bidirectional teacher DiT (flow matching)")
    p.add_argument("--data", required=True)
    p.add_argument("--vae", required=True, help="a train-vae run directory")
    p.add_argument("--out", required=True, help="run directory (resumed when it holds a checkpoint)")
    p.add_argument("--init", help="start a new run from this model directory's weights (an earlier run's teacher/)")
    _add_run_arguments(p, batch_size=32, steps=30_000)
    p.set_defaults(func=cmd_train_teacher)

    p = sub.add_parser("train-probe", help="train the camera-motion probe that scores action following")
    p.add_argument("--data", required=True, help="clips with their poses (a gen-data directory)")
    p.add_argument("--out", required=True, help="the probe's safetensors file")
    p.add_argument("--clips", type=int, default=500, help="use the dataset's first N clips")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=int, default=32, help="channels of the first convolution")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.set_defaults(func=cmd_train_probe)

    p = sub.add_parser("eval", help="generate held-out clips and compare with the renderer's ground truth")
    p.add_argument("--data", required=True, help="held-out clips (another gen-data seed)")
    p.add_argument("--vae", required=True)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--teacher", help="a bidirectional model directory, sampled with --steps and --guidance")
    model.add_argument("--student", help="a block-causal student's model directory, streamed with its KV cache")
    p.add_argument("--schedule", help="the student's StudentSchedule as YAML (default: the one its directory "
                   "records, else the distillation's)")
    probe = p.add_mutually_exclusive_group(required=True)
    probe.add_argument("--probe", help="a pose probe (`train-probe`'s safetensors or an eval run's probe.safetensors)")
    probe.add_argument("--probe-data", help="clips to train a pose probe on (the training set), stored as "
                       "<out>/probe.safetensors and reused from there")
    p.add_argument("--probe-clips", type=int, default=500)
    p.add_argument("--probe-steps", type=int, default=2000)
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--steps", type=int, default=50, help="the teacher's sampling steps")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--decoder", help="a train-decoder run directory: also score the frames it decodes")
    p.add_argument("--out", required=True)
    p.add_argument("--device")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("long-rollout", help="stream minutes of scripted play with a student; per-minute stability")
    p.add_argument("--student", required=True, help="a block-causal student's model directory")
    p.add_argument("--probe", required=True, help="a pose probe (`train-probe`'s safetensors or an eval run's probe.safetensors)")
    p.add_argument("--schedule", help="the student's StudentSchedule as YAML (default: the one its directory "
                   "records, else the distillation's)")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--map-seed", type=int, default=7)
    p.add_argument("--seeds", default="0", help="player seeds, batched: 0-49, 3, 0,4,7-9 or \"0 1 2\"")
    p.add_argument("--noise-draw", type=int, default=0, help="0: each seed's own noise; k > 0: the same keys "
                   "with another draw of the stream's noise")
    p.add_argument("--out", required=True, help="reports go to <out>/s<seed>/long_rollout.json")
    p.add_argument("--device")
    p.set_defaults(func=cmd_long_rollout)

    p = sub.add_parser("export", help="write a trained VAE, teacher, student or tiny decoder in the shipped layout")
    p.add_argument("--vae", help="a train-vae run directory (stored in bf16)")
    p.add_argument("--teacher", help="a model directory (a train-teacher run's teacher/; stored in bf16)")
    p.add_argument("--student", help="a distillation run's student/ (stored with FP8 matrices)")
    p.add_argument("--decoder", help="a train-decoder run directory (stored in bf16)")
    p.add_argument("--out", help="output directory (default: the package's shipped weights)")
    p.set_defaults(func=cmd_export)

    from .release import DEFAULT_RELEASE, SHIPPED_DIR
    p = sub.add_parser("release", help="write the shipped world (student, VAE, text encoder) as a release root")
    p.add_argument("--out", default=DEFAULT_RELEASE, help="release root to write (an earlier world release there is replaced)")
    p.add_argument("--weights", default=str(SHIPPED_DIR), help="shipped-layout weights")
    p.set_defaults(func=cmd_release)
    return parser


def add_world_commands(subparsers) -> argparse.ArgumentParser:
    """Register `world` on the main CLI's subparsers (the result of `add_subparsers`)."""
    return build(subparsers.add_parser("world", help="the built-in procedural world: data, training, evaluation"))


def main(argv: list[str] | None = None) -> int:
    """`python -m lingbot_rt.world.cli ...`: the same commands without the serving imports."""
    args = build(argparse.ArgumentParser(prog="lingbot-rt world")).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
