"""Play a stream in the browser: the page sends the keys you hold, the server streams frames.

    python demo/wasd_demo.py --image input.jpg --prompt "A fantasy world"

then open http://127.0.0.1:8000. Without `--checkpoint` it plays the built-in world (its
distilled student, made into the release `ckpt/world` on first use). One viewer at a time; the
stream restarts when the page is reloaded.

How it runs: a generator thread calls `StreamingInference.stream_generate` with live keys
(read at each block's start) and hands JPEG frames to a queue of at most two blocks, so
generation never runs far ahead of what you see and a key press reaches the next block; the
page's `<img>` reads them as an MJPEG stream (`multipart/x-mixed-replace`), one frame per 1/fps.
"""
from __future__ import annotations

import argparse
import io
import queue
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lingbot_rt.model.controls import check_key
from lingbot_rt.pipeline import StreamingInference
from lingbot_rt.world.release import DEFAULT_RELEASE, ensure_default_release

PAGE = Path(__file__).with_name("wasd_demo.html")
BOUNDARY = "lingbot-frame"
QUEUED_BLOCKS = 2
TAKEOVER_WAIT_S = 5.0


def jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame).save(out, "JPEG", quality=quality)
    return out.getvalue()


class Player:
    """The shared state of the demo: held keys, the pipeline, the one active stream."""

    def __init__(self, pipeline: StreamingInference, image, prompt: str, seed: int):
        self.pipeline, self.image, self.prompt, self.seed = pipeline, image, prompt, seed
        self.keys: frozenset[str] = frozenset()
        self.busy = threading.Lock()

    def set_keys(self, text: str) -> None:
        self.keys = frozenset(check_key(c) for c in text)

    def frames(self):
        """JPEG frames of a new stream, paced at the pipeline's fps; closing the generator
        stops the stream and frees its session."""
        blocks: queue.Queue = queue.Queue(maxsize=QUEUED_BLOCKS)
        stop = threading.Event()

        def generate():
            try:
                for block in self.pipeline.stream_generate(self.image, self.prompt, lambda: self.keys, seed=self.seed):
                    encoded = [jpeg(frame) for frame in block.frames]
                    while not stop.is_set():
                        try:
                            blocks.put(encoded, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            finally:
                blocks.put(None)

        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        period, next_time = 1.0 / self.pipeline.config.fps, time.monotonic()
        try:
            while (encoded := blocks.get()) is not None:
                for frame in encoded:
                    next_time = max(next_time + period, time.monotonic())
                    time.sleep(max(0.0, next_time - time.monotonic()))
                    yield frame
        finally:                                    # the viewer left: free the session before the next one
            stop.set()
            worker.join()


def make_handler(player: Player):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):        # keep the terminal for the demo's own lines
            pass

        def do_GET(self):
            if self.path == "/":
                body = PAGE.read_bytes()
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/stream":
                self.stream()
            else:
                self.send_error(HTTPStatus.NOT_FOUND)

        def stream(self):
            if not player.busy.acquire(timeout=TAKEOVER_WAIT_S):   # a reloaded page waits for its old stream
                self.send_error(HTTPStatus.CONFLICT, "another viewer is playing")
                return
            frames = player.frames()
            try:
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                for frame in frames:
                    self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                     f"Content-Length: {len(frame)}\r\n\r\n".encode() + frame + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass                                # the page was closed or reloaded
            finally:
                frames.close()
                player.busy.release()

        def do_POST(self):
            if self.path != "/keys":
                self.send_error(HTTPStatus.NOT_FOUND)
                return
            length = int(self.headers.get("Content-Length", 0))
            if length > 64:
                self.send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "send at most the 8 held keys")
                return
            try:
                player.set_keys(self.rfile.read(length).decode())
            except (UnicodeDecodeError, ValueError) as exc:
                self.send_error(HTTPStatus.BAD_REQUEST, str(exc))
                return
            self.send_response(HTTPStatus.NO_CONTENT)
            self.end_headers()

    return Handler


def build_server(pipeline: StreamingInference, image, prompt: str, host: str, port: int, seed: int = 0):
    return ThreadingHTTPServer((host, port), make_handler(Player(pipeline, image, prompt, seed)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--prompt", default="")
    parser.add_argument("--checkpoint", default=DEFAULT_RELEASE, help="release root (default: the built-in world, "
                                                                      f"made in {DEFAULT_RELEASE} on first use)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    ensure_default_release(args.checkpoint)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    pipeline = StreamingInference.from_release(args.checkpoint, device=args.device, dtype=dtype)
    server = build_server(pipeline, args.image, args.prompt, args.host, args.port, args.seed)
    print(f"open http://{args.host}:{server.server_port}  ({pipeline.height}x{pipeline.width}, "
          f"{pipeline.config.fps} fps; Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
