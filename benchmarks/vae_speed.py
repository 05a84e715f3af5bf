"""Where the Wan2.1 VAE's streaming time goes, and what makes it faster: the decoder's and
encoder's convolutions at a block's shapes, each timed as cuDNN conv3d (NCDHW and channels-last)
and as one conv2d with time folded into channels (`CausalConv3d._as_conv2d`, what the CPU uses);
then the whole block decode (3 latent frames) and the I2V condition's encode (4 black frames):
eager, with the folded conv2d, and torch.compile'd (`WanVAE.compile_streaming`).

    python benchmarks/vae_speed.py --height 480 --width 832 --out benchmarks/results/vae_speed_480p_h100.json
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

from results_io import finish

from lingbot_rt.model.vae import CausalConv3d, WanVAE, vae_config

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def cuda_ms(fn, reps: int = 10) -> float:
    for _ in range(2):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def padded_inputs(vae: WanVAE, run) -> list[tuple[CausalConv3d, torch.Tensor]]:
    """(conv, its padded input) for every CausalConv3d call `run` makes."""
    calls = []

    def hook(conv, args):
        calls.append((conv, conv.padded(*args)))
    handles = [m.register_forward_pre_hook(hook) for m in vae.modules() if isinstance(m, CausalConv3d)]
    run()
    for handle in handles:
        handle.remove()
    return calls


def conv_variants(conv: CausalConv3d, x: torch.Tensor) -> dict[str, float]:
    times = {"conv3d": cuda_ms(lambda: F.conv3d(x, conv.weight, conv.bias, conv.stride))}
    x_cl, w_cl = x.contiguous(memory_format=torch.channels_last_3d), \
        conv.weight.contiguous(memory_format=torch.channels_last_3d)
    times["conv3d_channels_last"] = cuda_ms(lambda: F.conv3d(x_cl, w_cl, conv.bias, conv.stride))
    if conv.stride[0] == 1:
        times["folded_conv2d"] = cuda_ms(lambda: conv._as_conv2d(x))
    return times


def folded_everywhere(enabled: bool) -> None:
    """Make every stride-1-in-time CausalConv3d use the folded conv2d on the GPU too, or not."""
    CausalConv3d.fold_time_on = ("cpu", "cuda") if enabled else ("cpu",)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--compile", action="store_true", help="also time the torch.compile'd decoder and encoder")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device, dtype = torch.device("cuda"), DTYPES[args.dtype]
    torch.manual_seed(0)
    vae = WanVAE(vae_config("wan2.1")).to(device, dtype).eval()
    h, w = args.height // 8, args.width // 8
    latents = torch.randn(1, 16, 3, h, w, device=device, dtype=dtype)
    image = torch.rand(1, 3, 1, args.height, args.width, device=device, dtype=dtype) * 2 - 1
    black = torch.full((1, 3, 4, args.height, args.width), -1.0, device=device, dtype=dtype)

    def streams():
        decoder, encoder = vae.stream_decoder(), vae.stream_encoder()
        decoder.decode(latents)                   # the first block: caches filled
        encoder.encode(image)
        encoder.encode(black)
        return decoder, encoder

    result = {"what": "Wan2.1 VAE convolutions, conv3d vs time folded into a conv2d", "dtype": args.dtype,
              "resolution": [args.height, args.width]}
    runs = {"decode": lambda d, e: d.decode(latents), "condition_encode": lambda d, e: e.encode(black)}
    with torch.inference_mode():
        for name, run in runs.items():
            decoder, encoder = streams()
            calls = padded_inputs(vae, lambda: run(decoder, encoder))
            totals, rows = defaultdict(float), []
            for conv, x in calls:
                times = conv_variants(conv, x)
                best3d = min(times["conv3d"], times["conv3d_channels_last"])
                for variant, ms in times.items():
                    totals[variant] += ms
                totals["best_of_each"] += min(times.values())
                totals["folded_or_3d"] += times.get("folded_conv2d", best3d)
                rows.append({"input": list(x.shape), "out_channels": conv.out_channels,
                             "kernel": list(conv.kernel_size), "stride": list(conv.stride),
                             **{k: round(v, 3) for k, v in times.items()}})
            whole = {}
            for folded in (False, True):
                folded_everywhere(folded)
                decoder, encoder = streams()
                # the streams advance: time several blocks of one stream, the way a session runs
                whole["folded" if folded else "conv3d"] = round(cuda_ms(lambda: run(decoder, encoder), reps=5), 2)
            folded_everywhere(False)
            result[name] = {"convs": len(rows), "conv_ms_sum": {k: round(v, 2) for k, v in totals.items()},
                            "whole_ms": whole, "per_conv": rows}
            print(name, result[name]["conv_ms_sum"], whole, flush=True)
        if args.compile:
            vae.compile_streaming()
            for name, run in runs.items():
                decoder, encoder = streams()                   # compiles the first-block variants
                start = time.perf_counter()
                run(decoder, encoder)
                compile_s = time.perf_counter() - start
                result[name]["whole_ms"]["compiled"] = round(cuda_ms(lambda: run(decoder, encoder), reps=5), 2)
                result[name]["compile_s"] = round(compile_s, 1)
                print(name, "compiled", result[name]["whole_ms"], flush=True)
    finish(result, device, args.out)


if __name__ == "__main__":
    main()
