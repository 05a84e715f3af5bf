"""Numbers from `SessionTrace`s: per session and over a run. Pure functions, no I/O.

Definitions (also in loadtest/README.md):

* delivered FPS: frames received after a session's first frame / seconds from that first frame
  to the end of its run. Blocks of 9-12 frames arrive together, so a rate between two arrivals
  means nothing; over the run it is what a player gets. Time to the first frame is its own number.
* action->frame latency: for each action that shows, the first frame conditioned on it arrives
  at t; latency = t - the action's client_timestamp, echoed by the server: the client's clock
  only (`Client` computes it). A change of keys waits for the next block to start, so it
  includes up to one block of waiting, as a person pressing a key sees it.
* dropped frames: gaps in `Frame.sequence` (the server's newest-wins queue dropped them);
  frame gaps: time between consecutive arrivals (p99, max).
* playback: a player showing frames at the session fps from the first arrival, skipping dropped
  ones. A stall is a frame arriving more than one frame interval after the player needed it;
  `playback_lag_s` is how far the paced picture trails the last arrival at the end (growing when
  the server sends faster than the session fps).
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from .player import SessionTrace


def percentiles_ms(seconds: list[float]) -> dict:
    """count, p50, p95, p99 and max in milliseconds (linear interpolation; None when empty)."""
    if not seconds:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    values = np.asarray(seconds) * 1e3
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"count": len(values), "p50": round(float(p50), 1), "p95": round(float(p95), 1),
            "p99": round(float(p99), 1), "max": round(float(values.max()), 1)}


def playback(arrivals: list[float], fps: int) -> dict:
    """Stalls and the final lag of a player that shows every received frame at `fps`."""
    interval, stalls, stall_s = 1.0 / fps, 0, 0.0
    shown = arrivals[0]
    for arrival in arrivals[1:]:
        due = shown + interval
        if arrival > due + interval:
            stalls, stall_s = stalls + 1, stall_s + arrival - due
        shown = max(arrival, due)
    return {"stalls": stalls, "stall_s": round(stall_s, 3), "playback_lag_s": round(shown - arrivals[-1], 3)}


def dropped_frames(sequences: list[int]) -> int:
    """Frames missing from the sequence numbers received (the first frame is 0)."""
    expected, dropped = 0, 0
    for sequence in sequences:
        dropped += max(0, sequence - expected)
        expected = sequence + 1
    return dropped


def summarize_session(trace: SessionTrace) -> dict:
    summary = {"player": trace.player, "outcome": trace.outcome, "code": trace.code, "phase": trace.phase,
               "message": trace.message, "session_id": trace.session_id, "fps": trace.fps,
               "frames": len(trace.arrivals), "actions_sent": trace.actions_sent,
               "start_s": round(trace.started - trace.requested, 3) if trace.started else None}
    if not trace.arrivals:
        return summary | {"delivered_fps": 0.0, "latency_ms": percentiles_ms([]), "dropped_frames": 0}
    first, span = trace.arrivals[0], trace.ended - trace.arrivals[0]
    gaps = np.diff(trace.arrivals)
    bins = trace.started + np.arange(int(trace.ended - trace.started) + 1)     # whole seconds
    return summary | {
        "delivered_fps": round((len(trace.arrivals) - 1) / span, 2) if span > 0 else 0.0,
        "first_frame_s": round(first - trace.started, 3),
        "latency_ms": percentiles_ms(trace.latencies_s),
        "dropped_frames": dropped_frames(trace.sequences),
        "frame_gap_ms": {"p99": round(float(np.percentile(gaps, 99)) * 1e3, 1) if len(gaps) else None,
                         "max": round(float(gaps.max()) * 1e3, 1) if len(gaps) else None},
        **playback(trace.arrivals, trace.fps),
        # frames received in each whole second since session_started
        "frames_per_second": np.histogram(trace.arrivals, bins)[0].tolist(),
    }


def summarize_run(traces: list[SessionTrace], sessions: list[dict]) -> dict:
    """Overall numbers of one run: `sessions` are `summarize_session` of `traces`, same order."""
    played = [s for s in sessions if s["frames"] > 0]
    fps = [s["delivered_fps"] for s in played]
    errors = Counter(s["code"] for s in sessions if s["outcome"] == "error")
    return {
        "players": len(sessions),
        "played": sum(s["outcome"] == "played" for s in sessions),
        "refused": sum(s["outcome"] == "refused" for s in sessions),
        "errors": sum(errors.values()),
        "errors_by_code": dict(sorted(errors.items())),
        "frames": sum(s["frames"] for s in sessions),
        "delivered_fps": {"mean": round(float(np.mean(fps)), 2) if fps else 0.0,
                          "min": min(fps, default=0.0), "max": max(fps, default=0.0),
                          "total": round(sum(fps), 2)},
        "latency_ms": percentiles_ms([x for t in traces for x in t.latencies_s]),
        "dropped_frames": sum(s["dropped_frames"] for s in sessions),
        "stalls": sum(s.get("stalls", 0) for s in sessions),
        "max_frame_gap_ms": max((s["frame_gap_ms"]["max"] or 0.0 for s in played), default=None),
        "max_playback_lag_s": max((s["playback_lag_s"] for s in played), default=None),
        "first_frame_s_max": max((s["first_frame_s"] for s in played), default=None),
        "actions_sent": sum(s["actions_sent"] for s in sessions),
    }
