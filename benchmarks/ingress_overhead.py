"""What the gRPC front door costs: the same release and settings behind (a) the standalone
grpc.aio gateway and (b) Ray Serve's gRPC proxy, each started as `lingbot-rt serve` would
(`--ingress gateway` / `--ingress serve`) in its own process.

    python benchmarks/ingress_overhead.py --sessions 1 4 --duration 20 \
        --out benchmarks/results/ingress_overhead_cpu.json
    python benchmarks/ingress_overhead.py --model world --vae world --text-encoder world --size 128 \
        --device cuda --sessions 1 4 --duration 60 --out benchmarks/results/ingress_overhead_h100.json

Per ingress and number of concurrent sessions N, on the client's clock (`services.client.Client`):
* delivered frames/s per session, after `--warmup` seconds;
* action -> frame latency: each session changes its held keys every `--action-every` frames;
  the time from sending an action to the first frame it conditions (it waits for the next
  block to start, so it includes up to a block of generation: the same for both ingresses);
* session start: from opening a Play call to its SessionStarted (routing, the start message
  and its image, admission), `--starts` sessions one after the other, no other session open;
* unary round trip: GetCapacity, one call at a time, with no session open ("idle") and every
  `--unary-interval` seconds while the N sessions play ("under load"): the per-message cost of
  the ingress without frames in it.

The server generates as fast as it can (the scheduler does not pace blocks to the stream's fps)
and the client reads as fast as it can, so frames/s is throughput, and the action -> frame
latency is mostly frames already made or in flight when the action arrives.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from results_io import finish

from lingbot_rt.pipeline.release import ReleaseManifest
from lingbot_rt.pipeline.tiny_checkpoint import make_tiny_checkpoint
from lingbot_rt.services.client import Client, open_channel
from lingbot_rt.services.proto.lingbot.v1 import world_pb2, world_pb2_grpc

INGRESSES = ("gateway", "serve")
KEYS = ("w", "d", "wd", "a")
PROMPT = "a corridor of grey brick walls"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """`lingbot-rt serve --ingress <ingress>` in a process group of its own (Ray's processes
    included), stopped with SIGTERM (the server drains), then killed if it lingers."""

    def __init__(self, ingress: str, release: Path, args, log_path: Path):
        self.port = free_port()
        command = [sys.executable, "-m", "lingbot_rt.cli", "serve", "--ingress", ingress, "--checkpoint", str(release),
                   "--port", str(self.port), "--web-port", "0", "--metrics-port", "0",
                   "--max-sessions", str(max(args.sessions)), "--max-batch", str(max(args.sessions)),
                   # one waiting room: with Serve, a replica's request cap is max_sessions + max_waiting,
                   # so GetCapacity still gets through while every session plays
                   "--max-waiting", "1", "--grace", "0"]
        if args.device:
            command += ["--device", args.device]
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                        start_new_session=True)
        ready = threading.Event()
        threading.Thread(target=self._read_stdout, args=(ready,), daemon=True).start()
        if not ready.wait(args.start_timeout):
            self.stop()
            raise TimeoutError(f"{ingress} did not start within {args.start_timeout} s; see {log_path}")

    def _read_stdout(self, ready: threading.Event) -> None:
        for line in self.process.stdout:
            self.log.write(line)
            self.log.flush()
            if line.startswith("play at"):
                ready.set()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)       # the group this script started
                self.process.wait()
        self.log.close()


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    ms = np.array(values) * 1e3
    return {"count": len(values), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2)}


async def unary_round_trips(stub, count: int | None, interval_s: float = 0.0,
                            stop: asyncio.Event | None = None) -> list[float]:
    """GetCapacity round trips, one at a time: `count` of them, or (None) until `stop` is set."""
    seconds = []
    while len(seconds) < count if count is not None else not stop.is_set():
        start = time.perf_counter()
        await stub.GetCapacity(world_pb2.GetCapacityRequest())
        seconds.append(time.perf_counter() - start)
        if interval_s:
            await asyncio.sleep(interval_s)
    return seconds


async def play(client: Client, image: bytes, seed: int, warmup_s: float, duration_s: float, action_every: int) -> dict:
    """One session: keys change every `action_every` frames; frames and latencies after warmup."""
    session = await client.play(image=image, prompt=PROMPT, seed=seed)
    session.act(KEYS[0])
    received, latencies = 0, []
    start = time.monotonic()
    timed_from = start + warmup_s
    timed_frames = 0
    try:
        async for frame in session.frames():
            received += 1
            now = frame.received
            if now >= timed_from:
                timed_frames += 1
                if frame.latency_s is not None:
                    latencies.append(frame.latency_s)
            if now >= timed_from + duration_s:
                break
            if received % action_every == 0:
                session.act(KEYS[(received // action_every) % len(KEYS)])
    finally:
        await session.stop()
    return {"fps": timed_frames / duration_s, "latencies": latencies}


async def session_starts(client: Client, image: bytes, count: int) -> list[float]:
    """Seconds from opening a Play call to SessionStarted, one session at a time."""
    seconds = []
    for seed in range(count):
        opened = time.perf_counter()
        session = await client.play(image=image, prompt=PROMPT, seed=seed)
        seconds.append(time.perf_counter() - opened)
        await session.stop()
    return seconds


async def measure(address: str, sessions: int, args, image: bytes) -> dict:
    async with Client(address) as client:
        channel = open_channel(address)
        try:
            stub = world_pb2_grpc.WorldServiceStub(channel)
            await unary_round_trips(stub, 20)                      # connect, warm the path
            idle = await unary_round_trips(stub, args.unary)
            starts = await session_starts(client, image, args.starts)
            players = [asyncio.create_task(play(client, image, seed, args.warmup, args.duration, args.action_every))
                       for seed in range(sessions)]
            await asyncio.sleep(args.warmup)
            stop = asyncio.Event()
            under_load = asyncio.create_task(unary_round_trips(stub, None, args.unary_interval, stop))
            results = await asyncio.gather(*players)
            stop.set()
            loaded = await under_load
        finally:
            await channel.close()
    fps = [r["fps"] for r in results]
    return {"sessions": sessions,
            "fps_per_session_mean": round(statistics.mean(fps), 2), "fps_per_session_min": round(min(fps), 2),
            "action_to_frame": percentiles([s for r in results for s in r["latencies"]]),
            "session_start": percentiles(starts),
            "unary_idle": percentiles(idle), "unary_under_load": percentiles(loaded)}


def start_image(size: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", help="named DiT config (tiny, world, ...)")
    ap.add_argument("--vae", default="tiny", help="named VAE config")
    ap.add_argument("--text-encoder", default="tiny", help="named T5 config (its dim must be the DiT's text_dim)")
    ap.add_argument("--size", type=int, default=64, help="frame height and width")
    ap.add_argument("--ingress", nargs="+", default=list(INGRESSES), choices=INGRESSES)
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds per run before timing")
    ap.add_argument("--duration", type=float, default=20.0, help="timed seconds per run")
    ap.add_argument("--action-every", type=int, default=24, help="frames between key changes")
    ap.add_argument("--unary", type=int, default=200, help="idle GetCapacity round trips")
    ap.add_argument("--starts", type=int, default=20, help="sessions started one at a time, for the start latency")
    ap.add_argument("--unary-interval", type=float, default=0.05, help="seconds between GetCapacity calls under load")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: the server's choice, cuda when available)")
    ap.add_argument("--start-timeout", type=float, default=600.0)
    ap.add_argument("--note", default="", help="what else ran on the machine, for the record")
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = []
    image = start_image(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        release = make_tiny_checkpoint(Path(tmp) / "release", config=args.model, manifest=ReleaseManifest(
            vae=args.vae, text_encoder=args.text_encoder, height=args.size, width=args.size))
        for ingress in args.ingress:
            server = ServerProcess(ingress, release, args, Path(tmp) / f"{ingress}.log")
            try:
                for sessions in args.sessions:
                    row = {"ingress": ingress, **asyncio.run(measure(f"127.0.0.1:{server.port}", sessions, args, image))}
                    rows.append(row)
                    print(row, flush=True)
            finally:
                server.stop()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    finish({"benchmark": "ingress_overhead", "command": shlex.join(["python", *sys.argv]),
            "note": args.note, "model": args.model, "vae": args.vae, "text_encoder": args.text_encoder,
            "size": args.size, "warmup_s": args.warmup, "duration_s": args.duration,
            "action_every_frames": args.action_every, "cpu_count": os.cpu_count(), "rows": rows}, device, args.out)


if __name__ == "__main__":
    main()
