"""Full-size streaming speed: sustained FPS, per-block stage costs, latencies, peak memory and
the fraction of the bf16 limit, one session, LingBot-World-Fast settings.

Random weights at full size (built on the meta device, materialised once on the device; the
built-in `world` model loads its shipped weights), 3-latent-frame blocks, 4 denoising steps
(t = 999, 978, 947, 825), sink 3 + window 15, then the commit (a clean t = 0 pass, or
`--commit last_step`), the streaming VAE decode and the gateway's JPEG encode, sequentially,
through `StreamingInference.stream_generate` (the pipeline `lingbot-rt generate` runs).

Per block it records each denoising pass and the commit pass (CUDA events), the rest of the
DiT stage (actions, controls, condition, noise), the decode (synchronised wall clock) and the
encode (CPU). A warm-up stream runs first (compilation, and both attention layouts: while the
window fills and once it is full); then a fresh stream is timed: first-frame latency (stream
open to the first JPEG), key read -> first JPEG of the block those keys steer, and sustained
FPS over its blocks after the first. FLOPs of one steady-state block are counted with
FlopCounterMode (attention included), and the bf16 GEMM rate is measured at the DiT's shapes
in the same run: their ratio is the fraction of the limit.

    python benchmarks/bench_fps.py --model lingbot-14b --resolution 480p --out benchmarks/results/fps_lingbot-14b_480p_h100.json
    python benchmarks/bench_fps.py --model wan-1.3b --resolution 720p --compile default --attention cudnn \\
        --fused-qkv --commit last_step
    python benchmarks/bench_fps.py --model world --resolution 480p --long 500        # flat per-block cost
    python benchmarks/bench_fps.py --model tiny --resolution 64x64 --device cpu --dtype fp32 --blocks 3 --warmup 1
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from gpu_timing import RegionTimer, count_flops, matmul_ceiling, profile_kernels
from random_models import one_layer_text_encoder, random_dit, steady_block
from results_io import finish

from lingbot_rt.model import CacheConfig, CausalWanModel
from lingbot_rt.model.checkpoint import load_model
from lingbot_rt.model.fp8 import convert_to_fp8
from lingbot_rt.model.sampler import FAST_INDICES, FAST_SHIFT, FewStepSchedule
from lingbot_rt.model.tiny_decoder import TinyDecoder, load_tiny_decoder, tiny_decoder_config
from lingbot_rt.model.vae import SPACE_STRIDE, WanVAE, vae_config
from lingbot_rt.pipeline import StreamConfig, StreamingInference
from lingbot_rt.services.gateway import encode_jpeg

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
RESOLUTIONS = {"480p": (480, 832), "720p": (720, 1280)}
VAE_OF_MODEL = {"world": "world", "tiny": "tiny"}          # every other model: the Wan2.1 VAE
SDPA_BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                 "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
COMPILE_MODES = ("none", "default", "max-autotune-no-cudagraphs", "reduce-overhead")
LONG_REFERENCE_BLOCK = 20
LONG_SPAN = 5                     # blocks averaged at each end of the flat-cost check


def resolution(text: str) -> tuple[int, int]:
    """'480p', '720p' or 'HxW' -> (height, width)."""
    if text in RESOLUTIONS:
        return RESOLUTIONS[text]
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must be 480p, 720p or HxW, got {text!r}") from None
    if height <= 0 or width <= 0 or height % (2 * SPACE_STRIDE) or width % (2 * SPACE_STRIDE):
        raise argparse.ArgumentTypeError(f"height and width must be positive multiples of {2 * SPACE_STRIDE}, "
                                         f"got {height}x{width}")
    return height, width


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="lingbot-14b", help="named DiT config (lingbot-14b, wan-1.3b, world, tiny)")
    ap.add_argument("--resolution", type=resolution, default="480p", help="480p (832x480), 720p (1280x720) or HxW")
    ap.add_argument("--vae", default=None, help="named VAE config (default: world/tiny for those models, else wan2.1)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--blocks", type=int, default=21, help="blocks of the timed stream (FPS over all but the first)")
    ap.add_argument("--warmup", type=int, default=7, help="blocks of the warm-up stream (7 reaches a full window)")
    ap.add_argument("--long", type=int, default=0,
                    help=f"stream this many blocks and compare the cost of the last {LONG_SPAN} with blocks "
                         f"{LONG_REFERENCE_BLOCK}-{LONG_REFERENCE_BLOCK + LONG_SPAN - 1}")
    ap.add_argument("--steady-from", type=int, default=11,
                    help="also summarise blocks from this one on (0: don't): a stream's first blocks also run the "
                         "VAE encoder for the I2V condition until its latents repeat (latent frame ~30 with the "
                         "Wan2.1 VAE), later blocks do not")
    ap.add_argument("--sink", type=int, default=3)
    ap.add_argument("--window", type=int, default=15)
    ap.add_argument("--full-frames", type=int, default=None,
                    help="compressed memory: window frames kept at full resolution (default: all)")
    ap.add_argument("--memory-pool", type=pool_size, default=(1, 1),
                    help="compressed memory: RxC patches of tokens averaged for the sink and older frames (e.g. 3x4)")
    ap.add_argument("--commit", default="clean", choices=["clean", "last_step"])
    ap.add_argument("--compile", default="none", choices=COMPILE_MODES, help="torch.compile every DiT block")
    ap.add_argument("--decoder", default="vae",
                    help="decode the frames with the VAE (vae), or a tiny streaming decoder: a named size "
                         "(wan2.1, world, tiny; random weights) or a trained decoder's directory")
    ap.add_argument("--compile-vae", action="store_true",
                    help="torch.compile the VAE's streaming encoder and decoder (what `serve --compile` does)")
    ap.add_argument("--attention", default="auto", choices=["auto", *SDPA_BACKENDS],
                    help="SDPA backend (auto: PyTorch's choice)")
    ap.add_argument("--fused-qkv", action="store_true", help="one QKV GEMM per self-attention")
    ap.add_argument("--fp8", action="store_true", help="e4m3 rowwise-scaled linears in the DiT blocks")
    ap.add_argument("--fp8-attention", action="store_true",
                    help="the streaming self-attention in e4m3 (our Triton kernel, `model/fp8_attention.py`)")
    ap.add_argument("--jpeg-quality", type=int, default=85)
    ap.add_argument("--jpeg-thread", action="store_true",
                    help="encode each block's JPEGs in a worker thread while the next block generates, as the "
                         "gateway does (its JPEG pool); a block then ends when its frames are decoded")
    ap.add_argument("--profile", action="store_true",
                    help="after the timed stream, profile one steady denoising pass and one decode: kernel time by "
                         "kind (attention, GEMM, fused, copies, other), the top kernels, and idle time; and the "
                         "host's Python time in the stream's second-to-last block (cProfile: where it waits and works)")
    ap.add_argument("--out", default=None, help="write the JSON result here")
    args = ap.parse_args(argv)
    if args.blocks < 2 or args.warmup < 0:
        ap.error(f"--blocks must be >= 2 and --warmup >= 0, got {args.blocks} and {args.warmup}")
    if args.long and args.long < LONG_REFERENCE_BLOCK + 2 * LONG_SPAN:
        ap.error(f"--long must be >= {LONG_REFERENCE_BLOCK + 2 * LONG_SPAN}, got {args.long}")
    return args


def pool_size(text: str) -> tuple[int, int]:
    rows, _, cols = text.partition("x")
    if not (rows.isdigit() and cols.isdigit()):
        raise argparse.ArgumentTypeError(f"expected RxC (e.g. 3x4), got {text!r}")
    return int(rows), int(cols)


def cache_config(args) -> CacheConfig:
    return CacheConfig(sink_frames=args.sink, window_frames=args.window, full_frames=args.full_frames,
                       memory_pool=args.memory_pool)


def build_models(args, dtype: torch.dtype, device: torch.device) -> tuple[CausalWanModel, WanVAE]:
    if args.model == "world":
        from lingbot_rt.world.shipped import SHIPPED_DIR, shipped_teacher_dir
        from lingbot_rt.world.train_vae import load_trained_vae
        return (load_model(shipped_teacher_dir(), dtype, device).eval(),
                load_trained_vae(SHIPPED_DIR, device, dtype).eval())
    vae = WanVAE(vae_config(args.vae or VAE_OF_MODEL.get(args.model, "wan2.1"))).to(device, dtype).eval()
    return random_dit(args.model, dtype, device), vae


def build_decoder(args, dtype: torch.dtype, device: torch.device) -> TinyDecoder | None:
    if args.decoder == "vae":
        return None
    if Path(args.decoder).is_dir():
        return load_tiny_decoder(args.decoder, dtype, device)
    return TinyDecoder(tiny_decoder_config(args.decoder)).to(device, dtype).eval()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@torch.no_grad()
def probe_block(dit: CausalWanModel, frames_decoder: WanVAE | TinyDecoder, args, latent_hw,
                timesteps: list[float]) -> dict:
    """FLOPs of one steady-state block (DiT passes + decode) and the output error of each
    requested transform against the untransformed model. Applies the transforms to `dit`.
    `frames_decoder` decodes the frames (the VAE or a tiny decoder).
    The errors are taken on a cache of the sink and one block (a pass's error does not need
    the whole window; the full-size cache and the FP8 weight copies do not fit beside each
    other next to a 14B model's bf16 weights)."""
    cache_cfg = cache_config(args)
    dev = dit.device

    def one_pass(steady, t, commit=False):
        return dit.forward_block(steady.x, torch.full((1,), t, device=dev), steady.cache, steady.slot_ids,
                                 y=steady.y, control=steady.control, commit=commit)

    def dit_block(steady):
        for index, t in enumerate(timesteps):
            one_pass(steady, t, commit=args.commit == "last_step" and index == len(timesteps) - 1)
        if args.commit == "clean":
            one_pass(steady, 0.0, commit=True)
    # Counted before the transforms: the FLOPs of the model's maths, whatever precision runs them;
    # the full-size cache is dropped right after.
    out = {"transform_rel_err": {}}
    steady = steady_block(dit, cache_cfg, latent_hw)
    out["dit_flops"], out["dit_flops_by_op"] = count_flops(partial(dit_block, steady))
    del steady
    decoder = frames_decoder.stream_decoder()
    latents = torch.randn(1, 16, cache_cfg.block_frames, *latent_hw, device=dev)
    decoder.decode(latents)                       # the stream's first block decodes fewer frames
    out["vae_flops"], _ = count_flops(lambda: decoder.decode(latents))
    short = steady_block(dit, CacheConfig(sink_frames=args.sink, window_frames=cache_cfg.block_frames), latent_hw)
    reference = one_pass(short, timesteps[-1])
    if args.fused_qkv:
        dit.fuse_qkv()
        out["transform_rel_err"]["fused_qkv"] = relative_error(one_pass(short, timesteps[-1]), reference)
    if args.fp8:
        out["fp8_linears"] = convert_to_fp8(dit.blocks, dit.dtype)
        out["transform_rel_err"]["fp8"] = relative_error(one_pass(short, timesteps[-1]), reference)
    if args.fp8_attention:                        # on top of the transforms above
        dit.use_fp8_attention()
        out["transform_rel_err"]["fp8_attention"] = relative_error(one_pass(short, timesteps[-1]), reference)
    return out


@torch.no_grad()
def profile_block(dit: CausalWanModel, frames_decoder: WanVAE | TinyDecoder, args, latent_hw, timestep: float) -> dict:
    """Kernel profiles of one denoising pass of a steady block (the model as timed: compiled,
    fused, FP8 as requested) and of one block's decode."""
    steady = steady_block(dit, cache_config(args), latent_hw)
    t = torch.full((1,), timestep, device=dit.device)
    one_pass = lambda: dit.forward_block(steady.x, t, steady.cache, steady.slot_ids, y=steady.y,
                                         control=steady.control)
    one_pass()                                    # a new cache object: any guard re-check happens here
    decoder = frames_decoder.stream_decoder()
    latents = torch.randn(1, 16, 3, *latent_hw, device=dit.device, dtype=frames_decoder.dtype)
    decoder.decode(latents)
    decoder.decode(latents)
    return {"denoising_pass": profile_kernels(one_pass, dit.device),
            "decode": profile_kernels(lambda: decoder.decode(latents), dit.device)}


def gemm_shapes(dit: CausalWanModel, tokens: int, fused_qkv: bool) -> list[tuple[int, int, int]]:
    """(M, K, N) of the DiT blocks' linears for one block of `tokens` tokens."""
    dim, ffn = dit.cfg.dim, dit.cfg.ffn_dim
    shapes = [(tokens, dim, dim), (tokens, dim, ffn), (tokens, ffn, dim)]
    return shapes + [(tokens, dim, 3 * dim)] if fused_qkv else shapes


def use_attention_backend(dit: CausalWanModel, name: str) -> None:
    """Run the DiT's streaming passes under one SDPA backend (not the VAE's attention, whose
    shapes some backends refuse)."""
    if name == "auto":
        return
    forward_block = dit.forward_block

    def forward_block_with(*args, **kwargs):
        with sdpa_kernel(SDPA_BACKENDS[name]):
            return forward_block(*args, **kwargs)
    dit.forward_block = forward_block_with


def time_passes(dit: CausalWanModel, timer: RegionTimer) -> None:
    """Record every `forward_block` call of the pipeline as an event-timed region."""
    forward_block = dit.forward_block

    def timed(*args, commit: bool = False, **kwargs):
        with timer.region("commit" if commit else "pass"):
            return forward_block(*args, commit=commit, **kwargs)
    dit.forward_block = timed


def run_stream(pipeline: StreamingInference, timer: RegionTimer, num_blocks: int, args, image) -> dict:
    """Stream `num_blocks` blocks; per block: passes, decode, encode, wall times. With
    `--jpeg-thread` each block's encode runs in a worker thread beside the next block (waited
    for before the one after is submitted: the encoder must keep up), and a block ends when its
    frames are decoded; its first JPEG is still timed from the decode."""
    key_reads: list[float] = []

    def keys():                           # read once at each block's start (live keys)
        key_reads.append(time.perf_counter())
        return "w"

    rows = {name: [] for name in ("steps_s", "commit_s", "other_dit_s", "decode_s", "frames", "end")}
    host = cProfile.Profile() if args.profile and num_blocks >= 3 else None
    decoded_at, encodes = [], []
    pool = ThreadPoolExecutor(1, thread_name_prefix="jpeg") if args.jpeg_thread else None
    opened = time.perf_counter()
    for block in pipeline.stream_generate(image, "a stone corridor", keys, num_frames=None):
        decoded_at.append(time.perf_counter())
        if pool is None:
            encodes.append(encode_jpeg(block.frames, args.jpeg_quality)[1])
        else:
            if encodes:
                encodes[-1] = encodes[-1].result()[1]
            encodes.append(pool.submit(encode_jpeg, block.frames, args.jpeg_quality))
        passes = [seconds for _, seconds in timer.collect()]
        steps, commit = (passes[:-1], passes[-1]) if args.commit == "clean" else (passes, 0.0)
        for name, value in (("steps_s", steps), ("commit_s", commit),
                            ("other_dit_s", block.timings["denoise"] - sum(passes)),
                            ("decode_s", block.timings["decode"]), ("frames", len(block.frames)),
                            ("end", time.perf_counter())):
            rows[name].append(value)
        if host is not None and block.index == num_blocks - 3:
            host.enable()                     # the next block, generated inside the generator's next()
        if host is not None and block.index == num_blocks - 2:
            host.disable()
            rows["host_profile"] = host_profile(host)
        if block.index + 1 == num_blocks:
            break
    if pool is not None:
        encodes[-1] = encodes[-1].result()[1]
        pool.shutdown()
    rows["encode_s"] = [sum(seconds) for seconds in encodes]
    first_jpeg = [decoded + seconds[0] for decoded, seconds in zip(decoded_at, encodes)]
    rows["key_to_frame_s"] = [jpeg - read for jpeg, read in zip(first_jpeg, key_reads)]
    rows["first_frame_s"] = first_jpeg[0] - opened
    return rows


def host_profile(profiler: cProfile.Profile, top: int = 15) -> dict:
    """The profiled block's Python functions: the `top` by own time and by time including callees."""
    stats = pstats.Stats(profiler)

    def rows(key: int) -> list[dict]:
        ranked = sorted(stats.stats.items(), key=lambda item: -item[1][key])[:top]
        return [{"function": f"{Path(file).name}:{line}({name})", "calls": calls, "own_ms": round(own * 1e3, 2),
                 "total_ms": round(total * 1e3, 2)} for (file, line, name), (_, calls, own, total, _) in ranked]
    return {"total_ms": round(stats.total_tt * 1e3, 2), "by_own_time": rows(2), "by_total_time": rows(3)}


def mean(values) -> float:
    return statistics.fmean(values)


def sig(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def summarise(rows: dict, probe: dict, ceiling: float, first: int, last: int) -> dict:
    """Numbers over blocks first .. last - 1 of the timed stream (block 0 has 9 frames and a cold cache)."""
    span = slice(first, last)
    block_s = np.diff(rows["end"][first - 1:last])           # wall time of blocks first .. last-1
    frames = rows["frames"][span]
    steps = np.array(rows["steps_s"][span])
    dit_s = steps.sum(1) + np.array(rows["commit_s"][span]) + np.array(rows["other_dit_s"][span])
    decode_s, encode_s = np.array(rows["decode_s"][span]), np.array(rows["encode_s"][span])
    period = float(block_s.mean())
    out = {
        "blocks": [first, last - 1],
        "timed_blocks": len(block_s),
        "frames_per_block": frames[0],
        "step_s_mean": [round(float(s), 4) for s in steps.mean(0)],
        "commit_s_mean": round(mean(rows["commit_s"][span]), 4),
        "other_dit_s_mean": round(mean(rows["other_dit_s"][span]), 4),
        "decode_s_mean": round(float(decode_s.mean()), 4),
        "encode_s_mean": round(float(encode_s.mean()), 4),
        "block_s_mean": round(period, 4),
        "block_s_max": round(float(block_s.max()), 4),
        "sustained_fps": round(sum(frames) / float(block_s.sum()), 2),
        # DiT and VAE+JPEG on separate stages/streams (the server's pipelining): the slower one sets the rate
        "pipelined_fps_bound": round(sum(frames) / max(float(dit_s.sum()), float((decode_s + encode_s).sum())), 2),
        "first_frame_s": round(rows["first_frame_s"], 3),
        # keys are read at a block's start: a press waits 0 .. 1 block for the next read, then that block
        "action_to_frame_s": {"at_read": round(mean(rows["key_to_frame_s"][span]), 3),
                              "mean": round(mean(rows["key_to_frame_s"][span]) + period / 2, 3),
                              "max": round(mean(rows["key_to_frame_s"][span]) + period, 3)},
    }
    flops, dit_rate = probe["dit_flops"] + probe["vae_flops"], probe["dit_flops"] / float(dit_s.mean()) / 1e12
    out["tflops_per_block"] = {"dit": sig(probe["dit_flops"] / 1e12), "vae": sig(probe["vae_flops"] / 1e12)}
    out["achieved_tflops"] = {"block": sig(flops / period / 1e12), "dit": sig(dit_rate)}
    # the counted FLOPs per second over the GEMM ceiling measured in this run, in the run's dtype
    # (bf16 runs: the bf16 limit; --fp8 runs are still measured against the bf16 GEMM rate)
    out["fraction_of_matmul_ceiling"] = {"block": sig(flops / period / 1e12 / ceiling, 3),
                                         "dit": sig(dit_rate / ceiling, 3)}
    return out


def flat_cost(rows: dict, num_blocks: int) -> dict:
    """Mean wall time of blocks 20..24 vs the last 5 of a long stream."""
    block_s = np.diff(rows["end"])                            # block i+1's wall time at index i
    early = block_s[LONG_REFERENCE_BLOCK - 1:LONG_REFERENCE_BLOCK - 1 + LONG_SPAN]
    late = block_s[-LONG_SPAN:]
    dit = np.array([sum(s) + c for s, c in zip(rows["steps_s"], rows["commit_s"])])
    return {"blocks": num_blocks, "reference_block": LONG_REFERENCE_BLOCK,
            "block_s_at_reference": round(float(early.mean()), 4), "block_s_at_end": round(float(late.mean()), 4),
            "ratio": round(float(late.mean() / early.mean()), 4),
            "dit_passes_ratio": round(float(dit[-LONG_SPAN:].mean()
                                            / dit[LONG_REFERENCE_BLOCK:LONG_REFERENCE_BLOCK + LONG_SPAN].mean()), 4)}


def main(argv=None):
    args = parse_args(argv)
    dev, dtype = torch.device(args.device), DTYPES[args.dtype]
    height, width = args.resolution
    latent_hw = (height // SPACE_STRIDE, width // SPACE_STRIDE)
    torch.manual_seed(0)
    with torch.inference_mode():
        start = time.perf_counter()
        dit, vae = build_models(args, dtype, dev)
        decoder = build_decoder(args, dtype, dev)
        use_attention_backend(dit, args.attention)
        params = dit.num_params()
        build_s = time.perf_counter() - start
        schedule = FewStepSchedule.from_indices(FAST_INDICES, FAST_SHIFT)
        probe = probe_block(dit, decoder or vae, args, latent_hw, list(schedule.timesteps))
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        tokens = 3 * (latent_hw[0] // 2) * (latent_hw[1] // 2)
        rates = matmul_ceiling(gemm_shapes(dit, tokens, args.fused_qkv), dtype, dev)
        if args.compile != "none":
            dit.compile_blocks(dynamic=False, mode=None if args.compile == "default" else args.compile)
        if args.compile_vae:
            vae.compile_streaming()
        config = StreamConfig(height=height, width=width, commit=args.commit, sink_frames=args.sink,
                              window_frames=args.window, full_frames=args.full_frames, memory_pool=args.memory_pool)
        pipeline = StreamingInference(dit, vae, one_layer_text_encoder(dit.cfg.text_dim, dit.cfg.text_len, dev),
                                      config, decoder=decoder)
        timer = RegionTimer(dev)
        time_passes(pipeline.dit, timer)
        kv_cache_bytes, keys_per_query = pipeline.cache.nbytes(), pipeline.cache.slot_offsets[-1]
        image = np.random.RandomState(0).randint(0, 256, (height, width, 3), dtype=np.uint8)
        start = time.perf_counter()
        if args.warmup:
            run_stream(pipeline, timer, args.warmup, args, image)
        warmup_s = time.perf_counter() - start
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        num_blocks = max(args.blocks, args.long)
        rows = run_stream(pipeline, timer, num_blocks, args, image)
        # the timed stream's peak (the profile below holds a second KV cache)
        peak = {"peak_memory_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)} if dev.type == "cuda" else {}
        if args.profile:
            del pipeline                              # its KV cache: the profile builds its own
            profile = profile_block(dit, decoder or vae, args, latent_hw, schedule.timesteps[1])
    ceiling = max(rates.values())
    result = {
        "command": " ".join(sys.argv), "model": args.model,
        "vae": "world (shipped)" if args.model == "world" else args.vae or VAE_OF_MODEL.get(args.model, "wan2.1"),
        "resolution": [height, width], "dtype": args.dtype, "params": params, "tokens_per_block": tokens,
        "settings": {"steps": len(schedule.timesteps), "timesteps": [round(t, 1) for t in schedule.timesteps],
                     "sink": args.sink, "window": args.window, "full_frames": args.full_frames,
                     "memory_pool": list(args.memory_pool), "keys_per_query": keys_per_query,
                     "commit": args.commit, "compile": args.compile,
                     "compile_vae": args.compile_vae, "decoder": args.decoder,
                     "attention": args.attention, "fused_qkv": args.fused_qkv, "fp8": args.fp8,
                     "fp8_attention": args.fp8_attention,
                     "jpeg_quality": args.jpeg_quality, "jpeg_thread": args.jpeg_thread},
        "build_s": round(build_s, 2), "warmup_s": round(warmup_s, 2), "warmup_blocks": args.warmup,
        "kv_cache_gib": round(kv_cache_bytes / 2**30, 3),
        "matmul_tflops": rates, "matmul_ceiling_tflops": ceiling,
        "summary": summarise(rows, probe, ceiling, 1, args.blocks),
        "transform_rel_err": {k: float(f"{v:.3g}") for k, v in probe["transform_rel_err"].items()},
        "dit_tflops_by_op": {op: sig(n / 1e12) for op, n in probe["dit_flops_by_op"].items()},
        "per_block": {"steps_s": [[round(s, 4) for s in steps] for steps in rows["steps_s"]],
                      **{name: [round(v, 4) for v in rows[name]]
                         for name in ("commit_s", "other_dit_s", "decode_s", "encode_s", "key_to_frame_s")},
                      "block_s": [round(float(s), 4) for s in np.diff(rows["end"])]},
    }
    if args.steady_from and num_blocks >= args.steady_from + 2:
        result["summary_steady"] = summarise(rows, probe, ceiling, args.steady_from, num_blocks)
    if args.long:
        result["flat_cost"] = flat_cost(rows, num_blocks)
    if args.profile:
        result["profile"] = profile
        if "host_profile" in rows:
            result["profile"]["host_block"] = rows["host_profile"]
    finish(result | peak, dev, args.out)


if __name__ == "__main__":
    main()
