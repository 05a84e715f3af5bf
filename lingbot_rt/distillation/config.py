"""Typed configs of the distillation jobs, with their defaults in one place.

The student's sampling (`StudentSchedule`) is shared by every stage: the ODE pairs record the
teacher at its sigmas, causal initialisation regresses onto them, DMD rolls out with them, and
the shipped student streams with them (`StreamConfig.schedule_indices` / `shift`).

Defaults are the built-in world's (a 6.1M-parameter `world` DiT, 21 latent frames of 16x16):
the teacher samples 48 Euler steps at shift 3 with guidance 3 on prompt + control, the student
takes 4 steps at indices 0, 250, 500, 750 of the same shifted table (sigma 1.0, 0.90, 0.75,
0.50): the teacher grid's entries 0, 12, 24, 36, as CausVid and Self-Forcing record theirs.
The DMD optimiser follows Self-Forcing (generator:critic 1:5, AdamW beta1 = 0, EMA, clip 10,
timesteps shifted and clamped to [0.02, 0.98]) with learning rates raised for a model 200x
smaller than Wan-1.3B (measured: docs in the run report). Scale (`sharding.py`): `ddp` replicas
for models that fit a GPU, `fsdp` (FSDP2) with activation checkpointing for the 14B class.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config_io import config_from_dict
from ..model.config import CacheConfig
from ..model.sampler import NUM_TRAIN_TIMESTEPS, FewStepSchedule, ode_grid

STRATEGIES = ("ddp", "fsdp")     # whole replicas + averaged gradients, or FSDP2 shards
# long-horizon windows are scored given: the rollout's own first frame of the window (decoded),
# or the true frame there (clips at least rollout_frames long, loaded with their start images)
WINDOW_ANCHORS = ("rollout", "truth")


@dataclass(frozen=True)
class StudentSchedule:
    """The student's denoising steps and the teacher ODE they are read from."""

    indices: tuple[int, ...] = (0, 250, 500, 750)   # into the 1000-step shifted table
    shift: float = 3.0
    teacher_steps: int = 48                         # Euler steps of the recorded teacher ODE
    guidance: float = 3.0                           # teacher CFG on prompt + control
    block_frames: int = 3
    sink_frames: int = 3
    window_frames: int = 15
    full_frames: int | None = None                  # compressed memory (`CacheConfig`); None: all at full resolution
    memory_pool: tuple[int, int] = (1, 1)
    action_guidance: float = 0.0                    # inference: guidance on the block's control (`generate_block`)

    def __post_init__(self):
        if self.action_guidance < 0:
            raise ValueError(f"action_guidance must be >= 0, got {self.action_guidance}")
        if any(i * self.teacher_steps % NUM_TRAIN_TIMESTEPS for i in self.indices):
            raise ValueError(f"student indices {self.indices} must be multiples of 1000 / teacher_steps "
                             f"(= {NUM_TRAIN_TIMESTEPS / self.teacher_steps:g}), so each student step is a "
                             "recorded point of the teacher ODE")
        self.schedule()
        self.cache()

    def schedule(self) -> FewStepSchedule:
        return FewStepSchedule.from_indices(self.indices, self.shift)

    def grid(self) -> list[float]:
        """The teacher ODE's sigmas (`teacher_steps` + 1 entries, ending at 0)."""
        return ode_grid(self.teacher_steps, self.shift)

    def grid_indices(self) -> tuple[int, ...]:
        """Where the student's sigmas sit on `grid()`."""
        return tuple(i * self.teacher_steps // NUM_TRAIN_TIMESTEPS for i in self.indices)

    def cache(self) -> CacheConfig:
        return CacheConfig.of(self)


SCHEDULE_FILE = "student_schedule.json"


def save_student_schedule(schedule: StudentSchedule, student_dir: str | Path) -> None:
    """Record beside a student's weights the schedule and cache layout it was trained to stream with."""
    (Path(student_dir) / SCHEDULE_FILE).write_text(json.dumps(asdict(schedule), indent=2) + "\n")


def student_schedule(student_dir: str | Path) -> StudentSchedule:
    """The schedule a student directory records (`save_student_schedule`); the default one for a
    student saved without it."""
    path = Path(student_dir) / SCHEDULE_FILE
    if not path.is_file():
        return StudentSchedule()
    return config_from_dict(StudentSchedule, json.loads(path.read_text()), str(path))


@dataclass(frozen=True)
class ODEPairsConfig:
    num_pairs: int = 1024
    shard_size: int = 128        # pairs per shard file (a shard is the unit of resume)
    batch_size: int = 64         # teacher clips integrated at once
    seed: int = 0
    student: StudentSchedule = field(default_factory=StudentSchedule)


@dataclass(frozen=True)
class CausalInitConfig:
    """Causal initialisation of the student from the teacher's weights.

    objective "ode": regress the block-causal student onto the teacher's ODE pairs (its clean
    end point as the committed context, a random recorded step per block);
    "teacher_forcing": flow matching on real latents in the teacher-forcing layout (clean
    context, each block at its own noise level): the AR-diffusion stage of Causal Forcing.
    """

    objective: str = "ode"
    batch_size: int = 32
    lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    steps: int = 4000
    minutes: float | None = None
    ema_decay: float = 0.99
    log_every: int = 50
    save_every: int = 500
    seed: int = 0
    student: StudentSchedule = field(default_factory=StudentSchedule)

    def __post_init__(self):
        if self.objective not in ("ode", "teacher_forcing"):
            raise ValueError(f"objective must be 'ode' or 'teacher_forcing', got {self.objective!r}")


@dataclass(frozen=True)
class DMDConfig:
    batch_size: int = 16            # rollouts per step, per worker
    generator_lr: float = 2e-5
    critic_lr: float = 4e-5
    betas: tuple[float, float] = (0.0, 0.999)
    weight_decay: float = 0.01
    update_ratio: int = 5           # critic updates per generator update
    max_grad_norm: float = 10.0
    min_sigma: float = 0.02         # DMD timesteps: shift(U(0, 1)) clamped to [min, max]
    max_sigma: float = 0.98
    ema_decay: float = 0.99
    data_loss_weight: float = 0.0   # + this x the teacher-forcing flow-matching loss on the real clips in
                                    # the generator's loss (0: DMD alone); keeps the student near the data
    action_loss_weight: float = 0.0  # + this x the action loss (`action_loss.py`) on the rollouts the DMD loss
                                     # scores: a motion probe (latent, or decoded) against the commanded motion
    action_probe: str | None = None  # the latent motion probe's safetensors (`lingbot-rt distill latent-probe`),
                                     # or with action_decoder a pixel probe's (`lingbot-rt distill decoded-probe`)
    action_decoder: str | None = None  # a tiny decoder's directory: the action loss reads the samples decoded by it
    action_loss_balance: bool = False  # weigh walking forward, walking back and neither alike in the action loss
    rollout_frames: int = 0         # long-horizon DMD (`long_horizon.py`): roll the student out to up to this many
                                    # latent frames, past its KV window, and score the last clip-length window;
                                    # 0: rollouts as long as the clips (Self-Forcing)
    window_anchor: str = "rollout"  # one of WINDOW_ANCHORS: the image the scores condition a long-horizon window on
    score_frames: int = 0           # latent frames of the windows the scores see (the teacher's clip length);
                                    # 0: the data clips' (longer clips: their prefix for the plain steps)
    steps: int = 2000               # critic steps (generator steps = steps / update_ratio)
    minutes: float | None = None
    log_every: int = 25
    save_every: int = 250
    seed: int = 0
    strategy: str = "ddp"                   # one of STRATEGIES
    activation_checkpointing: bool = False  # per DiT block, student and critic
    student: StudentSchedule = field(default_factory=StudentSchedule)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.rollout_frames < 0 or self.score_frames < 0:
            raise ValueError(f"rollout_frames and score_frames must be >= 0 (0: as long as the clips), got "
                             f"{self.rollout_frames}, {self.score_frames}")
        if self.window_anchor not in WINDOW_ANCHORS:
            raise ValueError(f"window_anchor must be one of {WINDOW_ANCHORS}, got {self.window_anchor!r}")
        for name in ("data_loss_weight", "action_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.action_loss_weight and not self.action_probe:
            raise ValueError("action_loss_weight needs action_probe: a latent motion probe (`lingbot-rt distill "
                             "latent-probe`)")
        if self.action_decoder and not self.action_loss_weight:
            raise ValueError("action_decoder decodes the samples the action loss reads: it needs action_loss_weight > 0")
        if self.action_loss_balance and not self.action_loss_weight:
            raise ValueError("action_loss_balance weighs the action loss's pairs: it needs action_loss_weight > 0")
        if self.action_loss_weight and self.rollout_frames and self.window_anchor != "truth":
            raise ValueError("the action loss scores rollouts against their clips' camera motions: with "
                             "rollout_frames, it needs window_anchor 'truth' (rollouts along the clips' own paths; "
                             "'rollout' chains other clips' motions)")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.update_ratio < 1 or self.batch_size < 1:
            raise ValueError(f"update_ratio and batch_size must be >= 1, got {self.update_ratio}, {self.batch_size}")
        if not 0 < self.min_sigma < self.max_sigma < 1:
            raise ValueError(f"need 0 < min_sigma < max_sigma < 1, got {self.min_sigma}, {self.max_sigma}")
