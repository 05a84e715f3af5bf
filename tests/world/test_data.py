"""Dataset generation and loading (lingbot_rt.world.data) and the `world gen-data` command."""
import argparse
import json

import numpy as np
import pytest
import torch

from lingbot_rt.model.controls import INTRINSICS_SOURCE_HW, KEYS
from lingbot_rt.world import data
from lingbot_rt.world.cli import build
from lingbot_rt.world.config import WorldConfig
from lingbot_rt.world.data import ClipDataset, ClipError, generate_dataset, load_clip
from lingbot_rt.world.map import generate_map
from lingbot_rt.world.renderer import Renderer

SMALL = dict(num_clips=3, frames_per_clip=9, height=24, width=40, seed=5, shard_size=2,
             world=WorldConfig(grid_size=16), progress=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("world") / "data", **SMALL)


def test_layout_shapes_and_manifest(dataset):
    clips = ClipDataset(dataset)
    assert [p.relative_to(dataset).as_posix() for p in clips.clip_dirs] == [
        "shard_00000/clip_000000", "shard_00000/clip_000001", "shard_00001/clip_000002"]
    clip = clips[2]
    assert clip.frames.shape == (9, 24, 40, 3) and clip.frames.dtype == np.uint8
    assert clip.poses.shape == (9, 4, 4) and clip.intrinsics.shape == (9, 4)
    assert clip.actions.shape == (9, 4) and clip.keys.shape == (9, len(KEYS))
    assert (clip.path / "image.jpg").is_file() and "sky" in clip.prompt
    manifest = json.loads((dataset / "shard_00001" / "manifest.json").read_text())
    assert manifest["num_clips"] == 1 and manifest["clips"][0]["name"] == "clip_000002"
    assert manifest["clips"][0]["prompt"] == clip.prompt


def test_stored_poses_and_intrinsics_reproduce_the_stored_frames(dataset):
    for clip in ClipDataset(dataset):
        meta = json.loads((clip.path / "meta.json").read_text())
        world = generate_map(meta["map_seed"], WorldConfig.from_dict(meta["world"]))
        height, width = clip.frames.shape[1:3]
        rendered = Renderer(world).render(torch.from_numpy(clip.poses), clip.render_intrinsics(), height, width)
        np.testing.assert_array_equal(rendered.numpy(), clip.frames)
        # intrinsics.npy is in 480x832 pixels: our 24x40 render's K scaled by 832/40 and 480/24
        fx, fy, cx, cy = world.config.intrinsics(height, width)
        source_h, source_w = INTRINSICS_SOURCE_HW
        np.testing.assert_allclose(clip.intrinsics[0], [fx * source_w / width, fy * source_h / height,
                                                        cx * source_w / width, cy * source_h / height], rtol=1e-6)
        assert (clip.intrinsics == clip.intrinsics[0]).all()
        np.testing.assert_array_equal(clip.actions, clip.keys[:, :4])


def test_second_run_skips_finished_clips_and_resumes_missing_ones(dataset, monkeypatch):
    written, original = [], data.write_clip

    def counting_write_clip(clip_dir, *args):
        written.append(clip_dir.name)
        return original(clip_dir, *args)
    monkeypatch.setattr(data, "write_clip", counting_write_clip)
    frames_before = np.load(dataset / "shard_00000" / "clip_000000" / "frames.npy")
    generate_dataset(dataset, **SMALL)
    assert written == []
    generate_dataset(dataset, **{**SMALL, "num_clips": 4})      # more clips: only the new one is made
    assert written == ["clip_000003"]
    np.testing.assert_array_equal(np.load(dataset / "shard_00000" / "clip_000000" / "frames.npy"), frames_before)
    with pytest.raises(ValueError, match="other settings.*height"):
        generate_dataset(dataset, **{**SMALL, "height": 32})


def test_parallel_workers_write_the_same_clips(dataset, tmp_path):
    parallel = generate_dataset(tmp_path / "parallel", **SMALL, workers=2)
    # (the module's dataset may have been extended to 4 clips by a test above: compare the first 3)
    assert (json.loads((parallel / "shard_00000/manifest.json").read_text())
            == json.loads((dataset / "shard_00000/manifest.json").read_text()))
    assert len(ClipDataset(parallel)) == 3
    for clip_dir in ClipDataset(dataset).clip_dirs[:3]:
        for name in ("frames.npy", "poses.npy", "keys.npy", "intrinsics.npy"):
            np.testing.assert_array_equal(np.load(parallel / clip_dir.relative_to(dataset) / name),
                                          np.load(clip_dir / name), err_msg=name)
    with pytest.raises(ValueError, match="workers must be positive"):
        generate_dataset(tmp_path / "none", **SMALL, workers=0)


def test_clip_with_a_wrong_shape_file_names_the_file(dataset, tmp_path):
    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    source = dataset / "shard_00000" / "clip_000001"
    for name in data.CLIP_FILES:
        (clip_dir / name).write_bytes((source / name).read_bytes())
    np.save(clip_dir / "poses.npy", np.zeros((8, 4, 4), np.float32))
    with pytest.raises(ClipError, match=r"poses\.npy must have shape \[9, 4, 4\], got \[8, 4, 4\]"):
        load_clip(clip_dir)
    np.save(clip_dir / "poses.npy", np.zeros((9, 4, 4), np.float64))
    with pytest.raises(ClipError, match=r"poses\.npy must be float32"):
        load_clip(clip_dir)
    (clip_dir / "keys.npy").unlink()
    np.save(clip_dir / "poses.npy", np.zeros((9, 4, 4), np.float32))
    with pytest.raises(ClipError, match=r"keys\.npy is missing"):
        load_clip(clip_dir)


def test_frames_per_clip_must_be_4n_plus_1(tmp_path):
    with pytest.raises(ValueError, match="4n\\+1"):
        generate_dataset(tmp_path, **{**SMALL, "frames_per_clip": 8})


def test_cli_gen_data(tmp_path, capsys):
    parser = build(argparse.ArgumentParser())
    args = parser.parse_args(["gen-data", "--out", str(tmp_path / "cli"), "--clips", "1", "--frames", "5",
                              "--height", "16", "--width", "16", "--seed", "1", "--shard-size", "4", "--quiet"])
    assert args.func(args) == 0
    clip = load_clip(tmp_path / "cli" / "shard_00000" / "clip_000000")
    assert clip.frames.shape == (5, 16, 16, 3)
    assert "wrote 1 clips" in capsys.readouterr().out
