"""The few-step schedule and the one block loop."""
import pytest
import torch

from lingbot_rt.model import CacheConfig
from lingbot_rt.model.rollout import generate_block
from lingbot_rt.model.sampler import FewStepSchedule
from tests.helpers import make_inputs, make_model


def test_fast_schedule_matches_upstream_timesteps():
    schedule = FewStepSchedule.from_indices()
    assert schedule.timesteps == (999.0, 978.0, 947.0, 825.0)
    assert schedule.sigmas == pytest.approx((0.99990, 0.97855, 0.94704, 0.82519), abs=1e-5)
    assert FewStepSchedule.from_indices(shift=5.0).timesteps == (999.0, 957.0, 899.0, 702.0)
    with pytest.raises(ValueError, match="decrease"):
        FewStepSchedule((0.5, 0.9), (500.0, 900.0))
    with pytest.raises(ValueError, match="must lie in"):
        FewStepSchedule.from_indices(indices=(0, 1000))


class CountingModel:
    """Wraps the model to count forwards and record which passes commit."""

    def __init__(self, model):
        self.model, self.commits = model, []

    def forward_block(self, *args, commit=False, **kwargs):
        self.commits.append(commit)
        return self.model.forward_block(*args, commit=commit, **kwargs)


@torch.no_grad()
def test_block_loop_restates_the_sampler_and_commits_once():
    model = make_model()
    x, y, control, context = make_inputs(model, frames=3)
    schedule = FewStepSchedule.from_indices()
    cache = model.new_cache(CacheConfig(), 1, (4, 4))
    model.start_sessions(cache, [0], context)
    counting = CountingModel(model)
    out = generate_block(counting, cache, [0], x, schedule, y=y, control=control,
                         generator=torch.Generator().manual_seed(7))
    assert counting.commits == [False] * 4 + [True]
    assert cache.num_frames == [3]
    # The same maths by hand, on a fresh cache.
    ref_cache = model.new_cache(CacheConfig(), 1, (4, 4))
    model.start_sessions(ref_cache, [0], context)
    g = torch.Generator().manual_seed(7)
    xt = x
    for k, (sigma, t) in enumerate(zip(schedule.sigmas, schedule.timesteps)):
        x0 = xt - sigma * model.forward_block(xt, torch.tensor([t]), ref_cache, y=y, control=control)
        if k < 3:
            xt = (1 - schedule.sigmas[k + 1]) * x0 + schedule.sigmas[k + 1] * torch.randn(x.shape, generator=g)
    torch.testing.assert_close(out, x0)


@torch.no_grad()
def test_last_step_commit_skips_the_clean_pass_and_is_deterministic():
    model = make_model()
    x, y, control, context = make_inputs(model, frames=3)
    outs = []
    for _ in range(2):
        cache = model.new_cache(CacheConfig(), 1, (4, 4))
        model.start_sessions(cache, [0], context)
        counting = CountingModel(model)
        outs.append(generate_block(counting, cache, [0], x, FewStepSchedule.from_indices(), y=y, control=control,
                                   generator=torch.Generator().manual_seed(3), commit="last_step"))
        assert counting.commits == [False, False, False, True] and cache.num_frames == [3]
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    with pytest.raises(ValueError, match="commit must be"):
        generate_block(model, cache, [0], x, FewStepSchedule.from_indices(), commit="never")


@torch.no_grad()
def test_action_guidance_is_cfg_on_the_block_control_with_the_history_kept():
    model = make_model()
    x, y, control, context = make_inputs(model, frames=3)
    schedule, guidance = FewStepSchedule.from_indices(), 0.7
    caches = []
    for _ in range(2):      # a committed first block, so the guided block reads a history
        cache = model.new_cache(CacheConfig(), 1, (4, 4))
        model.start_sessions(cache, [0], context)
        generate_block(model, cache, [0], x, schedule, y=y, control=control, generator=torch.Generator().manual_seed(1))
        caches.append(cache)
    counting = CountingModel(model)
    out = generate_block(counting, caches[0], [0], x, schedule, y=y, control=-control,
                         generator=torch.Generator().manual_seed(7), action_guidance=guidance)
    assert counting.commits == [False] * 8 + [True] and caches[0].num_frames == [6]
    g, xt, null = torch.Generator().manual_seed(7), x, torch.zeros_like(control)
    for k, (sigma, t) in enumerate(zip(schedule.sigmas, schedule.timesteps)):
        v = model.forward_block(xt, torch.tensor([t]), caches[1], y=y, control=-control)
        v_null = model.forward_block(xt, torch.tensor([t]), caches[1], y=y, control=null)
        x0 = xt - sigma * (v + guidance * (v - v_null))
        if k < 3:
            xt = (1 - schedule.sigmas[k + 1]) * x0 + schedule.sigmas[k + 1] * torch.randn(x.shape, generator=g)
    torch.testing.assert_close(out, x0)
    unguided = generate_block(model, caches[1], [0], x, schedule, y=y, control=-control,
                              generator=torch.Generator().manual_seed(7))
    assert (out - unguided).abs().max() > 1e-3          # the guidance changed the block
    with pytest.raises(ValueError, match="action_guidance must be >= 0"):
        generate_block(model, caches[1], [0], x, schedule, y=y, control=control, action_guidance=-1.0)
    with pytest.raises(ValueError, match="needs the block's control"):
        generate_block(model, caches[1], [0], x, schedule, y=y, action_guidance=1.0)
