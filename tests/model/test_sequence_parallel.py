"""Ulysses sequence parallelism on CPU: N gloo processes (torch.multiprocessing) each hold
1/N of the tokens and 1/N of the attention heads; every rank's result must equal the
single-process model's, for the all-to-all layout itself, the whole-clip forwards and
KV-cached streaming past the rolling window."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lingbot_rt.model import CacheConfig
from lingbot_rt.model.sequence_parallel import SequenceParallel
from tests.helpers import frames, make_inputs, make_model

TOL = dict(atol=1e-5, rtol=1e-5)


def _exchange_layout(sp: SequenceParallel):
    full = torch.randn(2, 8 * sp.world_size, 4, 3, generator=torch.Generator().manual_seed(0))
    local = sp.shard(full)
    heads = 4 // sp.world_size
    by_heads = sp.seq_to_heads(local)
    assert torch.equal(by_heads, full[:, :, sp.rank * heads:(sp.rank + 1) * heads])
    assert torch.equal(sp.heads_to_seq(by_heads), local)
    assert torch.equal(sp.gather(local), full)


def _whole_clip(sp: SequenceParallel):
    reference, sharded = make_model(), make_model()
    sharded.enable_sequence_parallel(sp)
    x, y, control, context = make_inputs(reference, batch=2, frames=6)
    t = torch.tensor([700.0, 30.0])
    for attention in ("bidirectional", "block_causal"):
        torch.testing.assert_close(sharded(x, t, context, y, control, attention=attention),
                                   reference(x, t, context, y, control, attention=attention), **TOL)
    t_noisy = torch.linspace(900, 100, 6)[None].expand(2, -1)
    torch.testing.assert_close(sharded.forward_teacher_forcing(x, x + 1, t_noisy, context, y, control),
                               reference.forward_teacher_forcing(x, x + 1, t_noisy, context, y, control), **TOL)


def _streaming(sp: SequenceParallel):
    reference, sharded = make_model(), make_model()
    sharded.enable_sequence_parallel(sp)
    x, y, control, context = make_inputs(reference, batch=2, frames=12)
    cache_cfg = CacheConfig(block_frames=3, sink_frames=1, window_frames=5)   # wraps after 2 blocks
    caches = []
    for model in (reference, sharded):
        cache = model.new_cache(cache_cfg, 3, (4, 4))
        model.start_sessions(cache, [2, 0], context)
        caches.append(cache)
    assert caches[1].k.shape[-2] == caches[0].k.shape[-2] // sp.world_size
    for start in range(0, 12, 3):
        block = dict(y=frames(y, start, start + 3), control=frames(control, start, start + 3))
        xb = frames(x, start, start + 3)
        noisy = [m.forward_block(xb, torch.tensor([947.0, 500.0]), c, [2, 0], **block)
                 for m, c in zip((reference, sharded), caches)]
        torch.testing.assert_close(noisy[1], noisy[0], **TOL)
        clean = [m.forward_block(xb, torch.zeros(2), c, [2, 0], commit=True, **block)
                 for m, c in zip((reference, sharded), caches)]
        torch.testing.assert_close(clean[1], clean[0], **TOL)


def _refusals(sp: SequenceParallel):
    with pytest.raises(ValueError, match="num_heads 3 is not divisible"):
        make_model(num_heads=3, dim=48).enable_sequence_parallel(sp)
    with pytest.raises(ValueError, match="sequence length 5 is not divisible"):
        sp.shard(torch.zeros(1, 5, 2))


def _worker(rank: int, world_size: int, init_file: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        sp = SequenceParallel()
        with torch.no_grad():
            for check in (_exchange_layout, _whole_clip, _streaming, _refusals):
                check(sp)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world_size", [2, 4])
def test_sequence_parallel_equals_one_process(tmp_path, world_size):
    # A failed assertion in any rank fails the spawn (ProcessRaisedException with its traceback).
    mp.spawn(_worker, args=(world_size, str(tmp_path / "init")), nprocs=world_size)


def test_needs_a_process_group():
    with pytest.raises(RuntimeError, match="init_process_group first"):
        SequenceParallel()
