"""What every benchmark does last: add the machine facts, print the JSON result, write it."""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import torch


def finish(result: dict, device: torch.device, out: str | None) -> None:
    """Add device, torch, commit and peak GPU memory (unless `result` has it) to `result`; print
    it; write it to `out`."""
    result["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    result["torch"] = torch.__version__
    # The device machine's copy of the tree may carry stale git metadata: pass the commit in
    # LINGBOT_RT_COMMIT (`LINGBOT_RT_COMMIT=$(git rev-parse --short HEAD)` here, before `run`).
    result["commit"] = os.environ.get("LINGBOT_RT_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    if device.type == "cuda":
        result.setdefault("peak_memory_gib", round(torch.cuda.max_memory_allocated(device) / 2**30, 2))
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
