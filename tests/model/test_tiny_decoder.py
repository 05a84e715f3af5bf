"""The tiny streaming decoder: streaming = whole decode, StreamingDecoder's frame counts,
causality, errors, checkpoints, truncated backprop, and its use by StreamingInference."""
import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lingbot_rt.model.checkpoint import CheckpointError
from lingbot_rt.model.tiny_decoder import (
    DECODER_CONFIG,
    DECODER_WEIGHTS,
    TinyDecoder,
    TinyDecoderConfig,
    load_tiny_decoder,
    save_tiny_decoder,
    tiny_decoder_config,
)
from lingbot_rt.model.vae import video_to_uint8
from lingbot_rt.pipeline import StreamConfig, StreamingInference
from lingbot_rt.pipeline.release import load_release
from lingbot_rt.pipeline.tiny_checkpoint import make_tiny_checkpoint

CONFIGS = {"tiny": tiny_decoder_config("tiny"), "tiny-memory2": replace(tiny_decoder_config("tiny"), memory_blocks=2)}


def make_decoder(config: TinyDecoderConfig | str = "tiny", seed: int = 0) -> TinyDecoder:
    torch.manual_seed(seed)
    if isinstance(config, str):
        config = CONFIGS[config]
    decoder = TinyDecoder(config)
    with torch.no_grad():       # default init is small: make every path visible in the output
        for param in decoder.parameters():
            param.mul_(1.5)
    return decoder.eval()


def random_latents(batch=2, frames=7, height=2, width=3, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 16, frames, height, width, generator=g)


def decode_in_chunks(decoder: TinyDecoder, z: torch.Tensor, chunks, raw: bool = True) -> list[torch.Tensor]:
    stream = decoder.stream_decoder()
    outputs, start = [], 0
    for size in chunks:
        block = z[:, :, start:start + size]
        outputs.append(stream.decode_raw(block) if raw else stream.decode(block))
        start += size
    assert start == z.shape[2]
    return outputs


# ---- streaming = one call ------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("chunks", [(1, 3, 3), (2, 5)])
def test_streamed_decode_equals_one_call(name, chunks):
    decoder = make_decoder(name)
    z = random_latents()
    with torch.no_grad():
        whole = decode_in_chunks(decoder, z, (7,))[0]
        parts = decode_in_chunks(decoder, z, chunks)
        whole_clamped = decode_in_chunks(decoder, z, (7,), raw=False)[0]
        parts_clamped = decode_in_chunks(decoder, z, chunks, raw=False)
    assert whole.shape == (2, 3, 4 * (7 - 1) + 1, 16, 24)
    assert [p.shape[2] for p in parts] == [4 * chunks[0] - 3] + [4 * c for c in chunks[1:]]
    streamed = torch.cat(parts, 2)
    assert streamed.shape == whole.shape
    assert whole.abs().max() > 0.01          # not a trivially zero output
    torch.testing.assert_close(streamed, whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.cat(parts_clamped, 2), whole_clamped, atol=1e-6, rtol=0)


def test_frames_depend_on_batch_row_only():
    decoder = make_decoder()
    z = random_latents()
    with torch.no_grad():
        both = decoder.stream_decoder().decode_raw(z)
        second = decoder.stream_decoder().decode_raw(z[1:])
    torch.testing.assert_close(both[1:], second, atol=1e-6, rtol=0)


# ---- frame counts, range, dtype ------------------------------------------------------------
def test_frame_counts_match_the_vae_stream():
    decoder = make_decoder()
    stream = decoder.stream_decoder()
    with torch.no_grad():
        counts = [stream.decode(random_latents(frames=t, seed=t)).shape[2] for t in (3, 3, 1, 2)]
        single = decoder.stream_decoder().decode(random_latents(frames=1)).shape[2]
    assert counts == [4 * (3 - 1) + 1, 12, 4, 8]
    assert single == 1
    assert stream.num_latent_frames == 9


