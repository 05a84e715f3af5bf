"""The Python `Client` and `lingbot-rt play` against a real gateway (tiny release, CPU)."""
from __future__ import annotations

import asyncio
import json

import grpc
import numpy as np
import pytest
import torch

from lingbot_rt.cli import main
from lingbot_rt.model.controls import parse_action_string
from lingbot_rt.pipeline.streaming import StreamConfig, StreamingInference
from lingbot_rt.pipeline.tiny_checkpoint import make_tiny_checkpoint
from lingbot_rt.pipeline.video import read_video
from lingbot_rt.services.client import Client, PlayError, held_keys, play_script
from lingbot_rt.services.scheduler import SchedulerConfig
from tests.services.test_gateway import SIZE, image_bytes, run, serving, wait_for_running


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    release = make_tiny_checkpoint(tmp_path_factory.mktemp("release") / "tiny")
    return StreamingInference.from_release(release, StreamConfig(max_sessions=1), dtype=torch.float32)


def test_held_keys_of_an_action_string():
    assert held_keys(parse_action_string("w-2,none-1,jw-1")) == ["w", "w", "", "wj"]


def test_client_plays_a_session_whose_frames_follow_its_action(pipeline):
    async def scenario():
        async with serving(pipeline) as (gateway, address), Client(address) as client:
            session = await client.play(image=image_bytes(), prompt="a forest", seed=3)
            assert (session.height, session.width, session.fps) == (SIZE, SIZE, 16)
            sequence = session.act("w")
            frames = [frame async for frame in session.frames(30)]
            assert [f.sequence for f in frames] == list(range(30))
            assert frames[-1].action_sequence == sequence
            first = next(f for f in frames if f.action_sequence == sequence)
            assert first.latency_s is not None and first.latency_s > 0
            assert sum(f.latency_s is not None for f in frames) == 1      # once per action
            assert first.image().size == (SIZE, SIZE)
            await session.stop()
            await wait_for_running(gateway, 0)   # the server frees the slot
            assert gateway.scheduler.stats()["running"] == 0
    run(scenario())


def test_a_full_server_refuses_the_client_with_resource_exhausted(pipeline):
    async def scenario():
        config = SchedulerConfig(max_waiting=0)
        async with serving(pipeline, config) as (_, address), Client(address) as client:
            first = await client.play(image=image_bytes())
            with pytest.raises(PlayError) as refused:
                await client.play(image=image_bytes())
            assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "full" in refused.value.message
            await first.stop()
    run(scenario())


def test_play_needs_one_start_picture():
    async def scenario():
        async with Client("127.0.0.1:1") as client:
            with pytest.raises(ValueError, match="exactly one of image"):
                await client.play()
    asyncio.run(scenario())


def test_play_script_and_the_play_command(pipeline, tmp_path, capsys):
    async def scenario():
        async with serving(pipeline) as (_, address):
            frames, session = await play_script(address, parse_action_string("w-13,none-8"), image=image_bytes())
            assert len(frames) == 21 and frames[-1].action_sequence >= 0      # the first action shows
            image = tmp_path / "start.png"
            image.write_bytes(image_bytes())
            out = tmp_path / "play.mp4"
            code = await asyncio.to_thread(main, ["play", "--server", address, "--image", str(image),
                                                  "--actions", "w-9,none-12", "--out", str(out)])
            return code, out
    code, out = run(scenario())
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == 21 and report["size"] == [SIZE, SIZE]
    assert report["action_to_frame_ms"]["count"] >= 1 and report["delivered_fps"] > 0
    video = read_video(out)
    assert video.shape[0] == 21 and isinstance(video, np.ndarray)

