"""Write streamed frames to an H.264 MP4 (PyAV, which bundles FFmpeg's libraries)."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np


class VideoWriter:
    """`with VideoWriter(path, fps) as out: out.write(frames)` for uint8 [T, H, W, 3] chunks."""

    def __init__(self, path: str | Path, fps: int, crf: int = 18):
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise ValueError(f"output must be an .mp4 file, got {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.crf = fps, crf
        self._container = None
        self._stream = None
        self.num_frames = 0

    def __enter__(self) -> "VideoWriter":
        return self

    def write(self, frames: np.ndarray) -> None:
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
        if self._container is None:
            self._open(frames.shape[1], frames.shape[2])
        for frame in frames:
            for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                self._container.mux(packet)
        self.num_frames += len(frames)

    def _open(self, height: int, width: int) -> None:
        if height % 2 or width % 2:
            raise ValueError(f"H.264 needs an even frame size, got {height}x{width}")
        self._container = av.open(str(self.path), "w")
        self._stream = self._container.add_stream("libx264", rate=self.fps)
        self._stream.height, self._stream.width = height, width
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(self.crf)}

    def close(self) -> None:
        if self._container is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None

    def __exit__(self, *exc) -> None:
        self.close()


def read_video(path: str | Path) -> np.ndarray:
    """All frames of a video file as uint8 [T, H, W, 3]."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