def test_decode_is_clamped_float32_and_decode_raw_is_not():
    decoder = make_decoder()
    with torch.no_grad():
        decoder.conv_out.weight.mul_(100.0)
        decoder.conv_out.bias.mul_(100.0)
        z = random_latents()
        raw = decoder.stream_decoder().decode_raw(z)
        video = decoder.stream_decoder().decode(z)
    assert raw.dtype == video.dtype == torch.float32
    assert raw.max() > 1 and raw.min() < -1, "scaled-up conv_out should leave [-1, 1] before clamping"
    assert video.min() >= -1 and video.max() <= 1
    torch.testing.assert_close(video, raw.clamp(-1, 1), atol=0, rtol=0)


def test_bf16_decoder_still_returns_float32():
    decoder = make_decoder().to(torch.bfloat16)
    assert decoder.dtype == torch.bfloat16
    with torch.no_grad():
        video = decoder.stream_decoder().decode(random_latents(frames=2))
    assert video.dtype == torch.float32 and video.shape == (2, 3, 5, 16, 24)


# ---- causality -----------------------------------------------------------------------------
def latent_frame_slice(k: int) -> slice:
    """Output frames of latent frame k in a stream from frame 0."""
    return slice(0, 1) if k == 0 else slice(1 + 4 * (k - 1), 1 + 4 * k)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("k", [1, 3, 6])
