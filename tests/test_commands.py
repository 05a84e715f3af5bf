"""The seed's commands on a tiny release: `lingbot-rt generate`, the browser demo, the script."""
from __future__ import annotations

import http.client
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from lingbot_rt.cli import main
from lingbot_rt.pipeline import StreamingInference
from lingbot_rt.pipeline.tiny_checkpoint import make_tiny_checkpoint
from lingbot_rt.pipeline.video import read_video
from tests.helpers import load_script
from tests.test_streaming import start_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("release") / "tiny")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "input.jpg"
    Image.fromarray(start_image()).save(path)
    return path


def test_generate_writes_the_clip(release, image_file, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    assert main(["generate", "--checkpoint", str(release), "--image", str(image_file), "--prompt", "a forest",
                 "--actions", "w-10,d-5", "--out", str(out)]) == 0
    video = read_video(out)
    assert video.shape == (16, 64, 64, 3)
    assert "16 frames 64x64" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--actions", "w-10,q-3"], "unknown key(s) ['q']"),
    (["--image", "/nonexistent.png"], "does not exist"),
    (["--out", "clip.avi"], "must be an .mp4"),
])
def test_generate_refuses_bad_input_with_a_message(release, image_file, tmp_path, capsys, extra, message):
    args = ["generate", "--checkpoint", str(release), "--image", str(image_file), "--out", str(tmp_path / "o.mp4")]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err


def test_generate_names_a_missing_model_file(release, image_file, tmp_path, capsys):
    (tmp_path / "copy").mkdir()
    for item in release.iterdir():
        if item.name != "Wan2.1_VAE.pth":
            (tmp_path / "copy" / item.name).symlink_to(item)
    assert main(["generate", "--checkpoint", str(tmp_path / "copy"), "--image", str(image_file),
                 "--out", str(tmp_path / "o.mp4")]) == 2
    assert "missing VAE weights" in capsys.readouterr().err


def test_serve_with_ray_stages_refuses_a_device(release, capsys):
    assert main(["serve", "--checkpoint", str(release), "--stages", "ray", "--device", "cpu"]) == 2
    assert "Ray places the two stage actors" in capsys.readouterr().err


def test_browser_demo_serves_the_page_takes_keys_and_streams_jpeg(release):
    demo = load_script("demo/wasd_demo.py")
    pipeline = StreamingInference.from_release(release)
    server = demo.build_server(pipeline, start_image(), "a forest", "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        def request(method, path, body=None):
            conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
            conn.request(method, path, body=body)
            return conn, conn.getresponse()

        _, page = request("GET", "/")
        assert page.status == 200 and b"/keys" in page.read()
        _, ok = request("POST", "/keys", b"wl")
        assert ok.status == 204
        _, bad = request("POST", "/keys", b"wq")
        assert bad.status == 400
        conn, stream = request("GET", "/stream")
        assert stream.getheader("Content-Type").startswith("multipart/x-mixed-replace")
        head = stream.read(200)
        assert b"Content-Type: image/jpeg" in head and b"\xff\xd8" in head     # a JPEG starts
        conn.close()
    finally:
        server.shutdown()
        server.server_close()


def test_seed_streaming_script_prints_rate_and_shapes():
    result = subprocess.run([sys.executable, "tests/test_streaming.py", "--num_frames", "10"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "frames (9, 64, 64, 3) uint8" in result.stdout and "10 frames of 64x64" in result.stdout
