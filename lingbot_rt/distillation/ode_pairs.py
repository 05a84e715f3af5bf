"""ODE pairs: the teacher's sampling trajectory, recorded at the student's sigmas.

    lingbot-rt distill ode-pairs --teacher T --data D --vae V --out pairs/ --num-pairs 1024

Pair j conditions on clip `j % N` of the data (its start image, prompt and camera path), starts
from noise drawn from seed (seed, shard) and integrates the teacher ODE (`StudentSchedule`:
48 Euler steps at shift 3, guidance 3 on prompt + control) down to sigma 0.

Format (one directory):

    meta.json             {"format": "lingbot-rt/ode-pairs/v1", "num_pairs", "shard_size",
                           "sigmas": the student's K sigmas, "timesteps", "grid_indices",
                           "teacher_steps", "shift", "guidance", "seed", "latent_shape": [16, F, h, w],
                           "teacher": the teacher's config, "data": {"clips": N, "first_prompt": ...}}
    shard_00000.safetensors, ...   per shard of n pairs:
        xt          bf16 [n, K, 16, F, h, w]   x at the student's sigmas (xt[:, 0] is the noise)
        x0          bf16 [n, 16, F, h, w]      the ODE's end point (the teacher's sample)
        clip_index  int64 [n]                  which clip of the data conditions the pair

A shard is written to a temporary name and renamed, and its noise depends only on (seed,
shard), so an interrupted run resumes by skipping the shards that exist and produces the same
files as an uninterrupted one.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..model.dit import CausalWanModel
from ..model.sampler import euler_trajectory
from ..world.latents import ConditionedClips
from .config import ODEPairsConfig

FORMAT = "lingbot-rt/ode-pairs/v1"
META = "meta.json"


class PairsError(ValueError):
    """An ODE-pairs directory that is missing, incomplete or does not fit the data or student."""


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


@torch.no_grad()
def teacher_trajectories(teacher: CausalWanModel, data: ConditionedClips, clip_index: torch.Tensor,
                         noise: torch.Tensor, config: ODEPairsConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """x at the student's sigmas [n, K, 16, F, h, w] and the end point [n, 16, F, h, w] (float32)."""
    student = config.student
    uncond_context = data.empty_context.expand(len(clip_index), -1, -1)
    device = noise.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        *points, x0 = euler_trajectory(
            teacher, noise, data.context[clip_index], data.y[clip_index], data.control[clip_index], student.grid(),
            record=student.grid_indices(), guidance=student.guidance, uncond_context=uncond_context,
            uncond_control=torch.zeros_like(data.control[clip_index]))
    return torch.stack(points, 1), x0


