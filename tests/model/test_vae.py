"""The Wan2.1 VAE: upstream keys and size, shapes, streaming decode = whole decode, checkpoints, errors."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from lingbot_rt.model.checkpoint import CheckpointError
from lingbot_rt.model.vae import CausalConv3d, Resample, VAEConfig, WanVAE, load_vae, save_vae, vae_config


def make_vae(seed: int = 0) -> WanVAE:
    torch.manual_seed(seed)
    vae = WanVAE(vae_config("tiny"))
    with torch.no_grad():   # gammas start at 1: perturb them so the norms' weights matter too
        for name, param in vae.named_parameters():
            if name.endswith("gamma"):
                param.add_(0.3 * torch.randn_like(param))
    return vae.eval()


def random_video(batch=1, frames=5, height=16, width=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, height, width, generator=g) * 2 - 1


def random_latents(batch=1, frames=7, height=2, width=3, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 16, frames, height, width, generator=g)


@pytest.fixture(scope="module")
def vae():
    return make_vae()


# --- the full config matches upstream ----------------------------------------------------

def _conv(c_in, c_out, kernel_volume):
    return c_in * c_out * kernel_volume + c_out


def _res(c_in, c_out):   # gamma, conv 3x3x3, gamma, conv 3x3x3, 1x1x1 shortcut when widths differ
    shortcut = _conv(c_in, c_out, 1) if c_in != c_out else 0
    return c_in + _conv(c_in, c_out, 27) + c_out + _conv(c_out, c_out, 27) + shortcut


def _attention(c):        # gamma, to_qkv 1x1, proj 1x1
    return c + _conv(c, 3 * c, 1) + _conv(c, c, 1)


def upstream_wan21_param_count():
    """Counted from upstream's `_video_vae(dim=96, z_dim=16, ...)` definition, layer by layer."""
    def down2d(c):
        return _conv(c, c, 9)

    def down3d(c):      # + time_conv (3,1,1) stride 2
        return _conv(c, c, 9) + _conv(c, c, 3)

    def up2d(c):
        return _conv(c, c // 2, 9)

    def up3d(c):        # + time_conv C -> 2C
        return _conv(c, c // 2, 9) + _conv(c, 2 * c, 3)

    middle = 2 * _res(384, 384) + _attention(384)
    encoder = (_conv(3, 96, 27)
               + 2 * _res(96, 96) + down2d(96)
               + _res(96, 192) + _res(192, 192) + down3d(192)
               + _res(192, 384) + _res(384, 384) + down3d(384)
               + 2 * _res(384, 384)
               + middle + 384 + _conv(384, 32, 27))
    decoder = (_conv(16, 384, 27) + middle
               + 3 * _res(384, 384) + up3d(384)
               + _res(192, 384) + 2 * _res(384, 384) + up3d(384)
               + 3 * _res(192, 192) + up2d(192)
               + 3 * _res(96, 96)
               + 96 + _conv(96, 3, 27))
    return encoder + _conv(32, 32, 1) + _conv(16, 16, 1) + decoder


def test_full_config_has_upstream_keys_shapes_and_size():
    with torch.device("meta"):
        vae = WanVAE(vae_config("wan2.1"))
    sd = vae.state_dict()
    assert vae.num_params() == upstream_wan21_param_count() == 126_892_531
    assert len(sd) == 194
    assert sd["encoder.conv1.weight"].shape == (96, 3, 3, 3, 3)
    assert sd["conv1.weight"].shape == (32, 32, 1, 1, 1)
    assert sd["conv2.weight"].shape == (16, 16, 1, 1, 1)
    assert sd["decoder.head.0.gamma"].shape == (96, 1, 1, 1)
    assert sd["decoder.head.2.weight"].shape == (3, 96, 3, 3, 3)
    assert sd["encoder.head.2.weight"].shape == (32, 384, 3, 3, 3)
    assert sd["encoder.middle.1.norm.gamma"].shape == (384, 1, 1)
    assert sd["encoder.middle.1.to_qkv.weight"].shape == (1152, 384, 1, 1)
    assert sd["encoder.downsamples.2.resample.1.weight"].shape == (96, 96, 3, 3)
    assert sd["encoder.downsamples.3.shortcut.weight"].shape == (192, 96, 1, 1, 1)
    assert sd["encoder.downsamples.0.residual.6.weight"].shape == (96, 96, 3, 3, 3)
    time_convs = {k: tuple(v.shape) for k, v in sd.items() if k.endswith("time_conv.weight")}
    assert time_convs == {"encoder.downsamples.5.time_conv.weight": (192, 192, 3, 1, 1),
                          "encoder.downsamples.8.time_conv.weight": (384, 384, 3, 1, 1),
                          "decoder.upsamples.3.time_conv.weight": (768, 384, 3, 1, 1),
                          "decoder.upsamples.7.time_conv.weight": (768, 384, 3, 1, 1)}
    assert sd["decoder.upsamples.11.resample.1.weight"].shape == (96, 192, 3, 3)
    assert "decoder.upsamples.11.time_conv.weight" not in sd      # the last upsampler is 2d
    assert all(p.is_meta for p in vae.parameters())


def test_named_configs_and_stride_validation():
    assert vae_config("small").dim == 32 and vae_config("tiny").z_dim == 16
    with pytest.raises(ValueError, match="known: .*tiny.*wan2.1"):
        vae_config("wan2.2")
    with pytest.raises(ValueError, match="stride"):
        VAEConfig(dim_mult=(1, 2, 4))
    with pytest.raises(ValueError, match="stride"):
        VAEConfig(temporal_downsample=(True, True, True))
    with pytest.raises(ValueError, match="z_dim=8"):
        VAEConfig(z_dim=8)


# --- encode / decode ---------------------------------------------------------------------

@pytest.mark.parametrize("num_frames", [1, 5, 9])
def test_encode_decode_shapes(vae, num_frames):
    video = random_video(batch=2, frames=num_frames, height=16, width=24)
    with torch.no_grad():
        z = vae.encode(video)
        assert z.shape == (2, 16, (num_frames - 1) // 4 + 1, 2, 3) and z.dtype == torch.float32
        out = vae.decode(z)
    assert out.shape == video.shape and out.dtype == torch.float32
    assert out.abs().max() <= 1.0 and out.std() > 0.05


def test_latents_are_normalised_with_the_wan21_statistics(vae):
    video = random_video()
    with torch.no_grad():
        z = vae.encode(video)
        shifted = WanVAE(VAEConfig(dim=8, dim_mult=(1, 2, 2, 2), latent_mean=(0.0,) * 16, latent_std=(1.0,) * 16))
        shifted.load_state_dict(vae.state_dict())
        mu = shifted.encode(video)
    mean = torch.tensor(vae.config.latent_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latent_std).view(1, 16, 1, 1, 1)
    torch.testing.assert_close(z, (mu - mean) / std, atol=1e-5, rtol=1e-5)


def test_encode_and_decode_are_causal(vae):
    """A prefix of the input gives a prefix of the output (time is padded on the left only)."""
    video, z = random_video(frames=9), random_latents(frames=4)
    with torch.no_grad():
        torch.testing.assert_close(vae.encode(video[:, :, :5]), vae.encode(video)[:, :, :2], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(vae.decode(z[:, :, :2]), vae.decode(z)[:, :, :5], atol=1e-5, rtol=1e-5)
        changed = z.clone()
        changed[:, :, 3] += 1.0
        assert not torch.allclose(vae.decode(changed)[:, :, 9:], vae.decode(z)[:, :, 9:])


def test_batch_rows_are_independent(vae):
    video = random_video(batch=3, frames=5)
    with torch.no_grad():
        z = vae.encode(video)
        torch.testing.assert_close(z[1:2], vae.encode(video[1:2]), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(vae.decode(z)[2:], vae.decode(z[2:]), atol=1e-5, rtol=1e-5)


# --- temporal resampling (upstream's first-chunk rules) ----------------------------------

def test_causal_conv_pads_time_on_the_left_and_streams_through_its_cache():
    torch.manual_seed(0)
    conv = CausalConv3d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 6, 5, 5)
    with torch.no_grad():
        whole = conv(x)
        changed = x.clone()
        changed[:, :, 3] += 1.0
        after_change = conv(changed)
        conv.cache_slot = 0
        cache = [None]
        chunked = torch.cat([conv.forward_cached(chunk, cache) for chunk in x.split([1, 1, 3, 1], dim=2)], 2)
    assert whole.shape == (2, 4, 6, 5, 5)
    torch.testing.assert_close(after_change[:, :, :3], whole[:, :, :3], atol=0, rtol=0)
    assert not torch.allclose(after_change[:, :, 3], whole[:, :, 3])
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-5)
    assert cache[0].shape == (2, 3, 2, 5, 5)


def test_upsample3d_passes_frame_0_then_interleaves_channel_halves():
    """Channel half 0 of `time_conv` becomes the earlier frame of each pair, half 1 the later."""
    up = Resample(4, "upsample3d")
    up.time_conv.cache_slot = 0
    with torch.no_grad():
        up.time_conv.weight.zero_()
        up.time_conv.bias.copy_(torch.tensor([0.0] * 4 + [1.0] * 4))
        up.resample[1].weight.zero_()
        up.resample[1].bias.zero_()
        for channel in range(2):          # the 2d conv keeps channels 0 and 1
            up.resample[1].weight[channel, channel, 1, 1] = 1.0
        x, cache = torch.randn(1, 4, 2, 2, 2), [None]
        first, second = up(x[:, :, :1], cache), up(x, cache)
    torch.testing.assert_close(first, x[:, :2, :1].repeat_interleave(2, 3).repeat_interleave(2, 4))
    assert second.shape == (1, 2, 4, 4, 4)
    expected_frames = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(1, 1, 4, 1, 1).expand(1, 2, 4, 4, 4)
    assert torch.equal(second, expected_frames)


def test_downsample3d_passes_frame_0_then_reads_the_last_frame_of_the_previous_chunk():
    down = Resample(4, "downsample3d")
    down.time_conv.cache_slot = 0
    with torch.no_grad():
        down.time_conv.weight.zero_()
        down.time_conv.bias.zero_()
        for channel in range(4):          # output = the first of the 3 frames under the kernel
            down.time_conv.weight[channel, channel, 0] = 1.0
        video, cache = torch.randn(1, 4, 5, 4, 4), [None]
        per_frame = torch.stack([down.resample(video[:, :, t]) for t in range(5)], 2)   # [1, 4, 5, 2, 2]
        first, second = down(video[:, :, :1], cache), down(video[:, :, 1:], cache)
    torch.testing.assert_close(first, per_frame[:, :, :1])
    torch.testing.assert_close(second, per_frame[:, :, [0, 2]])    # windows [f0 f1 f2], [f2 f3 f4]


@pytest.mark.parametrize("kernel, padding, stride", [((3, 3, 3), 1, 1), ((3, 1, 1), (1, 0, 0), 1),
                                                     ((1, 1, 1), 0, 1), ((3, 3, 3), 1, (1, 2, 2)),
                                                     ((3, 1, 1), 0, (2, 1, 1))])
def test_causal_conv_equals_conv3d_on_the_padded_input(kernel, padding, stride):
    """The CPU path folds time into channels (conv2d); it must compute F.conv3d exactly."""
    torch.manual_seed(0)
    conv = CausalConv3d(8, 12, kernel, stride=stride, padding=padding)
    x = torch.randn(2, 8, 5, 17, 19)
    past = torch.randn(2, 8, conv.time_pad, 17, 19) if conv.time_pad else None
    full = x if past is None else torch.cat([past, x], 2)
    want = torch.nn.functional.conv3d(torch.nn.functional.pad(full, (*conv.space_pad, 0, 0)), conv.weight,
                                      conv.bias, stride=conv.stride)
    torch.testing.assert_close(conv(x, past), want, atol=1e-5, rtol=1e-5)


def test_rms_norm_equals_l2_normalise_times_sqrt_c_and_gamma():
    from lingbot_rt.model.vae import RMSNorm
    norm = RMSNorm(6, 3)
    with torch.no_grad():
        norm.gamma.copy_(torch.rand(6, 1, 1, 1))
    x = torch.randn(2, 6, 3, 5, 7)
    want = torch.nn.functional.normalize(x, dim=1) * 6 ** 0.5 * norm.gamma
    torch.testing.assert_close(norm(x), want)


# --- streaming decode --------------------------------------------------------------------

@pytest.mark.parametrize("block_sizes", [(3, 3, 1), (1,) * 7, (2, 2, 2, 1), (2, 1, 3, 1)])
def test_streaming_decode_equals_whole_decode(vae, block_sizes):
    z = random_latents(batch=2, frames=sum(block_sizes))
    with torch.no_grad():
        whole = vae.decode(z)
        stream = vae.stream_decoder()
        pieces = [stream.decode(block) for block in z.split(block_sizes, dim=2)]
    assert [p.shape[2] for p in pieces] == [4 * n - 3 * (i == 0) for i, n in enumerate(block_sizes)]
    assert stream.num_latent_frames == sum(block_sizes)
    torch.testing.assert_close(torch.cat(pieces, 2), whole, atol=1e-6, rtol=1e-5)


def test_streaming_needs_the_cache(vae):
    """Decoding each block on a fresh stream is not the same: the test above can fail."""
    z = random_latents(frames=6)
    with torch.no_grad():
        whole = vae.decode(z)
        second_block_alone = vae.stream_decoder().decode(z[:, :, 3:])
    assert second_block_alone.shape[2] == 9
    assert not torch.allclose(second_block_alone[:, :, 1:], whole[:, :, 13:], atol=1e-3)


def test_interleaved_streams_do_not_share_state(vae):
    z_a, z_b = random_latents(frames=6, seed=3), random_latents(batch=2, frames=6, seed=4)
    with torch.no_grad():
        alone_a, alone_b = vae.decode(z_a), vae.decode(z_b)
        stream_a, stream_b = vae.stream_decoder(), vae.stream_decoder()
        out_a, out_b = [], []
        for start in (0, 3):
            out_a.append(stream_a.decode(z_a[:, :, start:start + 3]))
            out_b.append(stream_b.decode(z_b[:, :, start:start + 3]))
    torch.testing.assert_close(torch.cat(out_a, 2), alone_a, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat(out_b, 2), alone_b, atol=1e-6, rtol=1e-5)


def test_compiled_streams_equal_eager_streams():
    """`compile_streaming` traces the cache-list updates of both streams (torch.compile with the
    aot_eager backend: dynamo's capture without inductor's code generation, which takes minutes
    on this CPU; `benchmarks/vae_speed.py` times inductor on a GPU)."""
    eager, compiled = make_vae(), make_vae()
    compiled.compile_streaming(backend="aot_eager")
    z = random_latents(frames=9)
    video = torch.rand(1, 3, 13, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        outputs = []
        for model in (eager, compiled):
            decoder, encoder = model.stream_decoder(), model.stream_encoder()
            outputs.append([decoder.decode(z[:, :, i:i + 3]) for i in (0, 3, 6)]
                           + [encoder.encode(video[:, :, :5]), encoder.encode(video[:, :, 5:])])
    for want, got in zip(*outputs):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_stream_refuses_a_different_batch_or_grid(vae):
    stream = vae.stream_decoder()
    with torch.no_grad():
        stream.decode(random_latents(batch=2, frames=1))
        with pytest.raises(ValueError, match="new stream"):
            stream.decode(random_latents(batch=1, frames=1))
        with pytest.raises(ValueError, match="new stream"):
            stream.decode(random_latents(batch=2, frames=1, height=4))


# --- streaming encode --------------------------------------------------------------------

@pytest.mark.parametrize("chunk_frames", [(1, 4, 4, 8), (9, 4, 8), (1, 16), (5, 4, 4, 4, 4)])
def test_streaming_encode_equals_whole_encode(vae, chunk_frames):
    video = torch.rand(2, 3, sum(chunk_frames), 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        whole = vae.encode(video)
        stream = vae.stream_encoder()
        pieces = [stream.encode(chunk) for chunk in video.split(chunk_frames, dim=2)]
    assert [p.shape[2] for p in pieces] == [(n - (i == 0)) // 4 + (i == 0) for i, n in enumerate(chunk_frames)]
    torch.testing.assert_close(torch.cat(pieces, 2), whole, atol=1e-6, rtol=1e-5)


def test_encode_black_equals_encoding_black_frames_and_skips_fixed_steps(vae, monkeypatch):
    """The I2V condition's black frames: bitwise the latents `encode` gives, while the steps
    that reached their fixed point stop running; at the fixed point the latent repeats."""
    image = torch.rand(1, 3, 1, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    black = torch.full((1, 3, 4, 16, 16), -1.0)
    runs = [0] * len(vae.encoder.steps)

    def counted(index, run):
        def step(x, cache):
            runs[index] += 1
            return run(x, cache)
        return step

    with torch.no_grad():
        fast = vae.stream_encoder()
        fast.encode(image)
        with monkeypatch.context() as patch:
            patch.setattr(vae.encoder, "steps", [(counted(i, run), slots)
                                                 for i, (run, slots) in enumerate(vae.encoder.steps)])
            latents = []
            while not fast.at_fixed_point:
                latents.append(fast.encode_black())
                assert len(latents) < 40, "the tiny encoder should reach its fixed point within 40 latent frames"
            calls, runs_at_fixed_point = len(latents), list(runs)
            latents += [fast.encode_black() for _ in range(3)]
        plain = vae.stream_encoder()
        plain.encode(image)
        for latent in latents:
            assert torch.equal(latent, plain.encode(black))
    assert torch.equal(latents[-1], latents[calls - 1])                # the latent repeats
    assert runs[0] < calls / 4                                         # conv1 (full resolution) settles first
    assert runs == runs_at_fixed_point                                 # at the fixed point nothing runs
    assert sum(runs) < 0.6 * calls * len(runs)


def test_encode_black_needs_the_stream_started_and_encode_resumes_after_it(vae):
    with torch.no_grad():
        with pytest.raises(ValueError, match="encode its first frames"):
            vae.stream_encoder().encode_black()
        video = torch.rand(1, 3, 13, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
        video[:, :, 1:5] = -1.0
        stream = vae.stream_encoder()
        pieces = [stream.encode(video[:, :, :1]), stream.encode_black(), stream.encode(video[:, :, 5:])]
        torch.testing.assert_close(torch.cat(pieces, 2), vae.encode(video), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("chunks,match", [((4,), r"1 \+ 4k frames on the first call"),
                                          ((1, 5), "4k frames after the first call"),
                                          ((1, 2), "4k frames after the first call")])
def test_streaming_encode_refuses_misaligned_chunks(vae, chunks, match):
    stream = vae.stream_encoder()
    with torch.no_grad(), pytest.raises(ValueError, match=match):
        for n in chunks:
            stream.encode(torch.zeros(1, 3, n, 16, 16))


# --- bad inputs --------------------------------------------------------------------------

@pytest.mark.parametrize("shape,match", [((3, 5, 16, 16), r"\[B, 3, F, H, W\]"),
                                         ((1, 4, 5, 16, 16), r"\[B, 3, F, H, W\]"),
                                         ((1, 3, 4, 16, 16), "4n\\+1"),
                                         ((1, 3, 8, 16, 16), "4n\\+1"),
                                         ((1, 3, 5, 12, 16), "divisible by 8"),
                                         ((1, 3, 5, 16, 20), "divisible by 8")])
def test_encode_rejects_bad_video(vae, shape, match):
    with pytest.raises(ValueError, match=match):
        vae.encode(torch.zeros(shape))


@pytest.mark.parametrize("shape", [(16, 2, 2, 2), (1, 8, 2, 2, 2), (1, 16, 0, 2, 2)])
def test_decode_rejects_bad_latents(vae, shape):
    with pytest.raises(ValueError, match=r"\[B, 16, T, h, w\]"):
        vae.decode(torch.zeros(shape))


# --- checkpoints -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_checkpoint_round_trip(vae, tmp_path, fmt):
    if fmt == "safetensors":
        path = save_vae(vae, tmp_path / "vae.safetensors")
    else:   # upstream's Wan2.1_VAE.pth is a plain state dict
        path = tmp_path / "Wan2.1_VAE.pth"
        torch.save(vae.state_dict(), path)
    loaded = load_vae(path, config="tiny")
    for key, value in vae.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, atol=0, rtol=0)
    z = random_latents(frames=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(z), vae.decode(z), atol=0, rtol=0)


def test_load_casts_to_the_requested_dtype(vae, tmp_path):
    path = save_vae(vae, tmp_path / "vae.safetensors")
    loaded = load_vae(path, config="tiny", dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        out = loaded.decode(random_latents(frames=2))
    assert out.dtype == torch.float32 and out.shape == (1, 3, 5, 16, 24)


def _broken_checkpoint(vae, tmp_path, change):
    state = {k: v.clone() for k, v in vae.state_dict().items()}
    change(state)
    path = tmp_path / "broken.safetensors"
    save_file(state, path)
    return path


@pytest.mark.parametrize("change,match", [
    (lambda s: s.pop("decoder.head.2.weight"), "1 missing keys: decoder.head.2.weight"),
    (lambda s: s.update({"encoder.conv1.weight": torch.zeros(8, 3, 3, 3, 1)}),
     r"mis-shaped keys: encoder.conv1.weight "
     r"\(broken.safetensors: stored \[8, 3, 3, 3, 1\], model \[8, 3, 3, 3, 3\]\)"),
    (lambda s: s.update({"decoder.extra.weight": torch.zeros(1)}), "1 unexpected keys .*decoder.extra.weight"),
])
def test_broken_checkpoint_names_the_file_and_keys(vae, tmp_path, change, match):
    path = _broken_checkpoint(vae, tmp_path, change)
    with pytest.raises(CheckpointError, match=match) as info:
        load_vae(path, config="tiny")
    assert str(path) in str(info.value)


def test_checkpoint_for_another_config_or_file_is_refused(vae, tmp_path):
    path = save_vae(vae, tmp_path / "vae.safetensors")
    assert set(load_file(path)) == set(vae.state_dict())
    with pytest.raises(CheckpointError, match="mis-shaped keys"):
        load_vae(path, config="wan2.1")
    with pytest.raises(CheckpointError, match="not found"):
        load_vae(tmp_path / "missing.pth", config="tiny")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        load_vae(tmp_path / "garbage.safetensors", config="tiny")
    with pytest.raises(ValueError, match="name the file"):
        save_vae(vae, tmp_path / "vae.bin")
