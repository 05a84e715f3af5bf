"""The DiT and VAE stages as two Ray actors (CPU: gloo between them) on a tiny release, against
the in-process stages."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lingbot_rt.model.image_condition import ImageError
from lingbot_rt.pipeline import StreamConfig, StreamingInference
from lingbot_rt.pipeline.streaming import CapacityError
from lingbot_rt.pipeline.tiny_checkpoint import make_tiny_checkpoint
from lingbot_rt.services.executor import InProcessExecutor, StageError
from lingbot_rt.services.stages import BlockRequest
from tests.services.helpers import make_scheduler, wait_until
from tests.test_streaming import start_image

ray = pytest.importorskip("ray", reason="the Ray stages need Ray: python -m pip install -e '.[ray]'")
from lingbot_rt.services.ray_stages import RayExecutor, RayStagesConfig  # noqa: E402 - needs ray

SESSIONS = {"a": (1, "a forest"), "b": (2, "a city")}          # session_id -> seed (also of its image), prompt
ACTORS = RayStagesConfig(num_cpus=0.5)      # two pairs of actors fit in the 2 CPUs (one torch thread each)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("release") / "tiny")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def stages(release, cluster):
    executor = RayExecutor(release, StreamConfig(max_sessions=2), ACTORS)
    yield executor
    executor.shutdown()


@pytest.fixture(scope="module")
def in_process(release):
    return InProcessExecutor(StreamingInference.from_release(release, StreamConfig(max_sessions=2),
                                                             dtype=torch.float32))


@contextlib.contextmanager
def actor_threads():
    """The actors' torch thread count (one): float sums in the same order, so equal bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def add_sessions(scheduler) -> None:
    for session_id, (seed, prompt) in SESSIONS.items():
        scheduler.add_session(session_id, start_image(seed=seed), prompt, seed=seed)


def stream_inline(executor, keys_per_block: list[dict[str, str]]):
    """Both sessions, one `step` per block, the keys of a block's dict pressed (as action
    number `block`) just before it; the recorded outputs."""
    scheduler, recorder = make_scheduler(executor)
    try:
        add_sessions(scheduler)
        for seq, keys in enumerate(keys_per_block):
            for session_id, held in keys.items():
                scheduler.set_action(session_id, held, seq, float(seq))
            scheduler.step()
    finally:
        scheduler.shutdown()
    return recorder


def assert_same_blocks(got, want) -> None:
    assert [(o.block_index, o.first_frame, o.action_seq) for o in got] == \
           [(o.block_index, o.first_frame, o.action_seq) for o in want]
    for g, w in zip(got, want):
        assert g.frames.dtype == np.uint8 and g.frames.shape == w.frames.shape
        np.testing.assert_array_equal(g.frames, w.frames)


def test_ray_stages_stream_the_frames_of_the_in_process_stages(stages, in_process):
    keys = [{"a": "w", "b": "l"}, {"a": "wd", "b": "s"}, {"a": "", "b": "j"}, {"a": "il", "b": "wa"}]
    with actor_threads():
        want = stream_inline(in_process, keys)
    got = stream_inline(stages, keys)
    for session_id in SESSIONS:
        assert len(got.of(session_id)) == 4
        assert_same_blocks(got.of(session_id), want.of(session_id))
    assert got.errors == [] and got.batch_sizes == [2, 2, 2, 2]


def test_pipelined_ray_stages_stream_the_same_frames(stages, in_process):
    """The engine running: the DiT actor denoises the next batch while the VAE actor decodes."""
    keys = {"a": "w", "b": "l"}
    with actor_threads():
        want = stream_inline(in_process, [keys, {}, {}, {}])         # held from the start, never changed
    scheduler, got = make_scheduler(stages)
    add_sessions(scheduler)
    for session_id, held in keys.items():
        scheduler.set_action(session_id, held, 0, 0.0)
    scheduler.start()
    try:
        wait_until(lambda: all(len(got.of(session_id)) >= 4 for session_id in SESSIONS))
    finally:
        scheduler.shutdown()
    assert got.errors == []
    for session_id in SESSIONS:
        assert_same_blocks(got.of(session_id)[:4], want.of(session_id))


def first_block(executor, session_id: str) -> np.ndarray:
    block = executor.denoise([BlockRequest(session_id, frozenset())])[session_id]
    return block.decode()


