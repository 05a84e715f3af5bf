"""The load test's record: the JSON document (what ran, where, on which commit, and every
number), a short text summary for the terminal, and the files under `--out`.

Document keys: tool, mode ("run" | "ramp"), command, server, server_info (GetCapacity and
ListModels), machine (the client's: the load tester measures from here), commit,
uncommitted_changes (the checkout differs from that commit), started_at, config, then `run`
({overall, sessions}) or `ramp` ({steps: [{players, passed, misses, overall, sessions}],
capacity, limit_found, target}).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

JSON_NAME, PNG_NAME = "loadtest.json", "loadtest.png"
DOCUMENT_KEYS = ("tool", "mode", "command", "server", "server_info", "machine", "commit", "uncommitted_changes",
                 "started_at", "config")


def machine(note: str = "") -> dict:
    """The client machine; `note` says what the numbers cannot (e.g. "shared 2-core box")."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            # at the end of the run: the 5 and 15 min averages cover it; on a shared box they show
            # how busy it was besides the server and the load tester
            "load_average": [round(x, 2) for x in os.getloadavg()], "note": note}


def commit() -> str:
    """As benchmarks/results_io.py: LINGBOT_RT_COMMIT when set (a copied tree's git metadata may
    be stale), else `git rev-parse --short HEAD` ("" outside a checkout)."""
    if os.environ.get("LINGBOT_RT_COMMIT"):
        return os.environ["LINGBOT_RT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def uncommitted_changes() -> bool | None:
    """Whether the checkout differs from its commit (None when git cannot tell)."""
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, cwd=Path(__file__).parent, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(status.stdout.strip()) if status.returncode == 0 else None


def document(mode: str, result: dict, *, command: str, server: str, server_info: dict, config: dict,
             machine_note: str = "", started_at: datetime | None = None) -> dict:
    started_at = started_at or datetime.now(timezone.utc)
    return {"tool": "lingbot-rt loadtest", "mode": mode, "command": command, "server": server,
            "server_info": server_info, "machine": machine(machine_note), "commit": commit(),
            "uncommitted_changes": uncommitted_changes(),
            "started_at": started_at.isoformat(timespec="seconds"), "config": config, mode: result}


def write(doc: dict, out: str | Path) -> tuple[Path, Path]:
    """`out`/loadtest.json and `out`/loadtest.png; returns their paths."""
    from .plot import plot_document
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / JSON_NAME, out / PNG_NAME
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    plot_document(doc, png_path)
    return json_path, png_path


def overall_line(players: int, overall: dict) -> str:
    fps, latency = overall["delivered_fps"], overall["latency_ms"]
    return (f"{players:3d} players: fps/player mean {fps['mean']} min {fps['min']} | action->frame ms "
            f"p50 {latency['p50']} p95 {latency['p95']} p99 {latency['p99']} (n={latency['count']}) | "
            f"dropped {overall['dropped_frames']} stalls {overall['stalls']} | refused {overall['refused']} "
            f"errors {overall['errors']} {overall['errors_by_code'] or ''}".rstrip())


def step_line(step: dict) -> str:
    """One ramp step and its verdict."""
    verdict = "pass" if step["passed"] else "FAIL: " + "; ".join(step["misses"])
    return f"{overall_line(step['players'], step['overall'])}  -> {verdict}"


def summary_text(doc: dict) -> str:
    if doc["mode"] == "run":
        run = doc["run"]
        lines = [overall_line(len(run["sessions"]), run["overall"])]
        for s in run["sessions"]:
            latency = s["latency_ms"]
            lines.append(f"  player {s['player']}: {s['outcome']}{' ' + s['code'] if s['code'] else ''}, "
                         f"{s['frames']} frames, {s['delivered_fps']} fps, p99 {latency['p99']} ms")
        return "\n".join(lines)
    ramp = doc["ramp"]                       # its steps were printed as they ended (`step_line`)
    bound = "" if ramp["limit_found"] else " (every step passed: at least this many)"
    return f"capacity: {ramp['capacity']} players{bound}"
