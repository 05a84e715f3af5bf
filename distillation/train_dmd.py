"""The seed's DMD script, over the package (`lingbot-rt distill dmd`), for torchrun:

    torchrun --nproc_per_node=8 distillation/train_dmd.py --student_path runs/init/student \
        --teacher_path T --data_path D --vae_path V --output_path runs/dmd --strategy fsdp \
        --activation_checkpointing [--config_path dmd.yaml --batch_size 1]

Each rank reads RANK / WORLD_SIZE / LOCAL_RANK from torchrun's environment
(`distributed.init_from_env`: NCCL and its LOCAL_RANK GPU, gloo without GPUs) and runs the
same `DMDTrainer` as `lingbot-rt distill dmd`; plain `python distillation/train_dmd.py ...` is
one process. Other flags are the package command's, with underscores
(`python -m lingbot_rt.distillation.cli dmd --help`).
"""
import sys

from lingbot_rt.distillation.cli import main, seed_argv

if __name__ == "__main__":
    raise SystemExit(main(["dmd", *seed_argv(sys.argv[1:])]))
