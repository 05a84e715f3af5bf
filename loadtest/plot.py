"""The load test's PNG, drawn with matplotlib (the optional `loadtest` extra).

Why matplotlib and not Pillow: axes, ticks, legends and log scales come right in a few lines; by
hand with Pillow they would be a hundred lines of layout code to maintain. It is imported here
only, so the load tester itself runs without it; `lingbot-rt loadtest --out` checks for it
before a run starts.

* ramp: action->frame latency p50/p95/p99 (top) and delivered FPS per player, mean and min
  (bottom) against the number of players, with the targets and the capacity marked;
* run: frames received in each second, per player (top), and each player's latency
  p50/p95/p99 (bottom).
"""
from __future__ import annotations

from pathlib import Path


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError('the plot needs matplotlib: python -m pip install -e ".[loadtest]"') from None


def plot_document(doc: dict, path: str | Path) -> None:
    from matplotlib.figure import Figure
    figure = Figure(figsize=(8, 7), layout="constrained")
    top, bottom = figure.subplots(2, 1)
    info = doc.get("server_info", {}).get("models") or [{}]
    model = info[0]
    size = f"{model['height']}x{model['width']} at {model['fps']} fps, " if model else ""
    figure.suptitle(f"lingbot-rt loadtest {doc['server']}: {size}{doc['config']['duration_s']:g} s per "
                    f"{'step' if doc['mode'] == 'ramp' else 'run'}, pattern {doc['config']['pattern']}",
                    fontsize=10)
    if doc["mode"] == "ramp":
        _plot_ramp(doc["ramp"], top, bottom)
    else:
        _plot_run(doc["run"], top, bottom)
    figure.savefig(path, dpi=100)


def _plot_ramp(ramp: dict, top, bottom) -> None:
    players = [step["players"] for step in ramp["steps"]]
    for key, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^-")):
        values = [step["overall"]["latency_ms"][key] for step in ramp["steps"]]
        top.plot(players, [float("nan") if v is None else v for v in values], style, label=key)
    if ramp["target"]["p99_ms"] is not None:
        top.axhline(ramp["target"]["p99_ms"], color="red", linestyle=":", label="p99 target")
    top.set_ylabel("action->frame latency (ms)")
    bottom.plot(players, [s["overall"]["delivered_fps"]["mean"] for s in ramp["steps"]], "o-", label="mean")
    bottom.plot(players, [s["overall"]["delivered_fps"]["min"] for s in ramp["steps"]], "v--", label="min")
    bottom.axhline(ramp["target"]["fps"], color="red", linestyle=":", label="fps target")
    bottom.set_ylabel("delivered FPS per player")
    bottom.set_xlabel("players")
    for axes in (top, bottom):
        if ramp["capacity"]:
            axes.axvline(ramp["capacity"], color="green", alpha=0.4, label=f"capacity {ramp['capacity']}")
        for step in ramp["steps"]:
            if not step["passed"]:
                axes.axvspan(step["players"] - 0.5, step["players"] + 0.5, color="red", alpha=0.1)
        axes.set_xticks(players)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)


def _plot_run(run: dict, top, bottom) -> None:
    sessions = [s for s in run["sessions"] if s["frames"]]
    for s in sessions:
        top.plot(range(len(s["frames_per_second"])), s["frames_per_second"], label=f"player {s['player']}")
    if sessions:
        top.axhline(sessions[0]["fps"], color="red", linestyle=":", label="session fps")
    top.set_xlabel("seconds since session start")
    top.set_ylabel("frames received per second")
    top.legend(fontsize=8, ncol=4)
    width = 0.25
    for offset, key in enumerate(("p50", "p95", "p99")):
        values = [s["latency_ms"][key] or 0.0 for s in sessions]
        bottom.bar([s["player"] + (offset - 1) * width for s in sessions], values, width, label=key)
    bottom.set_xticks([s["player"] for s in sessions])
    bottom.set_xlabel("player")
    bottom.set_ylabel("action->frame latency (ms)")
    bottom.legend(fontsize=8)
    for axes in (top, bottom):
        axes.grid(alpha=0.3)
