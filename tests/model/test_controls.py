"""Keys -> poses -> folded rays (lingbot_rt.model.controls), against hand-computed values
and upstream's whole-clip preprocessing."""
import numpy as np
import pytest
import torch

from lingbot_rt.model import controls
from lingbot_rt.model.controls import (
    KEYS, WASDController, control_embedding, control_from_files, fold_pixels, parse_action_string,
    poses_from_actions, resample_to_latent_frames,
)

STEP = 0.05 / (1 + 1e-6)     # upstream's per-frame move: 0.05 along an axis normalised by (norm + 1e-6)


def rotation_x(degrees):
    a = np.deg2rad(degrees)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def rotation_y(degrees):
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def final_pose(action_string):
    return poses_from_actions(parse_action_string(action_string))[-1]


def pitch_degrees(pose):
    return np.rad2deg(np.arcsin(-pose[1, 2]))


# ---- keys -> poses --------------------------------------------------------------------------
def test_w_held_moves_forward_along_plus_z_without_rotation():
    controller = WASDController()
    controller.press("w")
    actions, poses = controller.step(10)
    assert actions.shape == (10, 8) and (actions[:, KEYS.index("w")] == 1).all() and actions.sum() == 10
    np.testing.assert_allclose(poses[:, :3, 3], [[0, 0, STEP * k] for k in range(1, 11)], atol=1e-15)
    np.testing.assert_allclose(poses[-1, :3, 3], [0, 0, 10 * 0.05], rtol=2e-6)
    np.testing.assert_array_equal(poses[-1, :3, :3], np.eye(3))


@pytest.mark.parametrize("keys, direction", [("a", [-1, 0, 0]), ("d", [1, 0, 0]), ("s", [0, 0, -1]),
                                             ("ws", [0, 0, 0]), ("wd", [1, 0, 1])])
def test_strafe_and_back(keys, direction):
    pose = final_pose(f"{keys}-10")
    np.testing.assert_allclose(pose[:3, 3], 10 * STEP * np.array(direction), atol=1e-12)
    np.testing.assert_array_equal(pose[:3, :3], np.eye(3))


@pytest.mark.parametrize("key, degrees_per_frame", [("j", -2.0), ("l", 2.0)])
def test_j_l_yaw_about_world_y(key, degrees_per_frame):
    pose = final_pose(f"{key}-5")
    np.testing.assert_allclose(pose[:3, :3], rotation_y(5 * degrees_per_frame), atol=1e-12)
    # L turns right: the forward axis (column 2) leans to +x (OpenCV x right)
    assert np.sign(pose[0, 2]) == np.sign(degrees_per_frame)
    np.testing.assert_array_equal(pose[:3, 3], 0)


def test_i_k_pitch_with_85_degree_clamp():
    assert pitch_degrees(final_pose("i-10")) == pytest.approx(20.0)
    assert final_pose("i-10")[1, 2] < 0              # I looks up: forward leans to -y (y is down)
    assert pitch_degrees(final_pose("k-10")) == pytest.approx(-20.0)
    # 42 steps reach 84 degrees; the 43rd would pass 85 and is dropped, every later one too
    assert pitch_degrees(final_pose("i-200")) == pytest.approx(84.0)
    assert pitch_degrees(final_pose("k-200")) == pytest.approx(-84.0)
    assert pitch_degrees(final_pose("i-200,k-5")) == pytest.approx(74.0)


def test_yaw_turns_about_the_world_vertical_and_pitch_about_the_camera_x():
    # R_new = R_yaw @ R @ R_pitch: after looking up then turning, the horizon stays level
    pose = final_pose("i-10,l-10")
    np.testing.assert_allclose(pose[:3, :3], rotation_y(20) @ rotation_x(20), atol=1e-12)
    assert pitch_degrees(pose) == pytest.approx(20.0)
    np.testing.assert_allclose(final_pose("l-10,i-10")[:3, :3], pose[:3, :3], atol=1e-12)


def test_w_moves_horizontally_while_looking_up_and_follows_yaw():
    pose = final_pose("i-20,w-10")
    np.testing.assert_allclose(pose[:3, 3], [0, 0, 0.5], rtol=1e-5, atol=1e-12)
    pose = final_pose("l-45,w-10")                     # 90 degrees right, then forward = +x
    np.testing.assert_allclose(pose[:3, 3], [0.5, 0, 0], rtol=1e-5, atol=1e-12)


