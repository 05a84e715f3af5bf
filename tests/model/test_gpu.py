"""The same equivalences on a GPU, where block-causal attention runs compiled FlexAttention."""
import pytest
import torch

from lingbot_rt.model import CacheConfig
from tests.helpers import make_inputs, make_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@torch.no_grad()
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.bfloat16, 0.15)])
def test_streaming_equals_block_causal_on_gpu(dtype, atol):
    model = make_model().cuda().to(dtype)
    x, y, control, context = (t.cuda() for t in make_inputs(model, batch=2, frames=9, height=16, width=16))
    full = model(x, torch.zeros(2, device="cuda"), context, y, control, attention="block_causal")
    cache = model.new_cache(CacheConfig.global_cache(9), 2, (16, 16))
    model.start_sessions(cache, [0, 1], context)
    outs = [model.forward_block(x[:, :, s:s + 3], torch.zeros(2, device="cuda"), cache, y=y[:, :, s:s + 3],
                                control=control[:, :, s:s + 3], commit=True) for s in (0, 3, 6)]
    torch.testing.assert_close(torch.cat(outs, 2), full, atol=atol, rtol=0.05)
    bidirectional = model(x, torch.zeros(2, device="cuda"), context, y, control)
    assert (bidirectional[:, :, :6] - full[:, :, :6]).abs().max() > atol
