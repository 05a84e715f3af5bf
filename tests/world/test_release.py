"""The built-in world as a release root (`lingbot_rt/world/release.py`): the default model."""
import json

import numpy as np
import pytest
import torch

from lingbot_rt.cli import main
from lingbot_rt.distillation.config import student_schedule
from lingbot_rt.model.checkpoint import CheckpointError, load_model
from lingbot_rt.model.config import model_config
from lingbot_rt.pipeline import StreamingInference
from lingbot_rt.pipeline.release import MANIFEST_FILE, release_stream_config
from lingbot_rt.world.release import DEFAULT_RELEASE, SOURCE_FILE, ensure_default_release, make_world_release
from lingbot_rt.world.shipped import SHIPPED_DIR, shipped_student_dir
from lingbot_rt.world.stream import world_stream_config, world_streaming


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_world_release(tmp_path_factory.mktemp("release") / "world")


def test_shipped_student_is_the_world_model_with_fp8_matrices():
    from safetensors import safe_open
    student = load_model(shipped_student_dir(), dtype=torch.float32)
    assert student.cfg == model_config("world") and student.cfg.control_type == "cam"
    assert all(torch.isfinite(p).all() for p in student.parameters())
    with safe_open(shipped_student_dir() / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert f.get_slice("blocks.0.self_attn.q.weight").get_dtype() == "F8_E4M3"
    # it was distilled to stream with a compressed memory (`weights/MODEL_CARD.md`), and records it
    cache = student_schedule(shipped_student_dir()).cache()
    assert (cache.sink_frames, cache.window_frames, cache.recent_frames, cache.memory_pool) == (3, 15, 3, (2, 2))


def test_world_release_streams_as_the_student_does(release):
    """The release the server loads plays what `world_streaming` (the evaluation's setup) plays;
    the only difference is the release's text encoder, loaded in bf16."""
    assert release_stream_config(release) == world_stream_config(student_schedule(shipped_student_dir()))
    image = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    served = StreamingInference.from_release(release, device="cpu", dtype=torch.float32)
    evaluated = world_streaming(shipped_student_dir())
    assert served.config == evaluated.config
    a, b = ([block.frames.astype(np.float64) for block in p.stream_generate(image, "a maze", lambda: "w",
                                                                            num_frames=21, seed=3)]
            for p in (served, evaluated))
    assert [len(x) for x in a] == [9, 12]
    mse = np.mean(np.concatenate([(x - y) ** 2 for x, y in zip(a, b)]))
    assert 10 * np.log10(255**2 / max(mse, 1e-12)) > 45


def test_default_release_is_made_on_first_use_and_remade_for_another_student(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = ensure_default_release(DEFAULT_RELEASE)
    assert "making" in capsys.readouterr().out and (root / MANIFEST_FILE).is_file()
    ensure_default_release(DEFAULT_RELEASE)
    assert capsys.readouterr().out == ""                     # up to date: left alone
    (root / SOURCE_FILE).write_text("another student\n")
    ensure_default_release(DEFAULT_RELEASE)
    assert "making" in capsys.readouterr().out
    assert ensure_default_release(tmp_path / "elsewhere") == tmp_path / "elsewhere"   # only the default is made


def test_release_command_writes_a_loadable_root(tmp_path, capsys):
    assert main(["world", "release", "--out", str(tmp_path / "w"), "--weights", str(SHIPPED_DIR)]) == 0
    assert "lingbot-rt serve --checkpoint" in capsys.readouterr().out
    assert release_stream_config(tmp_path / "w").schedule_indices == (0, 250, 500, 750)
    assert main(["world", "release", "--out", str(tmp_path / "w"), "--weights", str(SHIPPED_DIR)]) == 0  # replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a world release"):
        make_world_release(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("stream,match", [({"height": 64}, "frame size is the manifest's"),
                                          ({"window_size": 15}, r"unknown key\(s\) \['window_size'\]"),
                                          ({"schedule_indices": [0, 2000]}, "schedule")])
def test_bad_stream_settings_in_a_manifest_are_named(tmp_path, release, stream, match):
    import shutil
    root = tmp_path / "r"
    shutil.copytree(release, root)
    manifest = json.loads((root / MANIFEST_FILE).read_text())
    (root / MANIFEST_FILE).write_text(json.dumps({**manifest, "stream": stream}))
    with pytest.raises(CheckpointError, match=match):
        release_stream_config(root)


def test_a_student_recording_action_guidance_is_served_with_it(tmp_path):
    import shutil
    weights = tmp_path / "weights"
    shutil.copytree(SHIPPED_DIR, weights)
    path = shipped_student_dir(weights) / "student_schedule.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"action_guidance": 0.5}))
    served = release_stream_config(make_world_release(tmp_path / "world", weights))
    assert served.action_guidance == 0.5 and served == world_stream_config(student_schedule(shipped_student_dir(weights)))
    assert release_stream_config(make_world_release(tmp_path / "default")).action_guidance == 0.0
