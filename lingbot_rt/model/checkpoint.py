"""Load and save LingBot-World DiT checkpoints in their released layout.

A model directory holds a diffusers `config.json` and either sharded safetensors with
`diffusion_pytorch_model.safetensors.index.json`, a single `diffusion_pytorch_model.safetensors`,
or `.pth` state dicts. A release root holds the base experts `high_noise_model/` and
`low_noise_model/` (the high-noise expert runs for t >= 947) and optionally
`lingbot_world_fast/`. Validation is strict and happens before any weight is read: errors
name the missing, unexpected and mis-shaped keys and the file they came from.

The model is built on the meta device and materialised once on the target device, so the
18.5B model is never allocated twice; each stored tensor (fp32 or bf16) is cast on copy.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from .config import ModelConfig
from .dit import CausalWanModel

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = WEIGHTS_NAME + ".index.json"
HIGH_NOISE_DIR, LOW_NOISE_DIR, FAST_DIR = "high_noise_model", "low_noise_model", "lingbot_world_fast"
EXPERT_BOUNDARY_T = 947.0   # boundary 0.947 x 1000 train timesteps (upstream wan_i2v_A14B.py)
_MAX_LISTED = 8


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the keys."""


@dataclass(frozen=True)
class StoredTensor:
    file: Path
    shape: tuple[int, ...]
    dtype: str
    scale: str | None = None      # key of its per-row scales when stored as FP8 (`quantize_rows_fp8`)


FP8_SCALE_SUFFIX = ".fp8_row_scale"
FP8_MAX = 448.0                   # largest float8_e4m3fn


def quantize_rows_fp8(state: dict[str, torch.Tensor], min_rows: int = 16) -> dict[str, torch.Tensor]:
    """Matrices (2-D weights with >= `min_rows` rows and columns) as float8_e4m3fn with one fp32
    scale per output row under `<key>.fp8_row_scale`; other tensors as they are. Half the bytes of
    bf16 for a DiT; loading multiplies the scales back (`copy_stored_tensors`)."""
    out = {}
    for key, tensor in state.items():
        if tensor.ndim == 2 and min(tensor.shape) >= min_rows and tensor.is_floating_point():
            rows = tensor.float()
            scale = rows.abs().amax(dim=1).clamp_min(1e-12) / FP8_MAX
            out[key] = (rows / scale[:, None]).to(torch.float8_e4m3fn)
            out[key + FP8_SCALE_SUFFIX] = scale
        else:
            out[key] = tensor
    return out


def _fold_fp8_scales(stored: dict[str, StoredTensor], source: Path) -> dict[str, StoredTensor]:
    """Attach each `<key>.fp8_row_scale` to its matrix, so validation sees the model's keys only."""
    folded = {k: v for k, v in stored.items() if not k.endswith(FP8_SCALE_SUFFIX)}
    for key in stored.keys() - folded.keys():
        base = key.removesuffix(FP8_SCALE_SUFFIX)
        entry = folded.get(base)
        if (entry is None or entry.dtype != "F8_E4M3" or stored[key].shape != entry.shape[:1]
                or stored[key].file != entry.file):
            raise CheckpointError(f"{source}: {key} scales no FP8 matrix {base} of {stored[key].shape} rows "
                                  "in its file")
        folded[base] = StoredTensor(entry.file, entry.shape, entry.dtype, scale=key)
    unscaled = [k for k, v in folded.items() if v.dtype == "F8_E4M3" and v.scale is None]
    if unscaled:
        raise CheckpointError(f"{source}: FP8 tensors without {FP8_SCALE_SUFFIX}: {_listing(unscaled)}")
    return folded


def _listing(keys) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def read_config(model_dir: Path) -> tuple[ModelConfig, dict]:
    """The model's `config.json`: our config and the raw dict."""
    path = Path(model_dir) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: no {CONFIG_NAME} (expected a diffusers model directory)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    try:
        cfg = ModelConfig.from_diffusers(raw, source=str(path))
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    return cfg, raw


def list_stored_tensors(model_dir: Path) -> dict[str, StoredTensor]:
    """Names, shapes and files of the stored tensors, from headers only (no weights read)."""
    model_dir = Path(model_dir)
    index = model_dir / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index with a 'weight_map' ({exc})") from None
        files = sorted({model_dir / name for name in weight_map.values()})
    elif (model_dir / WEIGHTS_NAME).is_file():
        weight_map, files = None, [model_dir / WEIGHTS_NAME]
    else:
        files = sorted(model_dir.glob("*.pth")) + sorted(model_dir.glob("*.pt"))
        if not files:
            raise CheckpointError(f"{model_dir}: no {INDEX_NAME}, {WEIGHTS_NAME} or .pth weights found")
        weight_map = None
    stored: dict[str, StoredTensor] = {}
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"{index}: shard {file.name} is listed but missing")
        for key, entry in list_file_tensors(file).items():
            if key in stored:
                raise CheckpointError(f"{file}: key {key} also stored in {stored[key].file.name}")
            stored[key] = entry
    if weight_map is not None:
        for key, name in weight_map.items():
            if key not in stored:
                raise CheckpointError(f"{index}: key {key} mapped to {name} but not stored there")
    return _fold_fp8_scales(stored, model_dir)


