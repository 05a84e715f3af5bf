"""The seed's ODE-pair script, over the package (`lingbot-rt distill ode-pairs`):

    python distillation/generate_ode_pairs.py --teacher_path T --output_path runs/pairs --num_pairs 1024 \
        --data_path D --vae_path V [--config_path pairs.yaml --batch_size 64 --shard_size 128 --device cuda]

T: a teacher model directory; D: a `world gen-data` directory (the start images, prompts and
camera paths the teacher is conditioned on); V: the VAE that encodes them. Other flags are the
package command's, with underscores (`python -m lingbot_rt.distillation.cli ode-pairs --help`).
"""
import sys

from lingbot_rt.distillation.cli import main, seed_argv

if __name__ == "__main__":
    raise SystemExit(main(["ode-pairs", *seed_argv(sys.argv[1:])]))
