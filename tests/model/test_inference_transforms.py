"""Inference transforms of a loaded DiT: fused QKV, compiled blocks, FP8 linears. Each must
leave the streaming output unchanged (FP8: within its quantisation error)."""
import pytest
import torch
import torch.nn as nn

from lingbot_rt.model import CacheConfig
from lingbot_rt.model.fp8 import Float8Linear, convert_to_fp8
from tests.helpers import frames, make_inputs, make_model


def stream(model, num_blocks=4):
    """Two denoising passes and a commit per block through a rolling cache; all outputs."""
    x, y, control, context = (t.to(model.device) for t in make_inputs(model, batch=2, frames=3 * num_blocks))
    cache = model.new_cache(CacheConfig(block_frames=3, sink_frames=1, window_frames=5), 2, (4, 4))
    model.start_sessions(cache, [0, 1], context)
    outs = []
    for start in range(0, x.shape[2], 3):
        block = dict(y=frames(y, start, start + 3), control=frames(control, start, start + 3))
        xb = frames(x, start, start + 3)
        for t in (947.0, 825.0):
            outs.append(model.forward_block(xb, torch.full((2,), t, device=model.device), cache, **block))
        outs.append(model.forward_block(xb, torch.zeros(2, device=model.device), cache, commit=True, **block))
    return torch.stack(outs)


@torch.no_grad()
def test_fused_qkv_streams_the_same():
    reference, fused = make_model(), make_model()
    fused.fuse_qkv()
    keys = fused.state_dict().keys()
    assert "blocks.0.self_attn.qkv_fused.weight" in keys and "blocks.0.self_attn.q.weight" not in keys
    torch.testing.assert_close(stream(fused), stream(reference), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_compiled_blocks_are_one_graph_for_every_layer():
    graphs = []

    def count_graphs(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    reference, compiled = make_model(), make_model()
    compiled.compile_blocks(backend=count_graphs, fullgraph=True, dynamic=False)
    torch.testing.assert_close(stream(compiled), stream(reference), atol=1e-5, rtol=1e-5)
    # 2 layers x 3 passes x 4 blocks ran; one graph per key length: the filled prefixes of the
    # 9 frame slots (sink 1 + window 5 + block 3) read by blocks 0 and 1 (3 and 6 frames), then all 9.
    assert len(graphs) == 3
    torch._dynamo.reset()


@torch.no_grad()
def test_fp8_linear_error_and_model_error():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32).to(torch.bfloat16)
    x = torch.randn(5, 7, 64, dtype=torch.bfloat16)
    fp8 = Float8Linear(linear)
    exact = linear.float()(x.float())
    rel = lambda a, b: ((a.float() - b).norm() / b.norm()).item()
    assert fp8(x).shape == (5, 7, 32) and fp8(x).dtype == torch.bfloat16
    assert rel(fp8(x), exact) < 0.06                      # e4m3: 3 mantissa bits
    reference, quantised = make_model().to(torch.bfloat16), make_model().to(torch.bfloat16)
    # 2 layers x (4 self-attn + 4 cross-attn + 2 FFN + 4 camera) linears
    assert convert_to_fp8(quantised.blocks) == 28
    assert 0 < rel(stream(quantised, 2), stream(reference, 2).float()) < 0.1


def test_fp8_refuses_odd_shapes():
    with pytest.raises(ValueError, match="divisible by 16, got 10 -> 32"):
        Float8Linear(nn.Linear(10, 32))
