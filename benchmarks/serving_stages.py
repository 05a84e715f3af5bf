"""Serving stages on one machine: frames/s delivered to N sessions holding W, and the DiT's
per-step time, with the stages in this process or in two pipelined Ray actors.

    python benchmarks/serving_stages.py --model world --vae world --size 128 --sessions 1 4 \
        --stages in-process ray --blocks 20 --out benchmarks/results/serving_stages_world_h100.json

A random release of the given sizes (`make_tiny_checkpoint`), `Scheduler.start()` (the engine
and VAE threads, as `lingbot-rt serve` runs them), every session added at once; after
--warmup blocks per session, the time until every session has --blocks more.
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from results_io import finish

from lingbot_rt.pipeline.release import ReleaseManifest
from lingbot_rt.pipeline.streaming import StreamConfig, StreamingInference
from lingbot_rt.pipeline.tiny_checkpoint import make_tiny_checkpoint
from lingbot_rt.services.executor import InProcessExecutor
from lingbot_rt.services.scheduler import Scheduler, SchedulerConfig


def make_executor(stages: str, release: Path, config: StreamConfig, device: torch.device):
    if stages == "in-process":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        return InProcessExecutor(StreamingInference.from_release(release, config, device=device, dtype=dtype))
    import ray
    from lingbot_rt.services.ray_stages import RayExecutor
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    return RayExecutor(release, config)


def measure(executor, sessions: int, warmup: int, blocks: int) -> dict:
    done = {f"s{i}": 0 for i in range(sessions)}
    frames, steps, finished = [0], [], threading.Event()
    errors: list[str] = []

    def on_output(block):
        done[block.session_id] += 1
        if min(done.values()) >= warmup:
            frames[0] += len(block.frames)
        if min(done.values()) >= warmup + blocks:
            finished.set()

    def on_error(session_id, exc):
        errors.append(f"{session_id}: {exc}")
        finished.set()

    scheduler = Scheduler(executor, SchedulerConfig(max_batch=sessions, max_waiting=0), on_output, on_error,
                          on_step=lambda batch: steps.append((time.perf_counter(), batch)))
    image = np.random.default_rng(0).integers(0, 256, (executor.config.height, executor.config.width, 3), np.uint8)
    for name in done:
        scheduler.add_session(name, image, "a corridor of grey brick walls", seed=0)
        scheduler.set_action(name, "w", 0, 0.0)
    scheduler.start()
    try:
        while min(done.values()) < warmup:
            if errors:
                raise RuntimeError(errors[0])
            time.sleep(0.01)
        frames[0], start = 0, time.perf_counter()
        if not finished.wait(600):
            raise TimeoutError("no result in 600 s")
        elapsed = time.perf_counter() - start
    finally:
        scheduler.shutdown()
    if errors:
        raise RuntimeError(errors[0])
    step_times = np.diff([t for t, _ in steps if t >= start])
    return {"sessions": sessions, "frames_per_s_total": round(frames[0] / elapsed, 2),
            "frames_per_s_per_session": round(frames[0] / elapsed / sessions, 2),
            "dit_step_ms_median": round(float(np.median(step_times)) * 1e3, 2) if len(step_times) else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="world", help="named DiT config")
    ap.add_argument("--vae", default="world", help="named VAE config")
    ap.add_argument("--text-encoder", default="world", help="named T5 config (its dim must be the DiT's text_dim)")
    ap.add_argument("--size", type=int, default=128, help="frame height and width")
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--stages", nargs="+", default=["in-process", "ray"])
    ap.add_argument("--warmup", type=int, default=3, help="blocks per session before timing")
    ap.add_argument("--blocks", type=int, default=20, help="timed blocks per session")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out")
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        release = make_tiny_checkpoint(Path(tmp) / "release", config=args.model, manifest=ReleaseManifest(
            vae=args.vae, text_encoder=args.text_encoder, height=args.size, width=args.size))
        for stages in args.stages:
            for sessions in args.sessions:
                executor = make_executor(stages, release, StreamConfig(max_sessions=sessions), device)
                try:
                    rows.append({"stages": stages, **measure(executor, sessions, args.warmup, args.blocks)})
                finally:
                    executor.shutdown()
                print(rows[-1], flush=True)
    finish({"benchmark": "serving_stages", "model": args.model, "vae": args.vae, "size": args.size,
            "blocks": args.blocks, "rows": rows}, device, args.out)


if __name__ == "__main__":
    main()
