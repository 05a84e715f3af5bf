"""The causal DiT's attention modes over one set of weights: bidirectional teacher,
block-causal and teacher-forcing training forwards, and KV-cached streaming."""
import pytest
import torch

from lingbot_rt.model import CacheConfig, CacheFullError
from tests.helpers import frames, make_inputs, make_model
from tests.reference_wan import (bidirectional_plan, block_causal_plan, reference_forward,
                                 sink_window_plan)

ATOL = 2e-5


def stream_clean(model, x, y, control, context, cache_cfg, slot_ids=None):
    """Commit every block with a t=0 pass; return the concatenated commit outputs."""
    b, block = x.shape[0], cache_cfg.block_frames
    cache = model.new_cache(cache_cfg, b, x.shape[3:])
    slots = list(range(b)) if slot_ids is None else slot_ids
    model.start_sessions(cache, slots, context)
    outs = []
    for start in range(0, x.shape[2], block):
        stop = min(start + block, x.shape[2])
        outs.append(model.forward_block(frames(x, start, stop), torch.zeros(b), cache, slots,
                                        y=frames(y, start, stop), control=frames(control, start, stop),
                                        commit=True))
    return torch.cat(outs, 2), cache


@torch.no_grad()
def test_bidirectional_matches_reference_maths():
    model = make_model()
    x, y, control, context = make_inputs(model, batch=2, frames=5, height=4, width=6)
    t = torch.tensor([700.0, 30.0])
    out = model(x, t, context, y, control)
    for i in range(2):
        ref = reference_forward(model, x[i], t[i].repeat(5), context[i], y[i], control[i], bidirectional_plan(5))
        torch.testing.assert_close(out[i].double(), ref, atol=ATOL, rtol=1e-4)


@torch.no_grad()
def test_block_causal_matches_reference_and_ignores_the_future():
    model = make_model(control_type="act")
    x, y, control, context = make_inputs(model, frames=7)
    t = torch.linspace(900, 100, 7)[None]   # per-frame timesteps (diffusion forcing)
    out = model(x, t, context, y, control, attention="block_causal", block_frames=3)
    ref = reference_forward(model, x[0], t[0], context[0], y[0], control[0], block_causal_plan(7, 3))
    torch.testing.assert_close(out[0].double(), ref, atol=ATOL, rtol=1e-4)
    x2 = x.clone()
    x2[:, :, 6:] += 1.0                       # change the last block only
    out2 = model(x2, t, context, y, control, attention="block_causal", block_frames=3)
    torch.testing.assert_close(out2[:, :, :6], out[:, :, :6], atol=1e-6, rtol=0)
    assert (out2[:, :, 6:] - out[:, :, 6:]).abs().max() > 1e-3
    bidirectional = model(x, t, context, y, control)
    assert (bidirectional[:, :, :6] - out[:, :, :6]).abs().max() > 1e-3


@torch.no_grad()
def test_per_frame_and_per_token_timesteps_agree():
    model = make_model()
    x, y, control, context = make_inputs(model, frames=3)
    t_frame = torch.tensor([[999.0, 500.0, 0.0]])
    t_token = t_frame.repeat_interleave(4, dim=1)   # 2x2 patches per 4x4 latent frame
    torch.testing.assert_close(model(x, t_frame, context, y, control), model(x, t_token, context, y, control))


@torch.no_grad()
def test_streaming_equals_block_causal_full_clip():
    model = make_model()
    x, y, control, context = make_inputs(model, batch=2, frames=9, height=4, width=6)
    full = model(x, torch.zeros(2), context, y, control, attention="block_causal")
    streamed, cache = stream_clean(model, x, y, control, context, CacheConfig.global_cache(9))
    torch.testing.assert_close(streamed, full, atol=ATOL, rtol=1e-5)
    assert cache.num_frames == [9, 9]


@torch.no_grad()
def test_denoising_passes_read_without_committing_and_match_teacher_forcing():
    model = make_model()
    x_clean, y, control, context = make_inputs(model, frames=9)
    x_noisy = torch.randn_like(x_clean)
    t = torch.tensor([[800.0] * 3 + [600.0] * 3 + [400.0] * 3])
    tf = model.forward_teacher_forcing(x_clean, x_noisy, t, context, y, control, block_frames=3)
    cache = model.new_cache(CacheConfig(), 1, (4, 4))
    model.start_sessions(cache, [0], context)
    for start in range(0, 9, 3):
        sl = slice(start, start + 3)
        noisy = model.forward_block(x_noisy[:, :, sl], t[:, sl], cache, y=y[:, :, sl], control=control[:, :, sl])
        again = model.forward_block(x_noisy[:, :, sl], t[:, sl], cache, y=y[:, :, sl], control=control[:, :, sl])
        torch.testing.assert_close(again, noisy, atol=0, rtol=0)   # the read changed nothing
        torch.testing.assert_close(noisy, tf[:, :, sl], atol=ATOL, rtol=1e-5)
        assert cache.num_frames == [start]
        model.forward_block(x_clean[:, :, sl], torch.zeros(1), cache, y=y[:, :, sl], control=control[:, :, sl],
                            commit=True)