def test_controller_continues_across_calls_and_follows_key_changes():
    controller = WASDController()
    controller.set_keys("wl")
    _, first = controller.step(3)
    controller.release("w")
    controller.press("I")                              # upper case is the same key
    _, second = controller.step(4)
    expected = poses_from_actions(parse_action_string("wl-3,il-4"))
    np.testing.assert_array_equal(np.concatenate([first, second]), expected[1:])
    np.testing.assert_array_equal(controller.pose, expected[-1])


@pytest.mark.parametrize("call", [lambda c: c.press("x"), lambda c: c.release("up"),
                                  lambda c: c.set_keys(["w", "q"])])
def test_controller_rejects_unknown_keys(call):
    with pytest.raises(ValueError, match="unknown key"):
        call(WASDController())


# ---- action strings ---------------------------------------------------------------------------
def test_parse_action_string():
    actions = parse_action_string("w-10, a-10，iw-15,none-5")
    assert actions.shape == (40, 8) and actions.dtype == np.float32
    w, a, i = (KEYS.index(k) for k in "wai")
    assert (actions[:10, w] == 1).all() and actions[:10].sum() == 10
    assert (actions[10:20, a] == 1).all() and actions[10:20].sum() == 10
    assert (actions[20:35, [i, w]] == 1).all() and actions[20:35].sum() == 30
    assert actions[35:].sum() == 0


@pytest.mark.parametrize("text, bad_token", [("w-3,x-2", "x-2"), ("w", "w"), ("w-3,a-0", "a-0"),
                                             ("w--2", "w--2"), ("w-3,,a-2", "''"), ("-4", "-4"),
                                             ("w-two", "w-two")])
def test_parse_action_string_names_the_bad_token(text, bad_token):
    with pytest.raises(ValueError, match=bad_token):
        parse_action_string(text)


def test_parse_action_string_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        parse_action_string("  ")


# ---- rays and fold ----------------------------------------------------------------------------
def hand_ray(row, col, fx, fy, cx, cy):
    d = np.array([(col + 0.5 - cx) / fx, (row + 0.5 - cy) / fy, 1.0])
    return d / np.linalg.norm(d)


def channel(c, row, col):
    """upstream's fold: channel c of pixel (row, col) within its 8x8 cell."""
    return c * 64 + (row % 8) * 8 + col % 8


@pytest.mark.parametrize("row, col", [(0, 0), (3, 13), (15, 15), (8, 7)])
def test_ray_embedding_of_a_known_camera(row, col):
    fx, fy, cx, cy = 10.0, 12.0, 7.0, 9.0
    emb = control_embedding(np.eye(4)[None], [fx, fy, cx, cy], 16, 16, "cam", dtype=torch.float32)
    assert emb.shape == (384, 1, 2, 2)
    cell = emb[:, 0, row // 8, col // 8]
    np.testing.assert_allclose([cell[channel(c, row, col)] for c in range(3)], 0)
    np.testing.assert_allclose([cell[channel(c, row, col)] for c in range(3, 6)],
                               hand_ray(row, col, fx, fy, cx, cy), atol=1e-6)


def test_relative_pose_gives_origin_and_rotated_ray():
    previous = np.eye(4)
    previous[:3, 3] = [5, 0, 0]                       # the delta is relative to this pose
    pose = previous.copy()
    pose[:3, :3] = rotation_y(90)
    pose[:3, 3] += [1, 2, 3]
    emb = control_embedding(pose[None], [8, 8, 8, 8], 16, 16, "cam", previous_pose=previous,
                            translation_scale=2.0, dtype=torch.float32)
    row, col = 2, 9
    cell = emb[:, 0, 0, 1]
    np.testing.assert_allclose([cell[channel(c, row, col)] for c in range(3)], [2, 4, 6], atol=1e-6)
    np.testing.assert_allclose([cell[channel(c, row, col)] for c in range(3, 6)],
                               rotation_y(90) @ hand_ray(row, col, 8, 8, 8, 8), atol=1e-6)


def test_fold_puts_pixel_r_c_of_cell_i_j_at_upstreams_channel():
    frames, height, width, chans = 2, 16, 24, 3
    values = torch.arange(frames * height * width * chans, dtype=torch.float32)
    per_pixel = values.view(frames, height, width, chans)
    folded = fold_pixels(per_pixel)
    assert folded.shape == (chans * 64, frames, 2, 3)
    for f, i, j, r, c, ch in [(0, 0, 0, 0, 0, 0), (1, 1, 2, 3, 5, 2), (0, 1, 0, 7, 1, 1)]:
        assert folded[ch * 64 + r * 8 + c, f, i, j] == per_pixel[f, 8 * i + r, 8 * j + c, ch]


def test_act_embedding_is_directions_then_broadcast_wasd():
    poses = poses_from_actions(parse_action_string("lw-8"))[::4]
    intrinsics = [10, 10, 8, 8]
    wasd = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1]])
    act = control_embedding(poses, intrinsics, 16, 16, "act", wasd=wasd, dtype=torch.float32)
    cam = control_embedding(poses, intrinsics, 16, 16, "cam", dtype=torch.float32)
    assert act.shape == (7 * 64, 3, 2, 2)
    torch.testing.assert_close(act[:192], cam[192:])
    keys = act[192:].reshape(4, 64, 3, 2, 2)
    torch.testing.assert_close(keys, torch.tensor(wasd, dtype=torch.float32).T[:, None, :, None, None]
                               .expand(4, 64, 3, 2, 2))