def test_changing_a_latent_frame_leaves_earlier_frames_alone(name, k):
    decoder = make_decoder(name)
    z = random_latents()
    changed = z.clone()
    changed[:, :, k] += torch.randn(changed[:, :, k].shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        a = decoder.stream_decoder().decode_raw(z)
        b = decoder.stream_decoder().decode_raw(changed)
    before = latent_frame_slice(k).start
    assert torch.equal(a[:, :, :before], b[:, :, :before]), f"frames before latent {k} changed"
    own = latent_frame_slice(k)
    for t in range(own.start, own.stop):
        assert (a[:, :, t] - b[:, :, t]).abs().max() > 1e-4, f"frame {t} of latent {k} did not change"
    if k + 1 < z.shape[2]:      # the memory carries the change into the next latent frame's frames
        nxt = latent_frame_slice(k + 1)
        assert (a[:, :, nxt] - b[:, :, nxt]).abs().max() > 1e-4


def test_streamed_blocks_are_causal_across_calls():
    """A later block cannot change frames already returned, and its first frames see the
    previous block through the memory (decoded from scratch they differ)."""
    decoder = make_decoder()
    z = random_latents()
    with torch.no_grad():
        stream = decoder.stream_decoder()
        first = stream.decode_raw(z[:, :, :3])
        second = stream.decode_raw(z[:, :, 3:])
        fresh = decoder.stream_decoder().decode_raw(z[:, :, 3:])
    assert first.shape[2] == 9 and second.shape[2] == 16 and fresh.shape[2] == 13
    assert (second[:, :, 3:4] - fresh[:, :, :1]).abs().max() > 1e-4


# ---- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(16, 2, 2, 3), (1, 8, 2, 2, 3), (1, 16, 0, 2, 3), (1, 16, 2, 2, 3, 1)])
def test_decode_rejects_bad_latents(shape):
    stream = make_decoder().stream_decoder()
    with pytest.raises(ValueError, match=r"\[B, 16, T, h, w\]"):
        stream.decode(torch.zeros(shape))
    with pytest.raises(ValueError, match=r"\[B, 16, T, h, w\]"):
        stream.decode_raw(torch.zeros(shape))
    assert stream.num_latent_frames == 0 and stream.latent_shape is None


@pytest.mark.parametrize("shape", [(1, 16, 2, 2, 3), (2, 16, 2, 3, 3), (2, 16, 2, 2, 4)])
def test_stream_refuses_a_block_of_another_grid(shape):
    stream = make_decoder().stream_decoder()
    with torch.no_grad():
        stream.decode(random_latents(frames=2))
        with pytest.raises(ValueError, match="new stream"):
            stream.decode(torch.zeros(shape))
        assert stream.num_latent_frames == 2
        assert stream.decode(random_latents(frames=1)).shape[2] == 4      # the stream still works


@pytest.mark.parametrize("changes,match", [
    (dict(time_growth=(2, 2, 2)), "time stride 4"),
    (dict(time_growth=(1, 1, 4, 1)), "3 time growth factors"),
    (dict(time_growth=(4, 1)), "3 time growth factors"),
    (dict(channels=(8, 8, 4)), "4 channel widths"),
    (dict(channels=(8, 8, 4, 4, 4)), "4 channel widths"),
    (dict(channels=(8, 8, 0, 4)), "4 channel widths"),
    (dict(memory_blocks=0), "invalid"),
    (dict(latent_clamp=0.0), "invalid"),
])
def test_bad_configs_are_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        TinyDecoderConfig(**changes)


def test_other_time_growth_orders_work():
    decoder = TinyDecoder(TinyDecoderConfig(channels=(8, 8, 4, 4), memory_blocks=1, time_growth=(4, 1, 1))).eval()
    with torch.no_grad():
        assert decoder.stream_decoder().decode(random_latents(frames=3)).shape == (2, 3, 9, 16, 24)


def test_named_configs():
    assert tiny_decoder_config("tiny").channels == (8, 8, 4, 4)
    assert tiny_decoder_config("wan2.1") == TinyDecoderConfig()
    with pytest.raises(ValueError, match=r"unknown tiny decoder config 'huge'.*'tiny'.*'wan2\.1'.*'world'"):
        tiny_decoder_config("huge")


# ---- checkpoints ---------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    decoder = make_decoder("tiny-memory2")
    root = save_tiny_decoder(decoder, tmp_path / "decoder")
    assert {p.name for p in root.iterdir()} == {DECODER_WEIGHTS, DECODER_CONFIG}
    assert json.loads((root / DECODER_CONFIG).read_text())["memory_blocks"] == 2
    loaded = load_tiny_decoder(root)
    assert loaded.config == decoder.config and not loaded.training
    for key, value in decoder.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, atol=0, rtol=0)
    z = random_latents()
    with torch.no_grad():
        torch.testing.assert_close(loaded.stream_decoder().decode(z), decoder.stream_decoder().decode(z),
                                   atol=0, rtol=0)
    half = load_tiny_decoder(root, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_load_needs_a_decoder_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=DECODER_CONFIG):
        load_tiny_decoder(tmp_path)
    (tmp_path / DECODER_CONFIG).write_text(json.dumps(asdict(tiny_decoder_config("tiny"))))
    with pytest.raises(CheckpointError, match="not found"):
        load_tiny_decoder(tmp_path)
    (tmp_path / DECODER_CONFIG).write_text(json.dumps({"channel": [8, 8, 4, 4]}))
    with pytest.raises(ValueError, match="unknown key"):
        load_tiny_decoder(tmp_path)


@pytest.mark.parametrize("change,match", [
    (lambda s: s.pop("conv_out.weight"), "1 missing keys: conv_out.weight"),
    (lambda s: s.update({"extra.weight": torch.zeros(1)}), "1 unexpected keys .*extra.weight"),
    (lambda s: s.update({"conv_in.weight": torch.zeros(8, 16, 1, 1)}), "mis-shaped keys: conv_in.weight"),
])
def test_broken_weights_are_refused(tmp_path, change, match):
    root = save_tiny_decoder(make_decoder(), tmp_path)
    state = load_file(root / DECODER_WEIGHTS)
    change(state)
    save_file(state, root / DECODER_WEIGHTS)
    with pytest.raises(CheckpointError, match=match):
        load_tiny_decoder(root)


def test_weights_of_another_config_are_refused(tmp_path):
    root = save_tiny_decoder(make_decoder(), tmp_path)
    (root / DECODER_CONFIG).write_text(json.dumps(asdict(CONFIGS["tiny-memory2"])))
    with pytest.raises(CheckpointError, match="missing keys"):
        load_tiny_decoder(root)


