"""The DiT and VAE stage objects on a tiny release (CPU, 64x64), without Ray."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lingbot_rt.pipeline import StreamConfig, StreamingInference
from lingbot_rt.pipeline.streaming import decode_block
from lingbot_rt.pipeline.tiny_checkpoint import make_tiny_checkpoint
from lingbot_rt.services.stages import BlockRequest, DiTStage, VAEStage
from tests.test_streaming import start_image


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    release = make_tiny_checkpoint(tmp_path_factory.mktemp("release") / "tiny")
    return StreamingInference.from_release(release, StreamConfig(max_sessions=2), dtype=torch.float32)


def test_dit_stage_denoises_the_plannable_blocks_and_reports_the_rest(pipeline):
    stage = DiTStage(pipeline)
    stage.open_session("a", start_image(), "x", 0)
    with pytest.raises(ValueError, match="already open on the DiT stage"):
        stage.open_session("a", start_image(), "x", 0)
    output = stage.denoise([BlockRequest("ghost", frozenset()), BlockRequest("a", frozenset("w"))])
    assert list(output.failed) == ["ghost"] and "not open on the DiT stage" in str(output.failed["ghost"])
    assert output.first_frames == {"a": 0} and output.latents.shape == (1, 16, 3, 8, 8)
    assert stage.denoise([BlockRequest("a", frozenset())]).first_frames == {"a": 9}
    stage.close_session("a")
    assert stage.free_slots == 2 and stage.sessions == {}
    with pytest.raises(ValueError, match="not open on the DiT stage"):
        stage.close_session("a")


def test_vae_stage_decodes_each_session_with_its_own_decoder(pipeline):
    stage = VAEStage(pipeline.vae)
    for session_id in ("a", "b"):
        stage.open_session(session_id)
    latents = torch.randn(3, 16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    frames = stage.decode(["a", "ghost", "b"], latents)
    np.testing.assert_array_equal(frames["b"], decode_block(pipeline.vae.stream_decoder(), latents[2]))
    assert frames["a"].shape == (9, 64, 64, 3)
    assert isinstance(frames["ghost"], ValueError) and "not open on the VAE stage" in str(frames["ghost"])
    assert stage.decode(["a"], latents[:1])["a"].shape == (12, 64, 64, 3)     # "a" streams on
    stage.close_session("a")
    assert list(stage.decoders) == ["b"]
    with pytest.raises(ValueError, match="2 session ids for 1 blocks"):
        stage.decode(["a", "b"], latents[:1])