def test_embedding_arguments_are_checked():
    with pytest.raises(ValueError, match="wasd"):
        control_embedding(np.eye(4)[None], [8, 8, 8, 8], 16, 16, "act")
    with pytest.raises(ValueError, match="multiples of 8"):
        control_embedding(np.eye(4)[None], [8, 8, 8, 8], 12, 16, "cam")
    with pytest.raises(ValueError, match="control_type"):
        control_embedding(np.eye(4)[None], [8, 8, 8, 8], 16, 16, "rays")


# ---- streaming vs upstream's whole clip -----------------------------------------------------
def write_example(path, poses, intrinsics, actions):
    np.save(path / "poses.npy", poses.astype(np.float32))
    np.save(path / "intrinsics.npy", intrinsics.astype(np.float32))
    np.save(path / "action.npy", actions.astype(np.int32))


def stream_blocks(controller, num_blocks, control_type, intrinsics, height, width):
    """Three latent frames per block: frame 0 is the start image, each later one 4 video frames."""
    blocks, previous_pose = [], None
    for block_index in range(num_blocks):
        num_video_frames = 8 if block_index == 0 else 12
        actions, poses = controller.step(num_video_frames)
        latent_poses, latent_actions = poses[3::4], actions[3::4]
        if block_index == 0:
            latent_poses = np.concatenate([np.eye(4)[None], latent_poses])
            latent_actions = np.concatenate([actions[:1], latent_actions])
        wasd = latent_actions[:, :4] if control_type == "act" else None
        blocks.append(control_embedding(latent_poses, intrinsics, height, width, control_type,
                                        previous_pose=previous_pose, wasd=wasd, dtype=torch.float32))
        previous_pose = latent_poses[-1]
    return torch.cat(blocks, dim=1)


@pytest.mark.parametrize("control_type", ["cam", "act"])
def test_streamed_w_clip_equals_upstream_whole_clip(tmp_path, control_type):
    num_frames, height, width = 33, 32, 64            # 9 latent frames = 3 blocks
    actions = parse_action_string(f"w-{num_frames}")
    poses = poses_from_actions(actions)[:num_frames]
    intrinsics_480p = np.tile([500.0, 520.0, 416.0, 240.0], (num_frames, 1))
    write_example(tmp_path, poses, intrinsics_480p, actions[:, :4])
    offline = control_from_files(tmp_path, num_frames, height, width, control_type, dtype=torch.float32)
    assert offline.shape == (64 * (6 if control_type == "cam" else 7), 9, 4, 8)

    controller = WASDController()
    controller.press("w")
    intrinsics = controls.scale_intrinsics(intrinsics_480p[0], height, width)
    np.testing.assert_allclose(intrinsics, [500 * 64 / 832, 520 * 32 / 480, 32, 16], rtol=1e-6)
    streamed = stream_blocks(controller, 3, control_type, intrinsics, height, width)
    torch.testing.assert_close(streamed, offline, atol=2e-6, rtol=0)
    if control_type == "cam":                          # moving: origin = +z, norm 1 after the first frame
        origin_z = offline[2 * 64, :, 0, 0]
        torch.testing.assert_close(origin_z, torch.tensor([0.0] + [1.0] * 8))


