"""Does a world teacher use its camera control? Its flow-matching error on held-out clips with
the true control, a zeroed one and another clip's, at a few noise levels (CPU is enough).

    python benchmarks/world/control_sensitivity.py --vae lingbot_rt/world/weights \
        --teacher lingbot_rt/world/weights/teacher --clips 8 --out benchmarks/results/world/control_run5.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # benchmarks/: results_io

from results_io import finish  # noqa: E402

from lingbot_rt.model.checkpoint import load_model  # noqa: E402
from lingbot_rt.model.sampler import NUM_TRAIN_TIMESTEPS, shift_sigma  # noqa: E402
from lingbot_rt.world.clips import load_clip_tensors  # noqa: E402
from lingbot_rt.world.data import generate_dataset  # noqa: E402
from lingbot_rt.world.latents import condition_clips  # noqa: E402
from lingbot_rt.world.text import TEXT_LEN, world_text_encoder  # noqa: E402
from lingbot_rt.world.train_vae import load_trained_vae  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", required=True)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--clips", type=int, default=8, help="held-out clips (dataset seed 1), rendered here")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.2, 0.5, 0.8], help="u before the shift")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = generate_dataset(Path(tmp) / "heldout", num_clips=args.clips, frames_per_clip=81, height=128,
                                    width=128, seed=1, progress=False)
        clips = load_clip_tensors(data_dir)
    data = condition_clips(clips, load_trained_vae(args.vae), world_text_encoder("cpu"), TEXT_LEN, "cpu")
    model = load_model(args.teacher, dtype=torch.float32).eval()
    x0, generator = data.x0.float(), torch.Generator().manual_seed(0)
    controls = {"true": data.control, "zero": torch.zeros_like(data.control), "other_clip": data.control.roll(1, 0)}
    rows = []
    with torch.no_grad():
        for u in args.levels:
            sigma = shift_sigma(torch.full((len(x0),), u), 3.0)
            noise = torch.randn(x0.shape, generator=generator)
            x_t = (1 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * noise
            errors = {name: (model(x_t, sigma * NUM_TRAIN_TIMESTEPS, data.context, data.y, control)
                             - (noise - x0)).square().mean().item() for name, control in controls.items()}
            rows.append({"u": u, "sigma": round(float(sigma[0]), 4), **{k: round(v, 5) for k, v in errors.items()}})
            print(rows[-1])
    finish({"teacher": args.teacher, "vae": args.vae, "clips": args.clips, "rows": rows,
            "command": "python " + " ".join(sys.argv)}, torch.device("cpu"), args.out)


if __name__ == "__main__":
    main()