def generate_ode_pairs(teacher: CausalWanModel, data: ConditionedClips, out_dir: str | Path,
                       config: ODEPairsConfig = ODEPairsConfig(), progress: bool = True) -> Path:
    """Write (or complete) the pairs directory `out_dir`; returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = _meta(teacher, data, config)
    meta_path = out / META
    if meta_path.is_file():
        existing = json.loads(meta_path.read_text())
        if existing != meta:
            changed = sorted(k for k in meta if existing.get(k) != meta[k])
            raise PairsError(f"{out} holds ODE pairs made with other settings ({', '.join(changed)} differ): "
                             "use a new directory")
    else:
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    device = data.x0.device
    num_shards = math.ceil(config.num_pairs / config.shard_size)
    todo = [s for s in range(num_shards) if not (out / shard_name(s)).is_file()]
    teacher.eval()
    with tqdm(total=config.num_pairs, initial=(num_shards - len(todo)) * config.shard_size, unit="pair",
              desc="ode pairs", disable=not progress) as bar:
        for shard in todo:
            first = shard * config.shard_size
            count = min(config.shard_size, config.num_pairs - first)
            generator = torch.Generator(device).manual_seed(config.seed * 1_000_003 + shard)
            clip_index = torch.arange(first, first + count, device=device) % len(data)
            xt, x0 = [], []
            for start in range(0, count, config.batch_size):
                index = clip_index[start:start + config.batch_size]
                noise = torch.randn((len(index), *data.x0.shape[1:]), generator=generator, device=device)
                points, end = teacher_trajectories(teacher, data, index, noise, config)
                xt.append(points.to(torch.bfloat16).cpu())
                x0.append(end.to(torch.bfloat16).cpu())
                bar.update(len(index))
            tmp = out / (shard_name(shard) + ".tmp")
            save_file({"xt": torch.cat(xt).contiguous(), "x0": torch.cat(x0).contiguous(),
                       "clip_index": clip_index.cpu()}, str(tmp))
            tmp.replace(out / shard_name(shard))
    return out


def _meta(teacher: CausalWanModel, data: ConditionedClips, config: ODEPairsConfig) -> dict:
    student = config.student
    schedule = student.schedule()
    return json.loads(json.dumps({"format": FORMAT, "num_pairs": config.num_pairs, "shard_size": config.shard_size,
            "sigmas": list(schedule.sigmas), "timesteps": list(schedule.timesteps),
            "grid_indices": list(student.grid_indices()), "teacher_steps": student.teacher_steps,
            "shift": student.shift, "guidance": student.guidance, "seed": config.seed,
            "latent_shape": list(data.x0.shape[1:]), "teacher": asdict(teacher.cfg),
            "data": {"clips": len(data)}}))        # as read back (tuples -> lists)


@dataclass
class ODEPairs:
    """A complete pairs directory in memory (on `device`)."""

    xt: torch.Tensor              # bf16 [N, K, 16, F, h, w]
    x0: torch.Tensor              # bf16 [N, 16, F, h, w]
    clip_index: torch.Tensor      # int64 [N]
    meta: dict

    def __len__(self) -> int:
        return self.x0.shape[0]

    @property
    def sigmas(self) -> tuple[float, ...]:
        return tuple(self.meta["sigmas"])

    @property
    def timesteps(self) -> tuple[float, ...]:
        return tuple(self.meta["timesteps"])


def load_ode_pairs(pairs_dir: str | Path, device: torch.device | str = "cpu") -> ODEPairs:
    """Read every shard of a pairs directory; refuses an incomplete or foreign one."""
    root = Path(pairs_dir)
    meta_path = root / META
    if not meta_path.is_file():
        raise PairsError(f"{root} is not an ODE-pairs directory: {META} is missing")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise PairsError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    num_shards = math.ceil(meta["num_pairs"] / meta["shard_size"])
    missing = [shard_name(s) for s in range(num_shards) if not (root / shard_name(s)).is_file()]
    if missing:
        raise PairsError(f"{root} is incomplete: {len(missing)} of {num_shards} shards missing (first: {missing[0]}); "
                         "rerun `lingbot-rt distill ode-pairs` with the same arguments to finish it")
    shards = [load_file(str(root / shard_name(s)), device=str(device)) for s in range(num_shards)]
    pairs = ODEPairs(torch.cat([s["xt"] for s in shards]), torch.cat([s["x0"] for s in shards]),
                     torch.cat([s["clip_index"] for s in shards]), meta)
    expected = (meta["num_pairs"], len(meta["sigmas"]), *meta["latent_shape"])
    if tuple(pairs.xt.shape) != expected:
        raise PairsError(f"{root}: xt has shape {list(pairs.xt.shape)}, meta.json says {list(expected)}")
    return pairs


def check_pairs_fit(pairs: ODEPairs, data: ConditionedClips, sigmas: tuple[float, ...]) -> None:
    """The pairs were made for this data (clip count, latent shape) and this student schedule."""
    if pairs.meta["data"]["clips"] != len(data):
        raise PairsError(f"the ODE pairs were made from {pairs.meta['data']['clips']} clips, the data has {len(data)}")
    if list(data.x0.shape[1:]) != pairs.meta["latent_shape"]:
        raise PairsError(f"the ODE pairs hold latents {pairs.meta['latent_shape']}, the data {list(data.x0.shape[1:])}")
    if not torch.allclose(torch.tensor(pairs.sigmas), torch.tensor(sigmas)):
        raise PairsError(f"the ODE pairs sit at sigmas {pairs.sigmas}, the student samples at {sigmas}")
