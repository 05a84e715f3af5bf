"""The load tester (`loadtest/`): its pure pieces, then real players over gRPC against a gateway
serving the tiny release on CPU (64x64), as `lingbot-rt loadtest` runs them."""
from __future__ import annotations

import asyncio
import json
from itertools import islice

import pytest
import torch
from PIL import Image

from lingbot_rt.cli import main
from lingbot_rt.pipeline.streaming import StreamConfig, StreamingInference
from lingbot_rt.pipeline.tiny_checkpoint import make_tiny_checkpoint
from lingbot_rt.services.scheduler import SchedulerConfig
from loadtest import report
from loadtest.cli import parse_duration
from loadtest.driver import Target, parse_ramp, run_players, run_ramp
from loadtest.patterns import KeyPattern
from loadtest.player import PlayerConfig, SessionTrace
from loadtest.stats import dropped_frames, playback, summarize_run, summarize_session
from tests.services.test_gateway import image_bytes, serving

STEP_S = 2.0                                # seconds each player plays in the gRPC tests
SESSION_KEYS = {"player", "outcome", "code", "phase", "message", "session_id", "fps", "frames", "actions_sent",
                "start_s", "delivered_fps", "first_frame_s", "latency_ms", "dropped_frames", "frame_gap_ms",
                "stalls", "stall_s", "playback_lag_s", "frames_per_second"}
OVERALL_KEYS = {"players", "played", "refused", "errors", "errors_by_code", "frames", "delivered_fps", "latency_ms",
                "dropped_frames", "stalls", "max_frame_gap_ms", "max_playback_lag_s", "first_frame_s_max",
                "actions_sent"}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    release = make_tiny_checkpoint(tmp_path_factory.mktemp("release") / "tiny")
    return StreamingInference.from_release(release, StreamConfig(max_sessions=2), dtype=torch.float32)


def players(address: str, pattern: str = "turns", stagger_s: float = 0.05) -> PlayerConfig:
    return PlayerConfig(address, KeyPattern.parse(pattern), STEP_S, image=image_bytes(), stagger_s=stagger_s)


def run(scenario):
    return asyncio.run(asyncio.wait_for(scenario, 60.0))


