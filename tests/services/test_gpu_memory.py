"""lingbot_gpu_memory_bytes: the executors' CUDA allocator readings reach the gateway's metrics
after each DiT step (the CUDA numbers themselves only on a GPU)."""
from __future__ import annotations

import pytest
import torch
from prometheus_client import CollectorRegistry

from lingbot_rt.pipeline import StreamConfig, StreamingInference
from lingbot_rt.pipeline.tiny_checkpoint import make_tiny_checkpoint
from lingbot_rt.services.executor import GPU_MEMORY_STAGES, InProcessExecutor, cuda_memory
from lingbot_rt.services.gateway import WorldGateway
from tests.test_streaming import start_image


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("release") / "tiny")


class ReportingExecutor(InProcessExecutor):
    """The in-process stages, reporting what the Ray stage actors would on a GPU."""

    def __init__(self, pipeline):
        super().__init__(pipeline)
        self.steps = 0

    def denoise(self, requests):
        self.steps += 1
        return super().denoise(requests)

    def gpu_memory(self):
        return {"dit": {"allocated": 1000 * self.steps, "reserved": 4096}, "vae": {"allocated": 7, "reserved": 8}}


def sample(gateway: WorldGateway, stage: str, kind: str) -> float | None:
    return gateway.metrics.registry.get_sample_value("lingbot_gpu_memory_bytes", {"stage": stage, "kind": kind})


def test_each_step_exports_the_stages_latest_gpu_memory(release):
    pipeline = StreamingInference.from_release(release, StreamConfig(max_sessions=1), dtype=torch.float32)
    gateway = WorldGateway(ReportingExecutor(pipeline), registry=CollectorRegistry())
    assert sample(gateway, "dit", "allocated") is None          # no series before a reading
    for step, session_id in enumerate(("a", "b"), start=1):     # (no client: each leaves after a block)
        gateway.scheduler.add_session(session_id, start_image(), "x")
        assert gateway.scheduler.step() == 1
        assert sample(gateway, "dit", "allocated") == 1000 * step and sample(gateway, "dit", "reserved") == 4096
    assert (sample(gateway, "vae", "allocated"), sample(gateway, "vae", "reserved")) == (7, 8)
    assert {"dit", "vae"} <= set(GPU_MEMORY_STAGES)
    gateway.scheduler.shutdown()


def test_cpu_stages_report_no_gpu_memory(release):
    pipeline = StreamingInference.from_release(release, StreamConfig(max_sessions=1), dtype=torch.float32)
    assert InProcessExecutor(pipeline).gpu_memory() == {} and cuda_memory(torch.device("cpu")) == {}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_in_process_stages_on_a_gpu_report_the_allocator(release):
    pipeline = StreamingInference.from_release(release, StreamConfig(max_sessions=1), device="cuda",
                                               dtype=torch.bfloat16)
    memory = InProcessExecutor(pipeline).gpu_memory()
    assert list(memory) == ["dit+vae"]
    assert 0 < memory["dit+vae"]["allocated"] <= memory["dit+vae"]["reserved"]
