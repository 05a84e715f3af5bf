"""The browser path end to end: page, WebSocket bridge, gRPC gateway, scheduler, tiny release."""
from __future__ import annotations

import asyncio
import base64
import io
import json

import aiohttp
import pytest
import torch
from PIL import Image

from lingbot_rt.pipeline import StreamConfig, StreamingInference
from lingbot_rt.pipeline.tiny_checkpoint import make_tiny_checkpoint
from lingbot_rt.services.app import ServeAddresses, Server
from lingbot_rt.services.executor import InProcessExecutor
from lingbot_rt.services.scheduler import SchedulerConfig
from tests.test_streaming import start_image


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("release") / "tiny")


def serve(release, max_sessions=2, max_waiting=0):
    pipeline = StreamingInference.from_release(release, StreamConfig(max_sessions=max_sessions), dtype=torch.float32)
    return Server(InProcessExecutor(pipeline), SchedulerConfig(max_waiting=max_waiting),
                  addresses=ServeAddresses("127.0.0.1", 0, 0, None))


async def receive_until(ws, predicate, limit=200):
    messages = []
    for _ in range(limit):
        msg = await asyncio.wait_for(ws.receive(), timeout=30)
        if msg.type == aiohttp.WSMsgType.TEXT:
            messages.append(json.loads(msg.data))
        elif msg.type == aiohttp.WSMsgType.BINARY:
            messages.append(msg.data)
        else:
            messages.append(msg.type)
        if predicate(messages):
            return messages
    raise AssertionError(f"condition not met in {limit} messages: {messages[-3:]}")


def png_bytes(image) -> str:
    out = io.BytesIO()
    Image.fromarray(image).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def test_page_and_websocket_play(release):
    async def main():
        server = serve(release)
        _, web_port = await server.start()
        try:
            async with aiohttp.ClientSession() as http:
                page = await http.get(f"http://127.0.0.1:{web_port}/")
                assert page.status == 200 and "/play" in await page.text()
                async with http.ws_connect(f"http://127.0.0.1:{web_port}/play") as ws:
                    await ws.send_str(json.dumps({"type": "start", "image": png_bytes(start_image()), "prompt": "a"}))
                    await ws.send_str(json.dumps({"type": "action", "keys": "w", "t": 1234.5, "seq": 1}))
                    got = await receive_until(ws, lambda m: any(isinstance(x, dict) and x.get("action_seq") == 1
                                                                for x in m)
                                              and sum(isinstance(x, bytes) for x in m) >= 12)
                    assert got[0]["type"] == "started" and (got[0]["height"], got[0]["width"]) == (64, 64)
                    frames = [m for m in got if isinstance(m, dict) and m["type"] == "frame"]
                    jpegs = [m for m in got if isinstance(m, bytes)]
                    assert [f["seq"] for f in frames[:12]] == list(range(12))
                    assert Image.open(io.BytesIO(jpegs[0])).size == (64, 64)
                    echoed = [f for f in frames if f["action_seq"] == 1]
                    assert echoed and echoed[0]["t"] == pytest.approx(1234.5)
                    await ws.send_str("{not json")
                    got = await receive_until(ws, lambda m: any(isinstance(x, dict) and x.get("type") == "error"
                                                                for x in m))
                    assert "not JSON" in [x for x in got if isinstance(x, dict) and x["type"] == "error"][0]["message"]
                    await ws.send_str(json.dumps({"type": "stop"}))
        finally:
            await server.stop(grace=0.5)

    asyncio.run(main())


def test_full_server_answers_resource_exhausted_on_the_page(release):
    async def main():
        server = serve(release, max_sessions=1)
        _, web_port = await server.start()
        try:
            async with aiohttp.ClientSession() as http:
                async with http.ws_connect(f"http://127.0.0.1:{web_port}/play") as first:
                    await first.send_str(json.dumps({"type": "start", "scene": "world-3"}))
                    await receive_until(first, lambda m: any(isinstance(x, bytes) for x in m))
                    async with http.ws_connect(f"http://127.0.0.1:{web_port}/play") as second:
                        await second.send_str(json.dumps({"type": "start", "scene": "world-3"}))
                        got = await receive_until(second, lambda m: any(isinstance(x, dict) and x.get("type") ==
                                                                        "error" for x in m))
                        error = [x for x in got if isinstance(x, dict) and x["type"] == "error"][0]
                        assert error["code"] == "RESOURCE_EXHAUSTED" and "full" in error["message"]
        finally:
            await server.stop(grace=0.5)

    asyncio.run(main())
