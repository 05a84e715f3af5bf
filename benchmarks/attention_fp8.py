"""Can the streaming attention run in FP8 on this GPU, and how fast? Attention is 55% of a 14B
FP8 pass and bounds wan-1.3b at 720p (`results/fps/README.md`); this asks PyTorch's SDPA for
each backend with bf16 inputs and with float8 (e4m3) q/k/v, and runs our Triton FP8 kernel
(`lingbot_rt.model.fp8_attention`: `fp8/ours` with its K/V quantisation (compiled), `fp8/ours_kernel`
the kernel alone, `--sweep` the kernel at each of its configs), at the DiT's streaming shape (one 3-latent-frame block of queries over sink +
window + block keys, in the model's [B, L, H, D] layout), and records the rate or the error
each attempt raised, and each output's error against the bf16 cuDNN output.

    python benchmarks/attention_fp8.py --resolution 480p --out benchmarks/results/fps/attention_fp8_480p_h100.json
    python benchmarks/attention_fp8.py --resolution 720p --heads 12 --out ...   # wan-1.3b's heads
"""
from __future__ import annotations

import argparse
import statistics
import sys
from functools import partial

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from gpu_timing import RegionTimer
from results_io import finish

from lingbot_rt.model import fp8_attention as ours

SHAPES = {"480p": (4680, 32760), "720p": (10800, 75600)}     # (block queries, keys) at window 15 + sink 3
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def attempt(run, repeats: int = 10) -> tuple[torch.Tensor | None, float | None, str | None]:
    """run() -> output [B, L, H, D]: (output, median seconds, None) or (None, None, the error)."""
    timer = RegionTimer(torch.device("cuda"))
    try:
        out = run()
        for _ in range(repeats):
            with timer.region("attention"):
                run()
        return out, statistics.median(s for _, s in timer.collect()), None
    except Exception as exc:                 # noqa: BLE001 - the point is which attempts work
        return None, None, f"{type(exc).__name__}: {str(exc)[:1500]}"


def sdpa(backend: SDPBackend, q, k, v):
    """SDPA under one backend on [B, L, H, D] inputs, as the model calls it."""
    def run():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--resolution", default="480p", choices=sorted(SHAPES))
    ap.add_argument("--heads", type=int, default=40)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--sweep", action="store_true", help="also time our kernel at each of its autotune configs")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("attention_fp8.py needs a CUDA GPU")
    queries, keys = SHAPES[args.resolution]
    torch.manual_seed(0)
    shape = lambda n: (1, n, args.heads, args.head_dim)
    q, k, v = (torch.randn(shape(n), device="cuda", dtype=torch.bfloat16) for n in (queries, keys, keys))
    flops = 4 * args.heads * queries * keys * args.head_dim
    reference = sdpa(SDPBackend.CUDNN_ATTENTION, q, k, v)().float()
    runs = {}
    for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp8_e4m3", torch.float8_e4m3fn)):
        inputs = [t.to(dtype) for t in (q, k, v)]
        runs.update({f"{dtype_name}/{name}": sdpa(backend, *inputs) for name, backend in BACKENDS.items()})
    quantized = ours.quantize_kv(k, v)
    runs["fp8/ours"] = lambda: ours.fp8_attention(q, k, v)
    runs["fp8/ours_kernel"] = lambda: torch.ops.lingbot_rt.fp8_attention_quantized(q, *quantized)
    runs["fp8/ours_quantize_kv"] = lambda: ours.quantize_kv_fast(k, v)      # its share of `fp8/ours`
    if args.sweep:
        for m, n, warps, stages in ours._CONFIGS:
            runs[f"fp8/ours_kernel {m}x{n} w{warps} s{stages}"] = partial(
                ours.launch, q, *quantized, kernel=ours._fp8_attention_kernel.fn,
                BLOCK_M=m, BLOCK_N=n, num_warps=warps, num_stages=stages)
    rows = {}
    for name, run in runs.items():
        out, seconds, error = attempt(run)
        row = {"error": error}
        if out is not None:
            row.update(ms=round(seconds * 1e3, 3), tflops=round(flops / seconds / 1e12, 1))
            if isinstance(out, torch.Tensor):
                error = ((out.float() - reference).norm() / reference.norm()).item()
                row["rel_err_vs_bf16_cudnn"] = float(f"{error:.3g}")
        rows[name] = row
        print(f"{name}: {row}", flush=True)
    rows["fp8/ours"]["kernel_config"] = str(getattr(ours._fp8_attention_kernel, "best_config", None))
    result = {"command": " ".join(sys.argv), "resolution": args.resolution, "queries": queries, "keys": keys,
              "heads": args.heads, "head_dim": args.head_dim, "flops": flops, "attempts": rows}
    finish(result, q.device, args.out)


if __name__ == "__main__":
    main()