def test_fixed_scale_keeps_speeds_where_upstream_rescales_the_fastest_to_one(tmp_path):
    actions = parse_action_string("w-8,wd-8")         # 0.2 then 0.2 * sqrt(2) per latent frame
    poses = poses_from_actions(actions)[:17]
    intrinsics_480p = np.tile([500.0, 500.0, 416.0, 240.0], (17, 1))
    write_example(tmp_path, poses, intrinsics_480p, actions[:17, :4])
    offline = control_from_files(tmp_path, 17, 16, 16, "cam", dtype=torch.float32)
    streamed = control_embedding(poses[::4], controls.scale_intrinsics(intrinsics_480p[0], 16, 16),
                                 16, 16, "cam", dtype=torch.float32)

    def speeds(emb):
        return emb[[0, 64, 128], :, 0, 0].norm(dim=0).tolist()

    root2 = np.sqrt(2)
    assert speeds(offline) == pytest.approx([0, 1 / root2, 1 / root2, 1, 1], abs=1e-5)
    assert speeds(streamed) == pytest.approx([0, 1, 1, root2, root2], abs=1e-5)
    torch.testing.assert_close(streamed[192:], offline[192:])


def test_resampling_matches_scipy_slerp_between_frames():
    transform = pytest.importorskip("scipy.spatial.transform")
    rng = np.random.default_rng(0)
    num_poses = 12                                     # not 4n+1: samples at 0, 5.5, 11
    rotations = transform.Rotation.from_rotvec(np.cumsum(rng.normal(0, 0.4, (num_poses, 3)), 0))
    poses = np.tile(np.eye(4), (num_poses, 1, 1))
    poses[:, :3, :3] = rotations.as_matrix()
    poses[:, :3, 3] = rng.normal(size=(num_poses, 3))
    expected = transform.Slerp(np.arange(num_poses), rotations)([0, 5.5, 11]).as_matrix()
    resampled = resample_to_latent_frames(poses)
    np.testing.assert_allclose(resampled[:, :3, :3], expected, atol=1e-12)
    np.testing.assert_allclose(resampled[1, :3, 3], (poses[5, :3, 3] + poses[6, :3, 3]) / 2, atol=1e-12)


def test_control_from_files_reports_missing_files_and_bad_shapes(tmp_path):
    with pytest.raises(FileNotFoundError, match="poses.npy"):
        control_from_files(tmp_path, 5, 16, 16, "cam")
    np.save(tmp_path / "poses.npy", np.zeros((5, 3, 4)))
    with pytest.raises(ValueError, match=r"poses.npy must have shape \[F, 4, 4\], got \[5, 3, 4\]"):
        control_from_files(tmp_path, 5, 16, 16, "cam")
    np.save(tmp_path / "poses.npy", np.tile(np.eye(4), (5, 1, 1)))
    np.save(tmp_path / "intrinsics.npy", np.ones((5, 3)))
    with pytest.raises(ValueError, match=r"intrinsics.npy must have shape \[F, 4\], got \[5, 3\]"):
        control_from_files(tmp_path, 5, 16, 16, "cam")
    np.save(tmp_path / "intrinsics.npy", np.ones((5, 4)))
    with pytest.raises(FileNotFoundError, match="action.npy"):
        control_from_files(tmp_path, 5, 16, 16, "act")
    with pytest.raises(ValueError, match="4n"):
        control_from_files(tmp_path, 6, 16, 16, "cam")


def test_embedding_feeds_the_dit():
    from tests.helpers import make_model
    model = make_model(control_type="cam")
    emb = control_embedding(poses_from_actions(parse_action_string("w-8"))[::4], [8, 8, 8, 8], 32, 32, "cam")
    assert emb.dtype == torch.bfloat16 and emb.shape == (model.cfg.control_channels, 3, 4, 4)
    tokens = model.embed_control(emb[None].float())
    assert tokens.shape == (1, 3 * 2 * 2, model.cfg.dim) and torch.isfinite(tokens).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_control_embedding_on_the_gpu_matches_the_cpu():
    poses = np.repeat(np.eye(4, dtype=np.float32)[None], 3, 0)
    poses[:, 0, 3] = [0.1, 0.2, 0.35]
    args = (poses, np.array([300.0, 300.0, 208.0, 120.0]), 240, 416, "cam")
    on_gpu = control_embedding(*args, previous_pose=np.eye(4), device="cuda")
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), control_embedding(*args, previous_pose=np.eye(4)))
