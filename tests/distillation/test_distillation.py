"""ODE pairs, causal initialisation, the Self-Forcing rollout and DMD on tiny random models (CPU)."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from lingbot_rt.config_io import config_from_dict
from lingbot_rt.distillation.causal_init import ode_regression_loss, teacher_forcing_loss, train_causal_init
from lingbot_rt.distillation.config import (CausalInitConfig, DMDConfig, ODEPairsConfig, StudentSchedule,
                                            save_student_schedule, student_schedule)
from lingbot_rt.distillation.dmd import Conditions, dmd_loss
from lingbot_rt.distillation.ode_pairs import (
    META,
    PairsError,
    check_pairs_fit,
    generate_ode_pairs,
    load_ode_pairs,
    shard_name,
)
from lingbot_rt.distillation.self_forcing import student_rollout
from lingbot_rt.distillation.trainer import CHECKPOINT, DMDTrainer
from lingbot_rt.model.rollout import generate_block
from lingbot_rt.model.sampler import euler_trajectory

from .helpers import LATENT_HW, NUM_FRAMES, SCHEDULE, save_tiny, synthetic_clips, tiny_model

# the sink and the window frames before the latest block's pooled 2x2 -> 1 token (`CacheConfig`)
COMPRESSED = dataclasses.replace(SCHEDULE, full_frames=0, memory_pool=(2, 2))

PAIRS = ODEPairsConfig(num_pairs=5, shard_size=2, batch_size=2, student=SCHEDULE)


@pytest.fixture(scope="module")
def data():
    return synthetic_clips(4)


@pytest.fixture(scope="module")
def teacher():
    return tiny_model(1).eval()


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory, teacher, data):
    return generate_ode_pairs(teacher, data, tmp_path_factory.mktemp("pairs"), PAIRS, progress=False)


# ---- the student's schedule ---------------------------------------------------------------------
def test_student_steps_are_points_of_the_teacher_grid():
    student = StudentSchedule()
    grid = student.grid()
    assert student.grid_indices() == (0, 12, 24, 36) and len(grid) == 49 and grid[-1] == 0.0
    assert [grid[i] for i in student.grid_indices()] == pytest.approx(student.schedule().sigmas, abs=1e-12)
    assert student.schedule().sigmas == pytest.approx((0.9997, 0.8996, 0.7496, 0.4997), abs=1e-4)


def test_a_student_directory_records_its_schedule(tmp_path):
    assert student_schedule(tmp_path) == StudentSchedule()           # none recorded: the default
    save_student_schedule(COMPRESSED, tmp_path)
    assert student_schedule(tmp_path) == COMPRESSED and student_schedule(tmp_path).cache().memory_pool == (2, 2)
    (tmp_path / "student_schedule.json").write_text(json.dumps({"window": 3}))
    with pytest.raises(ValueError, match=r"student_schedule.json: unknown key\(s\) \['window'\]"):
        student_schedule(tmp_path)


def test_schedule_off_the_grid_and_unknown_keys_are_refused():
    with pytest.raises(ValueError, match="multiples of 1000 / teacher_steps"):
        StudentSchedule(indices=(0, 260))
    with pytest.raises(ValueError, match="action_guidance must be >= 0"):
        StudentSchedule(action_guidance=-0.5)
    with pytest.raises(ValueError, match="unknown key"):
        config_from_dict(DMDConfig, {"student": {"indices": [0, 250], "stride": 3}})
    assert config_from_dict(DMDConfig, {"student": {"indices": [0, 500]}}).student.indices == (0, 500)


def test_euler_trajectory_records_the_points_a_shorter_integration_ends_at(teacher, data):
    sigmas = SCHEDULE.grid()
    noise = torch.randn(2, 16, NUM_FRAMES, *LATENT_HW, generator=torch.Generator().manual_seed(3))
    args = (data.context[:2].float(), data.y[:2].float(), data.control[:2].float())
    with torch.no_grad():
        recorded = euler_trajectory(teacher, noise, *args, sigmas, record=(0, 2))
        partial = euler_trajectory(teacher, noise, *args, sigmas[:3])[-1]     # integrate down to sigmas[2]
    assert len(recorded) == 3
    assert torch.equal(recorded[0], noise)
    torch.testing.assert_close(recorded[1], partial)
    with pytest.raises(ValueError, match="record indices"):
        euler_trajectory(teacher, noise, *args, sigmas, record=(len(sigmas) - 1,))


# ---- ODE pairs ----------------------------------------------------------------------------------
def test_ode_pairs_have_the_documented_format(pairs_dir, teacher, data):
    meta = json.loads((pairs_dir / META).read_text())
    assert meta["format"] == "lingbot-rt/ode-pairs/v1" and meta["num_pairs"] == 5
    assert meta["sigmas"] == list(SCHEDULE.schedule().sigmas) and meta["grid_indices"] == [0, 2]
    assert meta["latent_shape"] == [16, NUM_FRAMES, *LATENT_HW] and meta["data"] == {"clips": 4}
    assert sorted(p.name for p in pairs_dir.glob("shard_*")) == [shard_name(i) for i in range(3)]
    pairs = load_ode_pairs(pairs_dir)
    assert pairs.xt.shape == (5, 2, 16, NUM_FRAMES, *LATENT_HW) and pairs.xt.dtype == torch.bfloat16
    assert pairs.x0.shape == (5, 16, NUM_FRAMES, *LATENT_HW) and pairs.x0.dtype == torch.bfloat16
    assert pairs.clip_index.tolist() == [0, 1, 2, 3, 0]
    # pair 4 (shard 2) re-derived: its noise, then the guided teacher ODE on clip 0's condition
    generator = torch.Generator().manual_seed(2)
    noise = torch.randn(1, 16, NUM_FRAMES, *LATENT_HW, generator=generator)
    with torch.no_grad():
        *points, end = euler_trajectory(teacher, noise, data.context[:1], data.y[:1], data.control[:1],
                                        SCHEDULE.grid(), record=(0, 2), guidance=SCHEDULE.guidance,
                                        uncond_context=data.empty_context[None],
                                        uncond_control=torch.zeros_like(data.control[:1]))
    assert torch.equal(pairs.xt[4, 0], noise[0].to(torch.bfloat16))
    assert torch.equal(pairs.xt[4, 1], points[1][0].to(torch.bfloat16))
    assert torch.equal(pairs.x0[4], end[0].to(torch.bfloat16))
    check_pairs_fit(pairs, data, SCHEDULE.schedule().sigmas)
    with pytest.raises(PairsError, match="from 4 clips, the data has 3"):
        check_pairs_fit(pairs, synthetic_clips(3), SCHEDULE.schedule().sigmas)
    with pytest.raises(PairsError, match="sigmas"):
        check_pairs_fit(pairs, data, (1.0, 0.5))


def test_ode_pairs_resume_to_the_same_files(pairs_dir, teacher, data, tmp_path):
    import shutil
    copy = tmp_path / "pairs"
    shutil.copytree(pairs_dir, copy)
    (copy / shard_name(1)).unlink()
    with pytest.raises(PairsError, match="incomplete: 1 of 3 shards missing"):
        load_ode_pairs(copy)
    generate_ode_pairs(teacher, data, copy, PAIRS, progress=False)
    for i in range(3):
        assert (copy / shard_name(i)).read_bytes() == (pairs_dir / shard_name(i)).read_bytes()
    with pytest.raises(PairsError, match="other settings"):
        generate_ode_pairs(teacher, data, copy, ODEPairsConfig(num_pairs=6, shard_size=2, student=SCHEDULE),
                           progress=False)
    with pytest.raises(PairsError, match="meta.json is missing"):
        load_ode_pairs(tmp_path)


# ---- the rollout ----------------------------------------------------------------------------------
def _rollout(model, data, exit_step, seed=0, schedule=SCHEDULE):
    return student_rollout(model, data.context[:2].float(), data.y[:2].float(), data.control[:2].float(),
                           schedule.schedule(), schedule.cache(), torch.Generator().manual_seed(seed),
                           exit_step=exit_step)


def test_rollout_exit_at_the_last_step_is_the_inference_rollout(data):
    model = tiny_model(2).eval()
    with torch.no_grad():
        full, last = _rollout(model, data, None), _rollout(model, data, len(SCHEDULE.indices) - 1)
    torch.testing.assert_close(full, last, rtol=0, atol=0)
    assert full.shape == (2, 16, NUM_FRAMES, *LATENT_HW)


@pytest.mark.parametrize("schedule", [SCHEDULE, COMPRESSED], ids=["full", "compressed"])
def test_rollout_with_gradient_backpropagates_and_matches_the_rollout_without(data, schedule):
    model = tiny_model(2)
    x = _rollout(model, data, exit_step=0, schedule=schedule)
    assert x.requires_grad
    x.square().mean().backward()            # the cache writes between blocks must not break backward
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    with torch.no_grad():
        reference = _rollout(model, data, exit_step=0, schedule=schedule)
    torch.testing.assert_close(x.detach(), reference)


def test_generate_block_refuses_a_bad_exit_step():
    model = tiny_model(2)
    cache = model.new_cache(SCHEDULE.cache(), 1, LATENT_HW)
    model.start_sessions(cache, [0], torch.zeros(1, model.cfg.text_len, model.cfg.text_dim))
    noise = torch.randn(1, 16, 3, *LATENT_HW)
    with pytest.raises(ValueError, match="exit_step must be in"):
        generate_block(model, cache, [0], noise, SCHEDULE.schedule(), exit_step=2)
    with pytest.raises(ValueError, match="exit_step must be in"):
        generate_block(model, cache, [0], noise, SCHEDULE.schedule(), commit="last_step", exit_step=0)


# ---- losses ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("first_frame", [0, 1])
def test_dmd_surrogate_gradient_is_the_normalised_score_difference(teacher, data, first_frame):
    """Over the frames the loss covers (all, or a long-horizon window's after its first); none
    reaches the frames before."""
    critic = tiny_model(3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, NUM_FRAMES, *LATENT_HW, generator=g, requires_grad=True)
    sigma, noise, index = torch.tensor([0.3, 0.8]), torch.randn(x.shape, generator=g), torch.tensor([0, 2])
    loss, stats = dmd_loss(x, teacher, critic, Conditions.of_clips(data, index), sigma, noise, guidance=2.0,
                           first_frame=first_frame)
    loss.backward()
    from lingbot_rt.distillation.dmd import guided_x0, noised, predict_x0
    with torch.no_grad():
        x_t = noised(x, sigma, noise)
        real = guided_x0(teacher, x_t, sigma, Conditions.of_clips(data, index), 2.0)[:, :, first_frame:]
        fake = predict_x0(critic, x_t, sigma, data.context[index], data.y[index], data.control[index])[:, :, first_frame:]
        covered = x[:, :, first_frame:]
        weight = (covered - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    torch.testing.assert_close(x.grad[:, :, first_frame:] * covered.numel(), (fake - real) / weight,
                               rtol=1e-4, atol=1e-5)
    assert torch.count_nonzero(x.grad[:, :, :first_frame]) == 0
    assert stats["real_fake_gap"] > 0


def test_causal_init_losses_are_finite_and_a_step_lowers_them(pairs_dir, data):
    pairs = load_ode_pairs(pairs_dir)
    for name in ("ode", "teacher_forcing"):
        model = tiny_model(1)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses = []
        for _ in range(2):
            g = torch.Generator().manual_seed(0)               # the same batch and draws both times
            index = torch.tensor([0, 1, 4])
            loss = (ode_regression_loss(model, data, pairs, index, 3, g) if name == "ode"
                    else teacher_forcing_loss(model, data, index[:2], 3, 3.0, g))
            losses.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert all(torch.isfinite(torch.tensor(losses))) and losses[1] < losses[0], (name, losses)


def test_causal_init_run_writes_a_loadable_student(pairs_dir, data, tmp_path):
    save_tiny(tmp_path / "teacher", 1)
    run = train_causal_init(tmp_path / "teacher", data, load_ode_pairs(pairs_dir), tmp_path / "init",
                            CausalInitConfig(batch_size=2, steps=2, log_every=1, student=SCHEDULE))
    from lingbot_rt.model.checkpoint import load_model
    assert load_model(run / "student").cfg == tiny_model(0).cfg
    assert student_schedule(run / "student") == SCHEDULE        # what it streams with travels with it
    assert len((run / "log.jsonl").read_text().splitlines()) == 2
    with pytest.raises(ValueError, match="needs ODE pairs"):
        train_causal_init(tmp_path / "teacher", data, None, tmp_path / "x", CausalInitConfig(student=SCHEDULE))


# ---- DMD ---------------------------------------------------------------------------------------------
DMD = DMDConfig(batch_size=2, steps=4, update_ratio=2, log_every=1, save_every=2, student=SCHEDULE)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return save_tiny(root / "student", 2), save_tiny(root / "teacher", 1)


@pytest.mark.parametrize("schedule", [SCHEDULE, COMPRESSED], ids=["full", "compressed"])
def test_one_dmd_step_changes_the_student_and_the_critic(dirs, data, tmp_path, schedule):
    trainer = DMDTrainer(*dirs, data, tmp_path / "dmd", dataclasses.replace(DMD, student=schedule))
    student = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    critic = {k: v.clone() for k, v in trainer.critic.state_dict().items()}
    record = trainer.train_step()                   # step 0: a generator step and a critic step
    assert {"generator_loss", "critic_loss", "dmd_grad_norm"} <= record.keys()
    assert all(torch.isfinite(torch.tensor(record[k])) for k in ("generator_loss", "critic_loss"))
    assert any(not torch.equal(v, trainer.student.state_dict()[k]) for k, v in student.items())
    assert any(not torch.equal(v, trainer.critic.state_dict()[k]) for k, v in critic.items())
    critic_only = trainer.train_step()              # step 1: the critic alone
    assert "generator_loss" not in critic_only and torch.isfinite(torch.tensor(critic_only["critic_loss"]))


def test_the_data_loss_joins_the_generator_loss_with_its_weight(dirs, data, tmp_path):
    """Same step, same draws: the weighted run's generator loss is the DMD loss plus the weight
    times the teacher-forcing loss it reports, and its update differs."""
    plain = DMDTrainer(*dirs, data, tmp_path / "plain", DMD)
    weighted = DMDTrainer(*dirs, data, tmp_path / "weighted", DMDConfig(**{**DMD.__dict__, "data_loss_weight": 0.5}))
    a, b = plain.train_step(), weighted.train_step()
    assert "data_loss" not in a and b["data_loss"] > 0
    assert b["generator_loss"] == pytest.approx(a["generator_loss"] + 0.5 * b["data_loss"], rel=1e-4, abs=1e-6)
    assert any(not torch.equal(v, weighted.student.state_dict()[k]) for k, v in plain.student.state_dict().items())
    with pytest.raises(ValueError, match="data_loss_weight must be >= 0, got -1"):
        DMDConfig(data_loss_weight=-1)


def test_every_log_record_carries_the_latest_generator_step(dirs, data, tmp_path):
    """Logged every 2 steps with a generator step every 2 (steps 0, 2): each record is a critic
    step's, and carries the generator's numbers from the step before it."""
    DMDTrainer(*dirs, data, tmp_path / "dmd", DMDConfig(**{**DMD.__dict__, "log_every": 2})).train(progress=False)
    log = [json.loads(line) for line in (tmp_path / "dmd" / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["generator_step"]) for r in log] == [(2, 1), (4, 3)]
    assert all(r["generator_loss"] > 0 and r["critic_loss"] > 0 for r in log)


def test_dmd_resumes_bit_identically(dirs, data, tmp_path):
    straight = DMDTrainer(*dirs, data, tmp_path / "straight", DMD)
    straight.train(progress=False)
    first = DMDTrainer(*dirs, data, tmp_path / "resumed", DMDConfig(**{**DMD.__dict__, "steps": 2}))
    first.train(progress=False)
    assert (tmp_path / "resumed" / CHECKPOINT / "step_00000002" / ".metadata").is_file()
    second = DMDTrainer(*dirs, data, tmp_path / "resumed", DMD)
    second.train(progress=False)
    assert second.step == straight.step == 4
    assert student_schedule(tmp_path / "resumed" / "student") == SCHEDULE
    for key, value in straight.state_dict().items():
        if key == "step":
            continue
        flat_a, flat_b = _flatten(value), _flatten(second.state_dict()[key])
        assert flat_a.keys() == flat_b.keys()
        for name in flat_a:
            assert torch.equal(flat_a[name], flat_b[name]), (key, name)
    log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]


def _flatten(state, prefix=""):
    out = {}
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        for k, v in state.items():
            out |= _flatten(v, f"{prefix}/{k}")
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            out |= _flatten(v, f"{prefix}/{i}")
    else:
        out[prefix] = torch.tensor(float(state)) if isinstance(state, (int, float)) else torch.tensor(0.0)
    return out


def test_dmd_refuses_models_of_different_shapes(dirs, data, tmp_path):
    from lingbot_rt.model.checkpoint import save_model
    from lingbot_rt.model.config import model_config
    from lingbot_rt.model.dit import CausalWanModel
    save_model(CausalWanModel(model_config("tiny").replace(num_layers=1)), tmp_path / "small")
    with pytest.raises(ValueError, match="differ in shape"):
        DMDTrainer(tmp_path / "small", dirs[1], data, tmp_path / "dmd", DMD)
