"""FP8 streaming attention (`model/fp8_attention.py`): the quantisation, the inputs it refuses,
where the DiT uses it (unmasked cache reads only), and on a GPU the kernel against the same
maths in PyTorch and the DiT's streaming output against SDPA's."""
import pytest
import torch
import torch.nn.functional as F

from lingbot_rt.model import CacheConfig
from lingbot_rt.model import dit as dit_module
from lingbot_rt.model import fp8_attention as fa
from tests.helpers import make_inputs, make_model
from tests.model.test_inference_transforms import stream

FP8_GPU = torch.cuda.is_available() and fa.available("cuda")


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_quantize_kv_layouts_and_round_trip():
    torch.manual_seed(0)
    k = torch.randn(2, 37, 3, 64) * torch.tensor([1.0, 50.0, 0.01])[None, None, :, None]
    v = torch.randn(2, 37, 3, 64)
    k8, v8, k_scale, v_scale = fa.quantize_kv(k, v)
    assert k8.dtype == v8.dtype == torch.float8_e4m3fn
    assert k8.shape == (2, 3, 37, 64) and v8.shape == (2, 3, 64, 37) and k_scale.shape == (2, 3)
    # each head's largest value lands on e4m3's largest, whatever the head's magnitude
    assert k8.float().abs().amax(dim=(2, 3)).eq(448).all() and v8.float().abs().amax(dim=(2, 3)).eq(448).all()
    k_back = (k8.float() * k_scale[:, :, None, None]).transpose(1, 2)
    v_back = (v8.float() * v_scale[:, :, None, None]).permute(0, 3, 1, 2)
    for back, x in ((k_back, k), (v_back, v)):
        normal = x.abs() > x.abs().amax(dim=(1, 3), keepdim=True) / 448 * 2 ** -6   # e4m3's normal range
        assert ((back - x).abs() <= x.abs() * 2 ** -4 + 1e-12)[normal].all()      # 3 mantissa bits
        assert rel(back, x) < 0.03


@pytest.mark.parametrize("q_shape, k_shape, grad, match", [
    ((1, 8, 2, 64), (1, 9, 2, 64), False, None),
    ((1, 8, 2, 48), (1, 9, 2, 48), False, "head sizes"),
    ((1, 8, 2, 64), (2, 9, 2, 64), False, "differ in batch"),
    ((1, 8, 2, 64), (1, 9, 4, 64), False, "differ in batch, heads"),
    ((8, 2, 64), (1, 9, 2, 64), False, "takes q"),
    ((1, 8, 2, 64), (1, 9, 2, 64), True, "inference only"),
])
def test_inputs_it_refuses(q_shape, k_shape, grad, match):
    q = torch.zeros(q_shape, requires_grad=grad)
    k = v = torch.zeros(k_shape)
    if match is None:
        fa.check_inputs(q, k, v)
        return
    with pytest.raises(ValueError, match=match):
        fa.check_inputs(q, k, v)


def test_use_fp8_attention_says_what_it_needs():
    with pytest.raises(ValueError, match="head sizes .* this model's is 16"):
        make_model().use_fp8_attention()                 # the tiny config: 4 heads of 16
    if not fa.available("cpu"):
        with pytest.raises(RuntimeError, match="FP8 tensor cores"):
            make_model(dim=128, num_heads=2).use_fp8_attention()


@torch.no_grad()
def test_dit_reads_in_fp8_only_where_unmasked(monkeypatch):
    """The flag sends each unmasked cache read (every row filled alike) to `fp8_attention`; a
    batch whose rows are filled to different levels keeps SDPA with its mask."""
    calls = []

    def spy(q, k, v):                     # exact attention in its place: the outputs must not move
        calls.append(k.shape[1])
        return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    monkeypatch.setattr(dit_module, "fp8_attention", spy)
    reference, flagged = make_model(), make_model()
    for block in flagged.blocks:
        block.self_attn.fp8_attention = True
    torch.testing.assert_close(stream(flagged), stream(reference), atol=1e-5, rtol=1e-5)
    # 4 blocks x 3 passes x 2 layers; keys: the filled prefix (3, 6 frames of 4 tokens), then all 9 slots
    assert calls == [12] * 6 + [24] * 6 + [36] * 12

    calls.clear()
    x, y, control, context = make_inputs(flagged, batch=2, frames=3)
    cache = flagged.new_cache(CacheConfig(block_frames=3, sink_frames=1, window_frames=5), 2, (4, 4))
    flagged.start_sessions(cache, [0, 1], context)
    flagged.forward_block(x[:1], torch.zeros(1), cache, [0], y=y[:1], control=control[:1], commit=True)
    assert len(calls) == 2
    flagged.forward_block(x, torch.full((2,), 900.0), cache, [0, 1], y=y, control=control)
    assert len(calls) == 2                # rows at 3 and 0 frames: masked, SDPA


def emulated(q, k, v):
    """The kernel's maths in PyTorch: q per row, k and v per head in e4m3, fp32 softmax,
    probabilities x 448 in e4m3 (against the row's final maximum, where the kernel uses the
    running one)."""
    k8, v8, k_scale, v_scale = fa.quantize_kv(k, v)
    q_scale = q.float().abs().amax(-1, keepdim=True) / 448
    q8 = (q.float() / q_scale).to(torch.float8_e4m3fn).float() * q_scale
    keys = k8.float() * k_scale[:, :, None, None]
    values = v8.float().transpose(2, 3) * v_scale[:, :, None, None]
    s = torch.einsum("bqhd,bhkd->bhqk", q8, keys) / q.shape[-1] ** 0.5
    p = torch.exp(s - s.amax(-1, keepdim=True)) * 448
    out = torch.einsum("bhqk,bhkd->bqhd", p.to(torch.float8_e4m3fn).float(), values)
    return out / p.sum(-1).transpose(1, 2)[..., None]


@pytest.mark.skipif(not FP8_GPU, reason="needs Triton and a GPU with FP8 tensor cores")
@pytest.mark.parametrize("lq, lk, heads, dim", [(77, 300, 3, 64), (130, 1000, 2, 128), (256, 4096, 4, 128)])
def test_kernel_matches_its_maths_on_gpu(lq, lk, heads, dim):
    torch.manual_seed(0)
    q = torch.randn(2, lq, heads, dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, lk, heads, dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(2, lk, heads, dim, device="cuda", dtype=torch.bfloat16) * 5
    out = fa.fp8_attention(q, k, v)
    exact = F.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    assert rel(out, emulated(q, k, v)) < 0.04            # same maths, running vs final row maximum
    assert rel(out, exact) < 0.08                        # e4m3's own error on random (diffuse) attention


@pytest.mark.skipif(not FP8_GPU, reason="needs Triton and a GPU with FP8 tensor cores")
@torch.no_grad()
def test_dit_streams_close_to_sdpa_on_gpu():
    reference = make_model(dim=128, num_heads=2).to("cuda", torch.bfloat16)
    quantised = make_model(dim=128, num_heads=2).to("cuda", torch.bfloat16)
    quantised.use_fp8_attention()
    assert 0 < rel(stream(quantised, 3), stream(reference, 3)) < 0.05
