"""`lingbot-rt distill ...`: the distillation jobs, in pipeline order.

    lingbot-rt distill ode-pairs --teacher T --data D --vae V --out runs/pairs --num-pairs 1024
    lingbot-rt distill causal-init --teacher T --data D --vae V --pairs runs/pairs --out runs/init
    lingbot-rt distill dmd --student runs/init/student --teacher T --data D --vae V --out runs/dmd \
        [--workers 2 --gpus-per-worker 1] [--strategy fsdp --activation-checkpointing]
    lingbot-rt distill latent-probe --data D --vae V --out runs/latent_probe.safetensors   # for --action-loss-weight
    lingbot-rt distill decoded-probe --data D --vae V --decoder DEC --out runs/decoded_probe.safetensors  # + --action-decoder
    torchrun --nproc_per_node=8 -m lingbot_rt.distillation.cli dmd ...     # = distillation/train_dmd.py
    lingbot-rt distill memory-plan --config lingbot-14b --gpus 8 --gpu-gb 80

T is a teacher model directory (the shipped world teacher: lingbot_rt/world/weights/teacher),
D a `world gen-data` directory, V a VAE (a train-vae directory, or lingbot_rt/world/weights).
Every job resumes from what its --out directory holds. `--config FILE` reads the job's whole
config from YAML (`config.py`: ODEPairsConfig, CausalInitConfig, DMDConfig); the flags given
on the command line override it.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from functools import partial

# The seed scripts' path flags (distillation/*.py) -> this CLI's names for them
SEED_FLAGS = {"--teacher_path": "--teacher", "--student_path": "--student", "--critic_path": "--critic",
              "--data_path": "--data", "--vae_path": "--vae", "--output_path": "--out", "--config_path": "--config",
              "--pairs_path": "--pairs"}


def _device(name: str | None):
    import torch
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _load_config(cls, path):
    from ..config_io import load_config
    return load_config(cls, path) if path else cls()


def cmd_ode_pairs(args) -> int:
    from ..model.checkpoint import load_model
    from ..world.latents import load_conditioned_clips
    from .config import ODEPairsConfig
    from .ode_pairs import generate_ode_pairs
    device = _device(args.device)
    config = replace(_load_config(ODEPairsConfig, args.config), **_given(args, "num_pairs", "shard_size",
                                                                          "batch_size", "seed"))
    teacher = load_model(args.teacher, dtype=_dtype(device), device=device)
    data = load_conditioned_clips(args.data, args.vae, device, args.max_clips)
    out = generate_ode_pairs(teacher, data, args.out, config)
    print(f"{config.num_pairs} ODE pairs in {out}")
    return 0


def cmd_causal_init(args) -> int:
    from ..world.latents import load_conditioned_clips
    from .causal_init import STUDENT_DIR, train_causal_init
    from .config import CausalInitConfig
    from .ode_pairs import load_ode_pairs
    device = _device(args.device)
    config = replace(_load_config(CausalInitConfig, args.config), **_given(args, "objective", "batch_size", "lr",
                                                                            "steps", "minutes", "seed"))
    data = load_conditioned_clips(args.data, args.vae, device, args.max_clips)
    pairs = load_ode_pairs(args.pairs, device) if args.pairs else None
    out = train_causal_init(args.teacher, data, pairs, args.out, config, init_dir=args.init)
    print(f"causal student written to {out / STUDENT_DIR}")
    return 0


def cmd_dmd(args) -> int:
    from ..world.latents import load_conditioned_clips
    from ..world.train_vae import load_trained_vae
    from .causal_init import STUDENT_DIR
    from .config import DMDConfig
    from .job import DMDJob, train_from_env
    config = replace(_load_config(DMDConfig, args.config), **_given(
        args, "batch_size", "steps", "minutes", "seed", "generator_lr", "critic_lr", "data_loss_weight", "strategy",
        "activation_checkpointing", "rollout_frames", "window_anchor", "score_frames", "action_loss_weight",
        "action_probe", "action_decoder", "action_loss_balance"))
    load_data = partial(load_conditioned_clips, args.data, args.vae, max_clips=args.max_clips,
                        keep_starts=config.window_anchor == "truth")
    job = DMDJob(args.student, args.teacher, args.out, load_data, config, args.critic,
                 load_vae=partial(load_trained_vae, args.vae))
    if args.workers == 0:                    # this process, or this rank of a torchrun
        train_from_env(job, args.device)
    else:
        import ray

        from .ray_job import run_ray_job
        ray.init()                           # joins RAY_ADDRESS's cluster if set, else starts one here
        run_ray_job(job, args.workers, args.gpus_per_worker)
    print(f"DMD student written to {args.out}/{STUDENT_DIR}")
    return 0


def cmd_motion_probe(args) -> int:
    """`latent-probe` and `decoded-probe`: the action loss's probe, trained on the data's clips."""
    import json

    from ..model.tiny_decoder import load_tiny_decoder
    from ..world.latents import load_conditioned_clips
    from ..world.pose_probe import save_probe
    from .action_loss import train_decoded_probe, train_latent_probe
    device = _device(args.device)
    data = load_conditioned_clips(args.data, args.vae, device, args.max_clips)
    if args.distill_command == "decoded-probe":
        decoder = load_tiny_decoder(args.decoder, device=device)
        probe, accuracy = train_decoded_probe(data, decoder, steps=args.steps, seed=args.seed or 0)
        made = {"decoder": args.decoder}
    else:
        probe, accuracy = train_latent_probe(data, steps=args.steps, seed=args.seed or 0)
        made = {}
    save_probe(probe, args.out, data=args.data, steps=args.steps, **made, **accuracy)
    print(f"{args.distill_command} written to {args.out}; on {accuracy['held_out_clips']} held-out clips: "
          f"{json.dumps(accuracy)}")
    return 0


def cmd_memory_plan(args) -> int:
    from .memory_plan import plan_command
    return plan_command(args)


def _dtype(device):
    import torch
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _given(args, *names) -> dict:
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="the teacher's model directory")
    p.add_argument("--data", required=True, help="a `world gen-data` directory (the conditioning: start image, "
                   "prompt, camera path)")
    p.add_argument("--vae", required=True, help="a train-vae directory (or the shipped lingbot_rt/world/weights)")
    p.add_argument("--out", required=True, help="output directory (resumed when it holds a run)")
    p.add_argument("--config", help="the job's config as YAML; flags override it")
    p.add_argument("--max-clips", type=int, help="use the first N clips of --data")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")


def build(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from .config import STRATEGIES, WINDOW_ANCHORS
    sub = parser.add_subparsers(dest="distill_command", required=True)
    p = sub.add_parser("ode-pairs", help="record the teacher's ODE trajectories at the student's sigmas")
    _add_data_arguments(p)
    p.add_argument("--num-pairs", type=int)
    p.add_argument("--shard-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.set_defaults(func=cmd_ode_pairs)

    p = sub.add_parser("causal-init", help="make the teacher block-causal: ODE regression or teacher forcing")
    _add_data_arguments(p)
    p.add_argument("--pairs", help="an ode-pairs directory (the ode objective)")
    p.add_argument("--objective", choices=["ode", "teacher_forcing"])
    p.add_argument("--init", help="start from this model directory instead of the teacher (a stage before)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--steps", type=int)
    p.add_argument("--minutes", type=float)
    p.set_defaults(func=cmd_causal_init)

    p = sub.add_parser("dmd", help="DMD with Self-Forcing rollouts (Ray Train TorchTrainer, or this process)")
    _add_data_arguments(p)
    p.add_argument("--student", required=True, help="the initial student (a causal-init run's student/)")
    p.add_argument("--critic", help="the critic's initial weights (default: the teacher's)")
    p.add_argument("--workers", type=int, default=0, help="Ray Train workers (0: train in this process)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, help="rollouts per step per worker")
    p.add_argument("--generator-lr", type=float)
    p.add_argument("--critic-lr", type=float)
    p.add_argument("--data-loss-weight", type=float,
                   help="add this x the teacher-forcing loss on the real clips to the generator's (default 0)")
    p.add_argument("--rollout-frames", type=int,
                   help="long-horizon DMD: roll the student out to up to this many latent frames (past its KV "
                        "window) and score the last clip-length window (default 0: as long as the clips)")
    p.add_argument("--window-anchor", choices=WINDOW_ANCHORS,
                   help="long-horizon windows are scored given their own decoded first frame (rollout, default) or "
                        "the true frame there (truth: clips at least --rollout-frames long)")
    p.add_argument("--score-frames", type=int,
                   help="latent frames of the windows the scores see (default 0: the clips' length)")
    p.add_argument("--action-loss-weight", type=float,
                   help="add this x the action loss (a latent motion probe against the commanded motion) to the "
                        "generator's (default 0)")
    p.add_argument("--action-probe", help="the latent motion probe the action loss reads (`distill latent-probe`), "
                   "or with --action-decoder a pixel probe (`distill decoded-probe`)")
    p.add_argument("--action-decoder", help="a tiny decoder's directory: the action loss reads the samples decoded by "
                   "it (the stream's, e.g. lingbot_rt/world/weights/decoder)")
    p.add_argument("--action-loss-balance", action="store_true", default=None,
                   help="weigh the action loss's pairs walking forward, walking back and neither alike")
    p.add_argument("--steps", type=int)
    p.add_argument("--minutes", type=float)
    p.add_argument("--strategy", choices=STRATEGIES, help="ddp: whole replicas; fsdp: FSDP2 shards (14B class)")
    p.add_argument("--activation-checkpointing", action="store_true", default=None,
                   help="recompute each DiT block in backward (student and critic)")
    p.set_defaults(func=cmd_dmd)

    for name, what in (("latent-probe", "the latent motion probe of the action loss, on the data's latents"),
                       ("decoded-probe", "the pixel probe of the action loss with --action-decoder, on the data's "
                                         "latents decoded by the tiny decoder")):
        p = sub.add_parser(name, help=f"train {what} and camera motions")
        p.add_argument("--data", required=True, help="a `world gen-data` directory")
        p.add_argument("--vae", required=True,
                       help="the data's VAE (a train-vae directory, or lingbot_rt/world/weights)")
        if name == "decoded-probe":
            p.add_argument("--decoder", required=True,
                           help="the tiny decoder's directory (the stream's: lingbot_rt/world/weights/decoder)")
        p.add_argument("--out", required=True, help="the probe's safetensors file")
        p.add_argument("--steps", type=int, default=3000)
        p.add_argument("--max-clips", type=int, help="use the first N clips of --data")
        p.add_argument("--seed", type=int)
        p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
        p.set_defaults(func=cmd_motion_probe)

    from .memory_plan import add_arguments
    p = sub.add_parser("memory-plan", help="per-GPU memory of DMD at full size, counted on the meta device")
    add_arguments(p)
    p.set_defaults(func=cmd_memory_plan)
    return parser


def add_distill_commands(subparsers) -> argparse.ArgumentParser:
    return build(subparsers.add_parser("distill", help="distil the teacher into the 4-step block-causal student"))


def seed_argv(argv: list[str]) -> list[str]:
    """The seed scripts' flags as this CLI's: `--teacher_path` -> `--teacher` (SEED_FLAGS),
    and underscores in other flag names -> dashes (`--num_pairs` -> `--num-pairs`)."""
    out = []
    for word in argv:
        flag, eq, value = word.partition("=")
        if flag.startswith("--"):
            flag = SEED_FLAGS.get(flag, flag.replace("_", "-"))
        out.append(flag + eq + value)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m lingbot_rt.distillation.cli ...`: the same commands without the serving imports."""
    import logging
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = build(argparse.ArgumentParser(prog="lingbot-rt distill")).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
