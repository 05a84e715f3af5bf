"""Can the streaming attention run in FP8 on this GPU, and how fast? Attention is 55% of a 14B
FP8 pass and bounds wan-1.3b at 720p (`results/fps/README.md`); this asks PyTorch's SDPA for
each backend with bf16 inputs and with float8 (e4m3) q/k/v, at the DiT's streaming shape
(one 3-latent-frame block of queries over sink + window + block keys), and records the rate or
the error each attempt raised, and each output's error against the bf16 cuDNN output.

    python benchmarks/attention_fp8.py --resolution 480p --out benchmarks/results/fps/attention_fp8_480p_h100.json
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from gpu_timing import RegionTimer
from results_io import finish

SHAPES = {"480p": (4680, 32760), "720p": (10800, 75600)}     # (block queries, keys) at window 15 + sink 3
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def attempt(backend: SDPBackend, q, k, v, repeats: int = 10) -> tuple[torch.Tensor | None, float | None, str | None]:
    timer = RegionTimer(q.device)
    try:
        with sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(q, k, v)
            for _ in range(repeats):
                with timer.region("sdpa"):
                    F.scaled_dot_product_attention(q, k, v)
        return out, statistics.median(s for _, s in timer.collect()), None
    except Exception as exc:                 # noqa: BLE001 - the point is which attempts work
        return None, None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--resolution", default="480p", choices=sorted(SHAPES))
    ap.add_argument("--heads", type=int, default=40)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("attention_fp8.py needs a CUDA GPU")
    queries, keys = SHAPES[args.resolution]
    torch.manual_seed(0)
    shape = lambda n: (1, args.heads, n, args.head_dim)
    q, k, v = (torch.randn(shape(n), device="cuda", dtype=torch.bfloat16) for n in (queries, keys, keys))
    flops = 4 * args.heads * queries * keys * args.head_dim
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        reference = F.scaled_dot_product_attention(q, k, v).float()
    rows = {}
    for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp8_e4m3", torch.float8_e4m3fn)):
        inputs = [t.to(dtype) for t in (q, k, v)]
        for name, backend in BACKENDS.items():
            out, seconds, error = attempt(backend, *inputs)
            row = {"error": error}
            if out is not None:
                error = ((out.float() - reference).norm() / reference.norm()).item()
                row.update(ms=round(seconds * 1e3, 3), tflops=round(flops / seconds / 1e12, 1),
                           rel_err_vs_bf16_cudnn=float(f"{error:.3g}"))
            rows[f"{dtype_name}/{name}"] = row
            print(f"{dtype_name}/{name}: {row}", flush=True)
    result = {"command": " ".join(sys.argv), "resolution": args.resolution, "queries": queries, "keys": keys,
              "heads": args.heads, "head_dim": args.head_dim, "flops": flops, "attempts": rows}
    finish(result, q.device, args.out)


if __name__ == "__main__":
    main()
