"""The same equivalences on a GPU, where block-causal attention runs compiled FlexAttention."""
import pytest
import torch

from lingbot_rt.model import CacheConfig
from tests.helpers import make_inputs, make_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@torch.no_grad()
@pytest.mark.parametrize("dtype,max_rel_err", [(torch.float32, 1e-5), (torch.bfloat16, 1e-3)])
def test_streaming_equals_block_causal_on_gpu(dtype, max_rel_err):
    model = make_model().cuda().to(dtype)
    x, y, control, context = (t.cuda() for t in make_inputs(model, batch=2, frames=9, height=16, width=16))
    full = model(x, torch.zeros(2, device="cuda"), context, y, control, attention="block_causal")
    cache = model.new_cache(CacheConfig.global_cache(9), 2, (16, 16))
    model.start_sessions(cache, [0, 1], context)
    outs = [model.forward_block(x[:, :, s:s + 3], torch.zeros(2, device="cuda"), cache, y=y[:, :, s:s + 3],
                                control=control[:, :, s:s + 3], commit=True) for s in (0, 3, 6)]
    streamed = torch.cat(outs, 2)
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()
    print(f"{dtype}: relative error streaming vs block-causal {rel(streamed, full):.2e}")
    assert rel(streamed, full) < max_rel_err
    bidirectional = model(x, torch.zeros(2, device="cuda"), context, y, control)
    assert rel(bidirectional[:, :, :6], full[:, :, :6]) > 2 * max_rel_err