def load_pth(file: Path) -> dict[str, torch.Tensor]:
    """A `.pth`/`.pt` state dict, memory-mapped, tensors only (weights_only)."""
    try:
        state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{file}: unreadable .pth file ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file}: expected a state dict of tensors")
    return state


def list_file_tensors(file: Path) -> dict[str, StoredTensor]:
    """Names, shapes and dtypes in one weights file (a header read; an mmap for .pth)."""
    if file.suffix in (".pth", ".pt"):
        return {k: StoredTensor(file, tuple(t.shape), str(t.dtype).removeprefix("torch."))
                for k, t in load_pth(file).items()}
    if file.suffix != ".safetensors":
        raise CheckpointError(f"{file}: expected a .safetensors, .pth or .pt file")
    try:
        with safe_open(file, framework="pt") as f:
            return {k: StoredTensor(file, tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype())
                    for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{file}: unreadable safetensors file ({exc})") from None


def copy_stored_tensors(model: nn.Module, stored: dict[str, StoredTensor]) -> None:
    """Copy (and cast) every stored tensor into the materialised model, one file at a time."""
    params = dict(model.named_parameters())
    by_file: dict[Path, list[str]] = {}
    for key, entry in stored.items():
        by_file.setdefault(entry.file, []).append(key)
    with torch.no_grad():
        for file, keys in sorted(by_file.items()):
            if file.suffix == ".safetensors":
                with safe_open(file, framework="pt") as f:
                    for key in keys:
                        tensor = f.get_tensor(key)
                        if stored[key].scale is not None:
                            tensor = tensor.float() * f.get_tensor(stored[key].scale)[:, None]
                        params[key].copy_(tensor)
            else:
                state = load_pth(file)
                for key in keys:
                    params[key].copy_(state[key])


def load_weights_file(model: nn.Module, path: str | Path, dtype: torch.dtype, device, what: str) -> nn.Module:
    """Validate a meta-built module against one weights file, materialise it once on `device`
    in `dtype` (cast on meta first) and copy the weights in. `what` names it in errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} checkpoint not found")
    stored = _fold_fp8_scales(list_file_tensors(path), path)
    validate(model, stored, path)
    model = model.to(dtype).to_empty(device=device)
    copy_stored_tensors(model, stored)
    return model.eval()


def save_weights_file(model: nn.Module, path: str | Path) -> Path:
    """Write a state dict to one file; the suffix picks .safetensors or .pth/.pt."""
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, path, metadata={"format": "pt"})
    elif path.suffix in (".pth", ".pt"):
        torch.save(state, path)
    else:
        raise ValueError(f"{path}: name the file *.safetensors, *.pth or *.pt")
    return path


def validate(model: nn.Module, stored: dict[str, StoredTensor], source: Path) -> None:
    """Every parameter present with its shape, nothing extra. Raises CheckpointError."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = expected.keys() - stored.keys()
    unexpected = stored.keys() - expected.keys()
    misshaped = [f"{k} ({stored[k].file.name}: stored {list(stored[k].shape)}, model {list(expected[k])})"
                 for k in sorted(expected.keys() & stored.keys()) if stored[k].shape != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected:
        files = sorted({stored[k].file.name for k in unexpected})
        problems.append(f"{len(unexpected)} unexpected keys (in {', '.join(files)}): {_listing(unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} mis-shaped keys: {'; '.join(misshaped[:_MAX_LISTED])}")
    if problems:
        raise CheckpointError(f"{source}: checkpoint does not match the model config\n  " + "\n  ".join(problems))


def _infer_control_type(cfg: ModelConfig, model_dir: Path, stored: dict[str, StoredTensor]) -> ModelConfig:
    """Control type when config.json does not say: by the camera embedding's width
    (384*4 = cam, 448*4 = act), which cannot be wrong, then upstream's directory-name rule."""
    key = "patch_embedding_wancamctrl.weight"
    if key in stored:
        by_width = {384 * cfg.patch_volume: "cam", 448 * cfg.patch_volume: "act"}
        control = by_width.get(stored[key].shape[1])
        if control is not None:
            return cfg.replace(control_type=control)
    for name in (model_dir.resolve().name, model_dir.resolve().parent.name):
        if "cam" in name:
            return cfg.replace(control_type="cam")
        if "act" in name:
            return cfg.replace(control_type="act")
    return cfg


def load_model(model_dir: str | Path, dtype: torch.dtype = torch.bfloat16,
               device: torch.device | str = "cpu") -> CausalWanModel:
    """Build, validate and load one DiT from a model directory."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: checkpoint directory not found")
    cfg, raw = read_config(model_dir)
    stored = list_stored_tensors(model_dir)
    if "control_type" not in raw and "cam_channels" not in raw:
        cfg = _infer_control_type(cfg, model_dir, stored)
    with torch.device("meta"):
        model = CausalWanModel(cfg)
    validate(model, stored, model_dir)
    model = model.to(dtype).to_empty(device=device)   # cast on meta: one allocation, in dtype
    copy_stored_tensors(model, stored)
    log.info("loaded %s: %d tensors, %.2fB params, %s", model_dir, len(stored), model.num_params() / 1e9, dtype)
    return model.eval()


def save_model(model: CausalWanModel, out_dir: str | Path, *, num_shards: int = 1, fmt: str = "safetensors",
               class_name: str = "WanModel", extra_config: dict | None = None, fp8_rows: bool = False) -> Path:
    """Write a model directory in the released layout (config.json + weights); `fp8_rows`
    stores its matrices as FP8 with per-row scales (safetensors only; `quantize_rows_fp8`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = model.cfg.to_diffusers(class_name) | (extra_config or {})
    (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    keys = list(state)
    per_shard = math.ceil(len(keys) / num_shards)
    shards = [keys[i:i + per_shard] for i in range(0, len(keys), per_shard)]
    if fp8_rows:
        if fmt != "safetensors":
            raise ValueError("fp8_rows needs the safetensors format")
        state = quantize_rows_fp8(state)          # a matrix's scales go in its shard
        shards = [[k for key in shard for k in (key, key + FP8_SCALE_SUFFIX) if k in state] for shard in shards]
    if fmt == "pth":
        for i, shard in enumerate(shards):
            name = "diffusion_pytorch_model.pth" if len(shards) == 1 else f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.pth"
            torch.save({k: state[k] for k in shard}, out_dir / name)
        return out_dir
    if fmt != "safetensors":
        raise ValueError(f"format must be 'safetensors' or 'pth', got {fmt!r}")
    if len(shards) == 1:
        save_file(state, out_dir / WEIGHTS_NAME, metadata={"format": "pt"})
        return out_dir
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: state[k] for k in shard}, out_dir / name, metadata={"format": "pt"})
        weight_map |= {k: name for k in shard}
    total = sum(t.numel() * t.element_size() for t in state.values())
    (out_dir / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return out_dir


class ExpertPair(nn.Module):
    """The base model's two experts, routed by timestep: t >= 947 -> high-noise expert."""

    def __init__(self, high_noise: CausalWanModel, low_noise: CausalWanModel, boundary_t: float = EXPERT_BOUNDARY_T):
        super().__init__()
        if high_noise.cfg != low_noise.cfg:
            raise CheckpointError("high- and low-noise experts have different configs")
        self.high_noise, self.low_noise, self.boundary_t = high_noise, low_noise, boundary_t
        self.cfg = high_noise.cfg

    def expert_for(self, t: torch.Tensor | float) -> CausalWanModel:
        t = torch.as_tensor(t, dtype=torch.float64)
        high = t >= self.boundary_t
        if bool(high.all()):
            return self.high_noise
        if not bool(high.any()):
            return self.low_noise
        raise ValueError(f"timesteps {t.flatten().tolist()} straddle the expert boundary {self.boundary_t}: "
                         "split the batch by expert")

    def forward(self, x, t, *args, **kwargs):
        return self.expert_for(t)(x, t, *args, **kwargs)


def load_experts(root: str | Path, dtype: torch.dtype = torch.bfloat16, device="cpu") -> ExpertPair:
    """The base model (`high_noise_model/` + `low_noise_model/`) of a release root."""
    root = Path(root)
    for name in (HIGH_NOISE_DIR, LOW_NOISE_DIR):
        if not (root / name).is_dir():
            raise CheckpointError(f"{root}: no {name}/ directory (expected a LingBot-World release root)")
    return ExpertPair(load_model(root / HIGH_NOISE_DIR, dtype, device), load_model(root / LOW_NOISE_DIR, dtype, device))


def load_fast(root: str | Path, dtype: torch.dtype = torch.bfloat16, device="cpu") -> CausalWanModel:
    """LingBot-World-Fast: `lingbot_world_fast/` under a release root, or that directory itself."""
    root = Path(root)
    model_dir = root / FAST_DIR if (root / FAST_DIR).is_dir() else root
    return load_model(model_dir, dtype, device)
