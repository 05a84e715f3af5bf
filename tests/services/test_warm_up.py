"""Warming the stages up before serving (`Executor.warm_up`, `load_executor`), on a tiny release (CPU)."""
from __future__ import annotations

import pytest
import torch

from lingbot_rt.pipeline import StreamConfig, StreamingInference
from lingbot_rt.pipeline.tiny_checkpoint import make_tiny_checkpoint
from lingbot_rt.services.executor import Executor, InProcessExecutor, StageError
from lingbot_rt.services.scheduler import SchedulerConfig
from lingbot_rt.services.serve_app import ServeAppArgs, load_executor


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("release") / "tiny")


class Recording(InProcessExecutor):
    """Records each denoise batch and the frames each block decodes to."""

    def __init__(self, pipeline, fail_at: int | None = None):
        super().__init__(pipeline)
        self.batches, self.frames, self.fail_at = [], [], fail_at

    def denoise(self, requests):
        if len(self.batches) == self.fail_at:
            raise RuntimeError("the DiT broke")
        self.batches.append(sorted(r.session_id for r in requests))
        blocks = super().denoise(requests)
        return {s: _Recorded(block, self.frames) for s, block in blocks.items()}


class _Recorded:
    def __init__(self, block, frames):
        self.block, self.frames = block, frames

    def decode(self):
        self.frames.append(self.block.decode())
        return self.frames[-1]


def test_warm_up_plays_each_batch_size_that_fits_then_frees_every_slot(release):
    pipeline = StreamingInference.from_release(release, StreamConfig(max_sessions=2), dtype=torch.float32)
    executor = Recording(pipeline)
    executor.warm_up((2, 1, 4, 2), blocks=2)
    one, two = ["warm-up-1-0"], ["warm-up-2-0", "warm-up-2-1"]
    assert executor.batches == [one, one, two, two]          # 4 > the 2 slots: skipped
    assert [f.shape for f in executor.frames] == [(9, 64, 64, 3), (12, 64, 64, 3)] + [(9, 64, 64, 3)] * 2 + \
        [(12, 64, 64, 3)] * 2                                # every block decoded, first blocks short
    assert executor.free_slots == 2 and executor.dit.sessions == {}


def test_a_failing_warm_up_says_so_and_frees_its_sessions(release):
    pipeline = StreamingInference.from_release(release, StreamConfig(max_sessions=2), dtype=torch.float32)
    executor = Recording(pipeline, fail_at=1)
    with pytest.raises(RuntimeError, match="the DiT broke"):
        executor.warm_up((1,), blocks=3)
    assert executor.free_slots == 2 and executor.dit.sessions == {}


def test_a_block_that_fails_alone_fails_the_warm_up(release, monkeypatch):
    pipeline = StreamingInference.from_release(release, StreamConfig(max_sessions=1), dtype=torch.float32)
    executor = InProcessExecutor(pipeline)
    monkeypatch.setattr(executor.dit, "_plan", lambda request: (_ for _ in ()).throw(ValueError("bad plan")))
    with pytest.raises(StageError, match="warm-up block of warm-up-1-0 failed: bad plan"):
        executor.warm_up((1,), blocks=1)
    assert executor.free_slots == 1


@pytest.mark.parametrize("compile_mode, blocks, expected", [
    ("off", None, None),                     # eager: nothing to warm up by default
    ("default", None, ((1, 2, 3), 7)),       # compiled: (3 sink + 15 window) / 3 per block, plus one
    ("off", 2, ((1, 2, 3), 2)),              # asked for
    ("default", 0, None),                    # refused
])
def test_load_executor_warms_up_compiled_stages_by_default(release, monkeypatch, compile_mode, blocks, expected):
    calls = []
    monkeypatch.setattr(Executor, "warm_up", lambda self, sizes, n: calls.append((tuple(sizes), n)))
    args = ServeAppArgs(checkpoint=str(release), compile=compile_mode, warm_up_blocks=blocks, device="cpu",
                        max_sessions=3, scheduler=SchedulerConfig(max_batch=3), metrics_port=None)
    load_executor(args)
    assert calls == ([expected] if expected else [])


def test_a_negative_warm_up_is_refused(release):
    with pytest.raises(ValueError, match="warm_up_blocks must be >= 0, got -1"):
        ServeAppArgs(checkpoint=str(release), warm_up_blocks=-1)