def write_document(mode: str, result: dict, out) -> dict:
    doc = report.document(mode, result, command="lingbot-rt loadtest (test)", server="127.0.0.1:0",
                          server_info={"models": [{"name": "m", "height": 64, "width": 64, "fps": 16}]},
                          config={"duration_s": STEP_S, "pattern": "turns"}, machine_note="test")
    json_path, png_path = report.write(doc, out)
    with Image.open(png_path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100
        image.verify()
    return json.loads(json_path.read_text())


# ---- pure pieces ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, seconds", [("60s", 60.0), ("2m", 120.0), ("90", 90.0), ("1.5m", 90.0),
                                           ("500ms", 0.5), (" 3S ", 3.0), ("1h", 3600.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "0", "0s", "-5s", "10x", "s", "1e3", "5 minutes"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(text)


def test_the_command_line_refuses_a_bad_duration(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["loadtest", "--duration", "soon"])
    assert exited.value.code == 2 and "bad duration 'soon'" in capsys.readouterr().err


def test_ramp_specs():
    assert parse_ramp("1,2,4,8") == [1, 2, 4, 8]
    assert parse_ramp("1..4") == [1, 2, 3, 4]
    assert parse_ramp("1..16x2") == [1, 2, 4, 8, 16]
    assert parse_ramp("2..10x3") == [2, 6]
    for bad in ("4,2", "0,1", "0..3", "3..1", "1..4x1", "a", "", "1,,2"):
        with pytest.raises(ValueError, match="bad ramp"):
            parse_ramp(bad)


def test_patterns_loop_and_start_at_their_phase():
    pattern = KeyPattern.parse("w-10,l-5,w-3")          # the two w segments join across the loop
    assert pattern.segments == (("w", 13), ("l", 5)) and pattern.loop_frames == 18
    assert list(islice(pattern.changes(fps=10), 4)) == [(0.0, "w"), (1.3, "l"), (1.8, "w"), (3.1, "l")]
    assert list(islice(pattern.changes(fps=10, phase_frames=12), 3)) == [(0.0, "w"), (0.1, "l"), (0.6, "w")]
    assert list(KeyPattern.parse("none-4").changes(fps=16)) == [(0.0, "")]   # one action, then nothing
    assert KeyPattern.parse("mixed").segments[3] == ("", 16)
    with pytest.raises(ValueError, match="pattern must be one of"):
        KeyPattern.parse("zigzag")


def test_session_numbers_from_a_hand_made_trace():
    trace = SessionTrace(player=0, outcome="played", fps=10, requested=0.0, started=0.5, ended=4.5,
                         arrivals=[1.0, 1.0, 1.0, 2.0, 2.0, 4.0], sequences=[0, 1, 2, 5, 6, 7],
                         latencies_s=[0.2, 0.4], actions_sent=3)
    summary = summarize_session(trace)
    assert summary["dropped_frames"] == 2                       # 3 and 4 never came
    assert summary["delivered_fps"] == round(5 / 3.5, 2)        # after the first frame, to the end
    assert summary["first_frame_s"] == 0.5 and summary["start_s"] == 0.5
    assert summary["latency_ms"]["count"] == 2 and summary["latency_ms"]["p50"] == 300.0
    assert summary["frame_gap_ms"]["max"] == 2000.0
    assert summary["frames_per_second"] == [3, 2, 0, 1]        # whole seconds from session_started
    # paced at 10 fps: 1.0, 1.1, 1.2 shown; 2.0 is 0.7 s late (a stall), 2.1; 4.0 is 1.8 s late
    assert playback(trace.arrivals, 10) == {"stalls": 2, "stall_s": 2.5, "playback_lag_s": 0.0}
    assert playback([0.0] * 5, 10)["playback_lag_s"] == 0.4   # frames faster than fps pile up
    assert dropped_frames([2, 3]) == 2 and dropped_frames([]) == 0
    assert set(summary) == SESSION_KEYS


def test_refusals_are_counted_apart_from_errors():
    played = SessionTrace(0, "played", fps=10, started=0.1, ended=1.5, arrivals=[0.5, 1.5], sequences=[0, 1],
                          latencies_s=[0.3])
    refused = SessionTrace(1, "refused", code="RESOURCE_EXHAUSTED", phase="start")
    failed = SessionTrace(2, "error", code="INTERNAL", phase="play", started=0.1, ended=1.0)
    traces = [played, refused, failed]
    overall = summarize_run(traces, [summarize_session(t) for t in traces])
    assert (overall["played"], overall["refused"], overall["errors"]) == (1, 1, 1)
    assert overall["errors_by_code"] == {"INTERNAL": 1} and set(overall) == OVERALL_KEYS
    assert Target(fps=0.5).misses(overall) == ["1 session(s) refused", "1 error(s): {'INTERNAL': 1}"]
    assert Target(fps=0.5).misses(overall | {"refused": 0, "errors": 0}) == []
    assert Target(fps=5.0, p99_ms=100).misses(overall | {"refused": 0, "errors": 0}) == [
        "min delivered fps 1.0 < 5", "action->frame p99 300.0 ms > 100 ms"]


# ---- real players over gRPC -------------------------------------------------------------------
def test_two_players_play_without_errors(pipeline, tmp_path):
    async def scenario():
        async with serving(pipeline) as (_, address):
            return await run_players(players(address), 2)
    result = run(scenario())
    overall = result["overall"]
    assert (overall["played"], overall["refused"], overall["errors"]) == (2, 0, 0), result["sessions"]
    for session in result["sessions"]:
        assert session["frames"] > 0 and session["delivered_fps"] > 0 and session["actions_sent"] >= 1
        assert session["latency_ms"]["count"] >= 1 and session["latency_ms"]["p50"] > 0
    assert overall["frames"] == sum(s["frames"] for s in result["sessions"])
    assert overall["latency_ms"]["count"] == sum(s["latency_ms"]["count"] for s in result["sessions"])
    doc = write_document("run", result, tmp_path)
    assert set(report.DOCUMENT_KEYS) | {"run"} == set(doc)
    assert set(doc["run"]["overall"]) == OVERALL_KEYS and set(doc["run"]["sessions"][0]) == SESSION_KEYS
    assert doc["commit"] == report.commit() and doc["machine"]["note"] == "test"


def test_a_full_server_refuses_the_extra_player_and_that_is_no_error(pipeline):
    async def scenario():
        async with serving(pipeline, SchedulerConfig(max_waiting=0)) as (_, address):   # 2 slots, no queue
            return await run_players(players(address, stagger_s=0.3), 3)
    result = run(scenario())
    overall = result["overall"]
    assert (overall["played"], overall["refused"], overall["errors"]) == (2, 1, 0), result["sessions"]
    refused = next(s for s in result["sessions"] if s["outcome"] == "refused")
    assert refused["code"] == "RESOURCE_EXHAUSTED" and refused["phase"] == "start" and refused["frames"] == 0


def test_the_ramp_stops_at_the_first_failing_step(pipeline, tmp_path):
    async def scenario():
        async with serving(pipeline, SchedulerConfig(max_waiting=0)) as (_, address):   # 3 players cannot fit
            config = players(address)
            passing = await run_ramp(config, [1, 2, 3, 4], Target(fps=1.0, p99_ms=60_000))
            impossible = await run_ramp(config, [1, 2], Target(fps=10_000))
            return passing, impossible
    passing, impossible = run(scenario())
    assert [s["players"] for s in passing["steps"]] == [1, 2, 3]            # 4 never ran
    assert [s["passed"] for s in passing["steps"]] == [True, True, False], passing["steps"]
    assert passing["steps"][2]["misses"] == ["1 session(s) refused"]
    assert passing["capacity"] == 2 and passing["limit_found"]
    assert [s["players"] for s in impossible["steps"]] == [1] and impossible["capacity"] == 0
    assert "min delivered fps" in impossible["steps"][0]["misses"][0]
    doc = write_document("ramp", passing, tmp_path)
    assert set(report.DOCUMENT_KEYS) | {"ramp"} == set(doc)
    assert set(doc["ramp"]) == {"steps", "capacity", "limit_found", "target"}
    assert set(doc["ramp"]["steps"][0]) == {"players", "overall", "sessions", "misses", "passed"}


def test_the_loadtest_command_writes_json_and_png(pipeline, tmp_path, capsys):
    image = tmp_path / "start.png"
    image.write_bytes(image_bytes())
    out = tmp_path / "out"

    async def scenario():
        async with serving(pipeline) as (_, address):
            common = ["loadtest", "--server", address, "--duration", "1.5s", "--image", str(image)]
            return (await asyncio.to_thread(main, [*common, "--players", "1", "--out", str(out)]),
                    await asyncio.to_thread(main, [*common, "--ramp", "1", "--target-fps", "0.5"]))
    assert run(scenario()) == (0, 0)
    doc = json.loads((out / report.JSON_NAME).read_text())
    assert doc["mode"] == "run" and doc["config"]["duration_s"] == 1.5 and doc["run"]["overall"]["played"] == 1
    assert doc["command"].startswith("lingbot-rt loadtest --server 127.0.0.1:") and "--players 1" in doc["command"]
    assert doc["server_info"]["max_sessions"] == 2 and doc["server_info"]["models"][0]["fps"] == 16
    with Image.open(out / report.PNG_NAME) as png:
        assert png.format == "PNG"
    printed = capsys.readouterr().out
    assert "1 players: fps/player" in printed and "-> pass" in printed
    assert "capacity: 1 players (every step passed: at least this many)" in printed


def test_the_command_refuses_players_and_ramp_together(capsys):
    assert main(["loadtest", "--players", "2", "--ramp", "1,2"]) == 2
    assert "not both" in capsys.readouterr().err