def test_closing_a_session_frees_its_kv_slot_and_decoder_on_both_actors(stages):
    seed, prompt = SESSIONS["a"]
    stages.open_session("a", start_image(seed=seed), prompt, seed)
    original = first_block(stages, "a")
    first_block(stages, "a")                          # "a" is 2 blocks in: KV rows and decoder cache in use
    stages.open_session("b", start_image(seed=2), "x", 2)
    assert stages.free_slots == 0
    with pytest.raises(CapacityError, match="slots are in use"):        # the DiT actor's own error
        stages.open_session("c", start_image(), "x", 0)
    stages.close_session("a")
    assert stages.free_slots == 1
    stages.open_session("a", start_image(seed=seed), prompt, seed)      # the freed row, a new decoder
    reopened = first_block(stages, "a")
    assert reopened.shape == (9, 64, 64, 3)           # a stream's first block: a fresh VAE decoder
    np.testing.assert_array_equal(reopened, original)  # fresh KV rows and stream state too
    for session_id in ("a", "b"):
        stages.close_session(session_id)
    assert stages.free_slots == 2
    with pytest.raises(ValueError, match="not open"):
        stages.close_session("a")


def test_a_bad_request_fails_only_its_session(stages):
    stages.open_session("good", start_image(seed=1), "x", 1)
    with pytest.raises(ImageError, match="mode 'RGBA'"):                # unwrapped, nothing claimed
        stages.open_session("bad", Image.new("RGBA", (64, 64)), "x", 0)
    assert stages.free_slots == 1
    blocks = stages.denoise([BlockRequest("good", frozenset("w")), BlockRequest("ghost", frozenset())])
    assert isinstance(blocks["ghost"], ValueError) and "not open on the DiT stage" in str(blocks["ghost"])
    assert blocks["good"].decode().shape == (9, 64, 64, 3)

    stages.open_session("broken", start_image(seed=2), "x", 2)
    ray.get(stages.vae.close_session.remote("broken"))                  # its decoder is gone: decode fails
    blocks = stages.denoise([BlockRequest("good", frozenset()), BlockRequest("broken", frozenset())])
    with pytest.raises(ValueError, match="not open on the VAE stage"):
        blocks["broken"].decode()
    assert blocks["good"].decode().shape == (12, 64, 64, 3)
    ray.get(stages.vae.open_session.remote("broken"))
    for session_id in ("good", "broken"):
        stages.close_session(session_id)


def test_a_dead_actor_ends_every_session_with_a_stage_error(release, cluster):
    executor = RayExecutor(release, StreamConfig(max_sessions=2), ACTORS)
    scheduler, recorder = make_scheduler(executor)
    try:
        add_sessions(scheduler)
        assert scheduler.step() == 2
        ray.kill(executor.dit)
        assert scheduler.step() == 0
        assert sorted(session_id for session_id, _ in recorder.errors) == ["a", "b"]
        for _, exc in recorder.errors:
            assert isinstance(exc, StageError) and "the DiT stage's Ray actor died" in str(exc)
        scheduler.add_session("late", start_image(), "x")
        scheduler.step()
        assert recorder.errors[-1][0] == "late" and isinstance(recorder.errors[-1][1], StageError)
        assert scheduler.stats()["running"] == 0
    finally:
        scheduler.shutdown()
        executor.shutdown()


def test_an_actor_that_cannot_start_is_a_stage_error(tmp_path, release, cluster):
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in Path(release).iterdir():
        (broken / path.name).symlink_to(path)
    (broken / "Wan2.1_VAE.pth").unlink()
    with pytest.raises(StageError, match="DiT stage's Ray actor failed to start: .*missing VAE weights"):
        RayExecutor(broken, StreamConfig(max_sessions=1), ACTORS)


def test_actors_that_cannot_be_placed_are_a_stage_error_not_a_hang(release, cluster):
    with pytest.raises(StageError, match="did not start within 1 s: .* 3 CPU and 0 GPU free"):
        RayExecutor(release, StreamConfig(), RayStagesConfig(num_cpus=3, start_timeout_s=1))


def test_placement_gives_each_actor_a_gpu_shares_one_or_uses_the_cpu():
    assert [RayStagesConfig().gpus_per_actor(n) for n in (0, 1, 2, 8)] == [0.0, 0.5, 1.0, 1.0]
    assert RayStagesConfig(num_gpus=0).gpus_per_actor(8) == 0.0
    with pytest.raises(ValueError, match="per stage actor"):
        RayStagesConfig(num_gpus=2)
