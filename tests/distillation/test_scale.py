"""DMD at scale on CPU: activation checkpointing against the rolling KV cache, two gloo ranks
under `ddp` and `fsdp` (FSDP2), and the seed scripts' command lines."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lingbot_rt.distillation.cli import seed_argv
from lingbot_rt.distillation.config import DMDConfig, StudentSchedule
from lingbot_rt.distillation.distributed import init_from_env
from lingbot_rt.distillation.self_forcing import check_recompute_safe, student_rollout
from lingbot_rt.distillation.sharding import checkpoint_blocks
from lingbot_rt.distillation.trainer import CHECKPOINT, DMDTrainer
from lingbot_rt.model.checkpoint import load_model
from lingbot_rt.world.latents import ConditionedClips

from .helpers import LATENT_HW, SCHEDULE, load_clips, save_tiny, synthetic_clips, tiny_model

REPO = Path(__file__).resolve().parents[2]


# ---- activation checkpointing and the rolling cache ------------------------------------------------
def _clips(num_frames: int) -> ConditionedClips:
    """Two clips of `num_frames` latent frames (random conditioning)."""
    g = torch.Generator().manual_seed(0)
    cfg = tiny_model(0).cfg
    frames = (num_frames, *LATENT_HW)
    return ConditionedClips(x0=torch.randn(2, 16, *frames, generator=g), y=torch.randn(2, 20, *frames, generator=g),
                            control=torch.randn(2, cfg.control_channels, *frames, generator=g),
                            context=torch.randn(2, cfg.text_len, cfg.text_dim, generator=g),
                            empty_context=torch.zeros(cfg.text_len, cfg.text_dim))


def _rollout_grads(clips: ConditionedClips, schedule: StudentSchedule, checkpointing: bool) -> list[torch.Tensor]:
    model = tiny_model(2)
    if checkpointing:
        checkpoint_blocks(model)
    x = student_rollout(model, clips.context, clips.y, clips.control, schedule.schedule(), schedule.cache(),
                        torch.Generator().manual_seed(0), exit_step=1)
    (x.square().mean() + x[:, :, -1].mean()).backward()
    return [p.grad for p in model.parameters()]


def test_checkpointed_rollout_gives_the_same_gradients_with_a_full_rolling_window():
    # 6 frames in blocks of 3 over 1 sink + 3 window slots: block 1 reads frames 0-2 from a full
    # cache, and committing it (frames 3-5) would evict frames 1 and 2 under its recomputation
    clips = _clips(6)
    check_recompute_safe(SCHEDULE.cache(), 6)
    plain, checkpointed = (_rollout_grads(clips, SCHEDULE, c) for c in (False, True))
    assert sum(g is not None for g in plain) > 10
    for a, b in zip(plain, checkpointed, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_checkpointing_is_refused_where_commits_evict_frames_a_recomputed_block_read(dirs, tmp_path):
    # 9 frames: block 1's commit (frames 3-5) overwrites frames 1-2, which block 1 read
    clips = _clips(9)
    plain, checkpointed = (_rollout_grads(clips, SCHEDULE, c) for c in (False, True))
    assert any(a is not None and not torch.equal(a, b) for a, b in zip(plain, checkpointed))
    with pytest.raises(ValueError, match=r"committed frames \(6 of 9\) to fit the KV cache without rewriting a slot "
                                         r"\(at most 4: 1 sink \+ 3 window"):
        check_recompute_safe(SCHEDULE.cache(), 9)
    config = DMDConfig(batch_size=1, student=SCHEDULE, activation_checkpointing=True)
    with pytest.raises(ValueError, match="activation checkpointing needs"):
        DMDTrainer(*dirs, clips, tmp_path / "dmd", config)
    check_recompute_safe(StudentSchedule().cache(), 21)       # the world's 21 frames, 3 + 15 slots
    # a compressed memory rewrites the full-resolution ring: block 2 (frames 6-8) overwrites frames 0-2
    compressed = replace(StudentSchedule().cache(), full_frames=3, memory_pool=(2, 2))
    check_recompute_safe(compressed, 6)
    with pytest.raises(ValueError, match=r"\(at most 3: 3 sink \+ 15 window frames, 3 of them at full resolution\)"):
        check_recompute_safe(compressed, 9)


def test_the_student_text_path_is_frozen_and_a_checkpointed_step_equals_the_plain_one(dirs, tmp_path):
    data = synthetic_clips(4)
    plain = DMDTrainer(*dirs, data, tmp_path / "plain", replace(DMD, generator_lr=1e-3))
    checkpointed = DMDTrainer(*dirs, data, tmp_path / "ac", replace(DMD, generator_lr=1e-3,
                                                                    activation_checkpointing=True))
    frozen = [name for name, p in plain.student.named_parameters() if not p.requires_grad]
    assert "text_embedding.0.weight" in frozen and "blocks.1.cross_attn.k.weight" in frozen
    assert "blocks.1.cross_attn.q.weight" not in frozen
    for trainer in (plain, checkpointed):
        trainer.train_step()
    for a, b in zip(plain.student.state_dict().values(), checkpointed.student.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert plain.student.state_dict().keys() == checkpointed.student.state_dict().keys()


def test_a_run_directory_of_the_single_file_format_is_refused(dirs, tmp_path):
    (tmp_path / "dmd").mkdir()
    (tmp_path / "dmd" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="checkpoint.pt of the earlier single-file format"):
        DMDTrainer(*dirs, synthetic_clips(2), tmp_path / "dmd", DMD).train(progress=False)


def test_fsdp_needs_a_process_group(dirs, tmp_path):
    with pytest.raises(ValueError, match="strategy 'fsdp' needs a torch.distributed process group"):
        DMDTrainer(*dirs, synthetic_clips(2), tmp_path / "dmd", replace(DMD, strategy="fsdp"))
    with pytest.raises(ValueError, match="strategy must be one of"):
        DMDConfig(strategy="zero3")


# ---- two gloo ranks -------------------------------------------------------------------------------------
DMD = DMDConfig(batch_size=1, steps=3, update_ratio=2, log_every=1, save_every=2, generator_lr=1e-3,
                critic_lr=1e-3, student=SCHEDULE)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return save_tiny(root / "student", 2), save_tiny(root / "teacher", 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world_size: int, port: int, dirs, root: Path) -> None:
    """One torchrun-like rank: the environment torchrun sets, `init_from_env`, then the same
    run under ddp and under fsdp + activation checkpointing; the full student weights dumped."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ranks, device = init_from_env()
    try:
        for strategy, checkpointing in (("ddp", False), ("fsdp", True)):
            config = replace(DMD, strategy=strategy, activation_checkpointing=checkpointing)
            trainer = DMDTrainer(*dirs, load_clips(device), root / strategy, config, ranks=ranks)
            trainer.train(progress=False)
            for name in ("student", "critic"):     # gathered on every rank under fsdp (a collective)
                state = get_model_state_dict(getattr(trainer, name), options=StateDictOptions(full_state_dict=True))
                torch.save(state, root / f"{strategy}-{name}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank, args=(2, _free_port(), dirs, root), nprocs=2, join=True)
    return root


def test_two_ddp_ranks_end_with_identical_weights(two_ranks, dirs):
    initial = load_model(dirs[0], dtype=torch.float32).state_dict()
    rank0, rank1 = (torch.load(two_ranks / f"ddp-student-rank{r}.pt") for r in (0, 1))
    assert rank0.keys() == rank1.keys() == initial.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert not torch.equal(rank0["head.head.weight"], initial["head.head.weight"])
    log = (two_ranks / "ddp" / "log.jsonl").read_text().splitlines()
    assert len(log) == 3 and '"generator_loss"' in log[0] and "NaN" not in "".join(log)


def test_fsdp_with_checkpointing_equals_ddp(two_ranks, dirs):
    """The same draws per rank and the same averaged gradients: FSDP2's reduce-scatter (and
    its recomputed blocks) against the explicit all-reduce, in fp32 on the CPU. They sum in
    other orders, and AdamW's first steps (beta1 = 0) scale a gradient to about lr whatever
    its size, so the tolerance is 1% of the steps' updates (lr 1e-3, 2 updates), not 0; a
    rank left out of the average would differ by whole updates."""
    initial = {"student": load_model(dirs[0], dtype=torch.float32).state_dict(),
               "critic": load_model(dirs[1], dtype=torch.float32).state_dict()}
    for name in ("student", "critic"):
        ddp, fsdp = (torch.load(two_ranks / f"{s}-{name}-rank0.pt") for s in ("ddp", "fsdp"))
        assert ddp.keys() == fsdp.keys()
        assert max((ddp[k] - initial[name][k]).abs().max() for k in ddp) > 1e-3
        for key in ddp:
            torch.testing.assert_close(fsdp[key], ddp[key], rtol=0, atol=2e-5, msg=f"{name} {key}")
    students = [load_model(two_ranks / s / "student", dtype=torch.float32).state_dict() for s in ("ddp", "fsdp")]
    for key in students[0]:          # the exported EMA (gathered from its shards under fsdp)
        torch.testing.assert_close(students[1][key], students[0][key], rtol=0, atol=2e-5, msg=key)
    for strategy in ("ddp", "fsdp"):
        saves = sorted((two_ranks / strategy / CHECKPOINT).iterdir())
        assert [s.name for s in saves] == ["step_00000003"] and (saves[0] / ".metadata").is_file()


def test_a_two_rank_checkpoint_resumes_in_one_process(two_ranks, dirs):
    """A save is keyed by parameter names, not by ranks: one process reads the 2-rank run back."""
    resumed = DMDTrainer(*dirs, synthetic_clips(4), two_ranks / "ddp", DMD)
    assert resumed.resume() and resumed.step == 3
    ddp = torch.load(two_ranks / "ddp-student-rank0.pt")
    for key, value in resumed.student.state_dict().items():
        assert torch.equal(value, ddp[key]), key


# ---- the seed scripts -----------------------------------------------------------------------------------
def test_seed_flags_map_to_the_package_command():
    assert seed_argv(["--teacher_path", "T", "--output_path=runs/x", "--num_pairs", "8", "--data_path", "a_b",
                      "--activation_checkpointing"]) == [
        "--teacher", "T", "--out=runs/x", "--num-pairs", "8", "--data", "a_b", "--activation-checkpointing"]


@pytest.mark.parametrize("script, flags", [("generate_ode_pairs.py", ["--num-pairs", "--teacher", "--out"]),
                                           ("train_dmd.py", ["--strategy", "--activation-checkpointing"])])
def test_seed_scripts_run_the_package_commands(script, flags, tmp_path):
    """From another directory, as `python distillation/<script>` after `pip install -e .`."""
    out = subprocess.run([sys.executable, str(REPO / "distillation" / script), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    assert all(flag in out for flag in flags), out
    failed = subprocess.run([sys.executable, str(REPO / "distillation" / script), "--teacher_path", "T"],
                            cwd=tmp_path, capture_output=True, text=True, check=False)
    assert failed.returncode == 2 and "required" in failed.stderr