# ---- training: truncated backprop ----------------------------------------------------------
def test_detach_cuts_the_memory_from_the_graph():
    decoder = make_decoder().train()
    stream = decoder.stream_decoder()
    z = random_latents()
    frames = stream.decode_raw(z[:, :, :3])
    assert all(m is not None for m in stream.memory) and len(stream.memory) == 3
    assert any(m.requires_grad for m in stream.memory[1:])     # the first block's input is the latents'
    frames.square().mean().backward()
    stream.detach_()
    assert all(m is not None and not m.requires_grad and m.grad_fn is None for m in stream.memory)
    decoder.zero_grad()
    # without the detach this would backpropagate through the first block's freed graph
    stream.decode_raw(z[:, :, 3:6]).square().mean().backward()
    assert all(p.grad is not None for p in decoder.parameters())


def test_without_detach_the_memory_keeps_the_graph():
    decoder = make_decoder().train()
    stream = decoder.stream_decoder()
    z = random_latents()
    stream.decode_raw(z[:, :, :3]).square().mean().backward()
    with pytest.raises(RuntimeError, match="second time"):
        stream.decode_raw(z[:, :, 3:6]).square().mean().backward()


# ---- StreamingInference(decoder=) ----------------------------------------------------------
@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("release") / "tiny")


def start_image(height: int = 64, width: int = 64) -> np.ndarray:
    rows, cols = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    return ((np.stack([np.sin(6 * rows + c) * np.cos(4 * cols - c) for c in range(3)], -1) + 1)
            * 127.5).astype(np.uint8)


def make_pipeline(release, decoder=None) -> StreamingInference:
    loaded = load_release(release, dtype=torch.float32)
    return StreamingInference(loaded.dit, loaded.vae, loaded.text_encoder,
                              StreamConfig(height=64, width=64), decoder=decoder)


def test_streaming_inference_decodes_with_the_tiny_decoder(release):
    decoder = make_decoder()
    vae_pipeline, tiny_pipeline = make_pipeline(release), make_pipeline(release, decoder)
    assert tiny_pipeline.decoder is decoder and not decoder.training
    vae_blocks, tiny_blocks = (list(p.stream_generate(start_image(), "a red car", "w-12,d-8", seed=3))
                               for p in (vae_pipeline, tiny_pipeline))
    assert [len(b.frames) for b in vae_blocks] == [9, 12]
    assert [len(b.frames) for b in tiny_blocks] == [len(b.frames) for b in vae_blocks]
    for vae_block, tiny_block in zip(vae_blocks, tiny_blocks):
        assert tiny_block.frames.dtype == np.uint8 and tiny_block.frames.shape == vae_block.frames.shape
        assert tiny_block.first_frame == vae_block.first_frame
        np.testing.assert_array_equal(tiny_block.poses, vae_block.poses)
        diff = np.abs(tiny_block.frames.astype(int) - vae_block.frames.astype(int)).mean()
        assert diff > 1, "the tiny decoder's frames equal the VAE's: was it used?"


def test_streaming_inference_frames_are_the_tiny_decode_of_the_latents(release):
    decoder = make_decoder()
    pipeline = make_pipeline(release, decoder)
    session = pipeline.open_session(start_image(), "a red car", seed=1)
    reference = decoder.stream_decoder()
    try:
        for _ in range(2):
            _, num_actions = pipeline.actions_needed(session)
            plan = pipeline.plan(session, np.zeros((num_actions, 8), np.float32))
            latents = pipeline.denoise([session], [plan])[0]
            frames = pipeline.decode(session, latents)
            with torch.no_grad():
                expected = video_to_uint8(reference.decode(latents[None].clone())[0]).numpy()
            assert frames.shape == (plan.num_frames, 64, 64, 3)
            np.testing.assert_array_equal(frames, expected)
        assert session.decoder.num_latent_frames == 6
    finally:
        pipeline.close_session(session)