@torch.no_grad()
def test_commit_from_last_denoising_pass():
    """commit=True on a noisy pass stores that pass's K/V: the context is then the block-causal
    forward of the noisy blocks at their timesteps."""
    model = make_model()
    x, y, control, context = make_inputs(model, frames=6)
    t = torch.tensor([[250.0] * 3 + [120.0] * 3])
    full = model(x, t, context, y, control, attention="block_causal")
    cache = model.new_cache(CacheConfig(), 1, (4, 4))
    model.start_sessions(cache, [0], context)
    outs = [model.forward_block(x[:, :, s:s + 3], t[:, s:s + 3], cache, y=y[:, :, s:s + 3],
                                control=control[:, :, s:s + 3], commit=True) for s in (0, 3)]
    torch.testing.assert_close(torch.cat(outs, 2), full, atol=ATOL, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("sink,window", [(3, 6), (2, 4), (0, 3)])
def test_sink_and_window_equal_explicit_reference(sink, window):
    model = make_model()
    num_frames = 18
    x, y, control, context = make_inputs(model, frames=num_frames, height=2, width=4)
    cfg = CacheConfig(block_frames=3, sink_frames=sink, window_frames=window)
    streamed, cache = stream_clean(model, x, y, control, context, cfg)
    ref = reference_forward(model, x[0], torch.zeros(num_frames), context[0], y[0], control[0],
                            sink_window_plan(num_frames, 3, sink, window))
    torch.testing.assert_close(streamed[0].double(), ref, atol=ATOL, rtol=1e-4)
    assert cache.k.shape[2] == (sink + window + 3) * 2  # the cache never grew: sink, window, the block's slots (2 tokens each)


@torch.no_grad()
@pytest.mark.parametrize("sink,window,block,full,pool", [(3, 6, 3, 3, (2, 2)), (2, 5, 2, 1, (1, 2)),
                                                         (0, 6, 3, 0, (2, 1)), (2, 6, 3, 3, (1, 1))])
def test_compressed_memory_equals_explicit_reference(sink, window, block, full, pool):
    """The sink and the window frames older than the latest `full` are attended through their
    K/V averaged over `pool` patches (the reference pools the roped keys with avg_pool2d):
    frames move into the pooled slots as they age, past several turns of both rings."""
    model = make_model()
    num_frames = 20
    x, y, control, context = make_inputs(model, frames=num_frames, height=4, width=4)
    cfg = CacheConfig(block_frames=block, sink_frames=sink, window_frames=window, full_frames=full, memory_pool=pool)
    streamed, cache = stream_clean(model, x, y, control, context, cfg)
    ref = reference_forward(model, x[0], torch.zeros(num_frames), context[0], y[0], control[0],
                            sink_window_plan(num_frames, block, sink, window, full), memory_pool=pool)
    torch.testing.assert_close(streamed[0].double(), ref, atol=ATOL, rtol=1e-4)
    pooled = 4 // (pool[0] * pool[1])                 # tokens of a pooled frame (2x2 grid)
    assert cache.k.shape[2] == (sink + window - full) * pooled + (full + block) * 4


@torch.no_grad()
def test_rollout_past_1024_latent_frames():
    """Attention sees cache-relative positions, so frame 1035 streams like frame 30: the output
    equals the sink+window reference whose positions never exceed sink + window + block - 1."""
    model = make_model()
    num_frames = 1035
    x, y, control, context = make_inputs(model, frames=num_frames, height=2, width=2)
    cfg = CacheConfig(block_frames=3, sink_frames=3, window_frames=15)
    streamed, cache = stream_clean(model, x, y, control, context, cfg)
    assert cache.num_frames == [num_frames]
    view = cache.view([0], 3)
    assert view.query_rotary.cos.shape[1] == 3   # 3 frames x 1 token
    assert len(cache.visible_frames(num_frames)) + 3 == 21 and view.attn_mask is None
    assert cache.sink_placed == [num_frames - 3 - 15 - 3]    # the sink sits right before the window
    plan = sink_window_plan(num_frames, 3, 3, 15)
    assert max(p for group in plan for p in group[1]) == 20
    ref = reference_forward(model, x[0], torch.zeros(num_frames), context[0], y[0], control[0], plan, max_positions=21)
    torch.testing.assert_close(streamed[0].double(), ref, atol=ATOL, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("compressed", [{}, {"full_frames": 0, "memory_pool": (2, 2)}])
def test_sessions_at_different_positions_batch_like_alone(compressed):
    model = make_model()
    x, y, control, context = make_inputs(model, batch=3, frames=12)
    cfg = CacheConfig(block_frames=3, sink_frames=3, window_frames=3, **compressed)
    batched = model.new_cache(cfg, capacity=5, latent_hw=(4, 4))
    slots = [4, 0, 2]
    model.start_sessions(batched, slots, context)
    # session i has committed 3*(i+1) frames before the shared step (session 2 has already rolled).
    alone_caches = []
    for i, slot in enumerate(slots):
        alone = model.new_cache(cfg, 1, (4, 4))
        model.start_sessions(alone, [0], context[i:i + 1])
        for start in range(0, 3 * (i + 1), 3):
            args = dict(y=frames(y[i:i + 1], start, start + 3), control=frames(control[i:i + 1], start, start + 3))
            for cache, row in ((batched, [slot]), (alone, [0])):
                model.forward_block(frames(x[i:i + 1], start, start + 3), torch.zeros(1), cache, row, commit=True, **args)
        alone_caches.append(alone)
    starts = [3, 6, 9]
    xb = torch.cat([x[i:i + 1, :, s:s + 3] for i, s in enumerate(starts)])
    yb = torch.cat([y[i:i + 1, :, s:s + 3] for i, s in enumerate(starts)])
    cb = torch.cat([control[i:i + 1, :, s:s + 3] for i, s in enumerate(starts)])
    t = torch.tensor([900.0, 500.0, 100.0])
    out = model.forward_block(xb, t, batched, slots, y=yb, control=cb, commit=True)
    assert [batched.num_frames[s] for s in slots] == [6, 9, 12]
    for i, cache in enumerate(alone_caches):
        alone = model.forward_block(xb[i:i + 1], t[i:i + 1], cache, y=yb[i:i + 1], control=cb[i:i + 1], commit=True)
        torch.testing.assert_close(out[i:i + 1], alone, atol=ATOL, rtol=1e-5)


@torch.no_grad()
def test_global_cache_refuses_to_overflow():
    model = make_model()
    x, y, control, context = make_inputs(model, frames=3)
    cache = model.new_cache(CacheConfig.global_cache(3), 1, (4, 4))
    model.start_sessions(cache, [0], context)
    model.forward_block(x, torch.zeros(1), cache, y=y, control=control, commit=True)
    with pytest.raises(CacheFullError, match="holds 3 latent frames"):
        model.forward_block(x, torch.zeros(1), cache, y=y, control=control)


def test_teacher_forcing_trains_on_cpu():
    model = make_model()
    x_clean, y, control, context = make_inputs(model, frames=6)
    out = model.forward_teacher_forcing(x_clean, torch.randn_like(x_clean), torch.tensor(500.0), context, y, control)
    out.square().mean().backward()
    assert model.blocks[0].self_attn.q.weight.grad.abs().sum() > 0


@torch.no_grad()
def test_bad_inputs_name_the_problem():
    model = make_model()
    x, y, control, context = make_inputs(model, frames=3)
    with pytest.raises(ValueError, match="in_dim=36"):
        model(x, torch.zeros(1), context, y[:, :4], control)
    with pytest.raises(ValueError, match="control signal must be"):
        model(x, torch.zeros(1), context, y, control[:, :10])
    with pytest.raises(ValueError, match="timesteps must be"):
        model(x, torch.zeros(1, 5), context, y, control)
    with pytest.raises(ValueError, match="text context"):
        model(x, torch.zeros(1), context[..., :7], y, control)
    cache = model.new_cache(CacheConfig(), 1, (4, 4))
    with pytest.raises(RuntimeError, match="start_sessions"):
        model.forward_block(x, torch.zeros(1), cache, y=y, control=control)
    model.start_sessions(cache, [0], context)
    with pytest.raises(ValueError, match="does not match the cache"):
        model.forward_block(x[..., :2], torch.zeros(1), cache, y=y[..., :2], control=control[..., :2])
