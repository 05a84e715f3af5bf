"""The session scheduler on a tiny release (CPU, 64x64)."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from lingbot_rt.model.image_condition import ImageError
from lingbot_rt.pipeline import StreamConfig, StreamingInference
from lingbot_rt.pipeline.streaming import CapacityError
from lingbot_rt.pipeline.tiny_checkpoint import make_tiny_checkpoint
from lingbot_rt.services.executor import InProcessExecutor
from lingbot_rt.services.scheduler import SchedulerConfig
from tests.services.helpers import make_scheduler, wait_until
from tests.test_streaming import start_image


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("release") / "tiny")


@pytest.fixture(scope="module")
def pipeline(release):
    return StreamingInference.from_release(release, StreamConfig(max_sessions=2), dtype=torch.float32)


def make(pipeline, **config):
    return make_scheduler(InProcessExecutor(pipeline), **config)


@pytest.fixture
def scheduler(pipeline):
    scheduler, recorder = make(pipeline, max_waiting=1)
    yield scheduler, recorder
    scheduler.shutdown()
    assert pipeline.free_slots == 2


def test_sessions_at_different_positions_share_a_step(scheduler):
    scheduler, recorder = scheduler
    scheduler.add_session("a", start_image(seed=1), "a forest", seed=1)
    assert scheduler.step() == 1 and scheduler.step() == 1
    scheduler.add_session("b", start_image(seed=2), "a city", seed=2)
    assert scheduler.step() == 2                                     # a's block 2 with b's block 0
    assert recorder.batch_sizes == [1, 1, 2]
    assert [o.block_index for o in recorder.of("a")] == [0, 1, 2]
    assert [o.first_frame for o in recorder.of("a")] == [0, 9, 21]
    assert [len(o.frames) for o in recorder.of("a")] == [9, 12, 12]
    assert [o.block_index for o in recorder.of("b")] == [0]
    assert recorder.of("b")[0].frames.shape == (9, 64, 64, 3)


def test_scheduled_frames_equal_the_single_stream(pipeline, scheduler):
    scheduler, recorder = scheduler
    image = start_image(seed=3)
    reference = [b.frames for b in pipeline.stream_generate(image, "a road", lambda: "w", num_frames=33, seed=5)]
    scheduler.add_session("a", image, "a road", seed=5)
    scheduler.add_session("other", start_image(seed=4), "a forest", seed=6)    # shares every batch
    for seq in range(3):
        scheduler.set_action("a", "w", seq, 0.0)
        scheduler.step()
    scheduled = [o.frames for o in recorder.of("a")]
    assert [f.shape for f in scheduled] == [f.shape for f in reference]
    for got, want in zip(scheduled, reference):
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1     # batched float sums may round apart


def test_latest_action_at_block_start_conditions_the_block(scheduler):
    scheduler, recorder = scheduler
    scheduler.add_session("a", start_image(), "a road")
    scheduler.step()
    assert recorder.outputs[-1].action_seq == -1 and recorder.outputs[-1].client_time == 0.0
    scheduler.set_action("a", "w", 1, 10.0)
    scheduler.set_action("a", "wl", 2, 11.0)                           # newest wins
    scheduler.set_action("a", "s", 1, 12.0)                            # late duplicate: ignored
    scheduler.step()
    assert (recorder.outputs[-1].action_seq, recorder.outputs[-1].client_time) == (2, 11.0)


def test_admission_queue_and_refusal(pipeline, scheduler):
    scheduler, recorder = scheduler
    for name in ("a", "b", "c"):                                       # 2 slots + 1 waiting
        scheduler.add_session(name, start_image(), "x")
    with pytest.raises(CapacityError, match="server full"):
        scheduler.add_session("d", start_image(), "x")
    scheduler.step()
    assert scheduler.stats() == {"running": 2, "waiting": 1, "max_sessions": 2}
    scheduler.remove_session("a")
    scheduler.step()                                                   # a's slot goes to c
    assert scheduler.stats() == {"running": 2, "waiting": 0, "max_sessions": 2}
    assert recorder.of("c")[0].block_index == 0
    scheduler.remove_session("a")                                      # idempotent


def test_a_slot_being_released_counts_as_free(pipeline):
    """A session that left frees its slot at the engine's next step; a new one arriving before
    that is queued for it, not refused (even with no waiting room)."""
    scheduler, recorder = make(pipeline, max_waiting=0)
    try:
        for name in ("a", "b"):
            scheduler.add_session(name, start_image(), "x")
        scheduler.step()
        with pytest.raises(CapacityError, match="server full"):
            scheduler.add_session("c", start_image(), "x")
        scheduler.remove_session("a")
        scheduler.add_session("c", start_image(), "x")
        with pytest.raises(CapacityError, match="server full"):       # one slot is being released, not two
            scheduler.add_session("d", start_image(), "x")
        scheduler.step()
        assert scheduler.stats() == {"running": 2, "waiting": 0, "max_sessions": 2}
        assert recorder.of("c")[0].block_index == 0
    finally:
        scheduler.shutdown()


def test_bad_input_is_refused_with_a_clear_error(scheduler):
    scheduler, _ = scheduler
    with pytest.raises(ImageError, match="mode 'RGBA'"):
        scheduler.add_session("a", Image.new("RGBA", (64, 64)), "x")
    scheduler.add_session("a", start_image(), "x")
    with pytest.raises(ValueError, match="already exists"):
        scheduler.add_session("a", start_image(), "x")
    with pytest.raises(ValueError, match="unknown key 'q'"):
        scheduler.set_action("a", "wq", 0, 0.0)
    with pytest.raises(KeyError, match="unknown session"):
        scheduler.set_action("nobody", "w", 0, 0.0)


def test_a_failing_session_does_not_take_others_down(pipeline, scheduler, monkeypatch):
    scheduler, recorder = scheduler
    scheduler.add_session("good", start_image(seed=1), "x")
    scheduler.add_session("bad", start_image(seed=2), "x")
    scheduler.step()
    real_decode = pipeline.decode
    bad_session = scheduler.executor.dit.sessions["bad"]

    def decode(session, latents):
        if session is bad_session:
            raise RuntimeError("decoder exploded")
        return real_decode(session, latents)

    monkeypatch.setattr(pipeline, "decode", decode)
    scheduler.step()
    scheduler.step()
    assert [sid for sid, _ in recorder.errors] == ["bad"]
    assert "decoder exploded" in str(recorder.errors[0][1])
    assert [o.block_index for o in recorder.of("good")] == [0, 1, 2]
    assert scheduler.stats()["running"] == 1


def test_deadlines_alternate_sessions_when_the_batch_is_one(pipeline):
    scheduler, recorder = make(pipeline, max_batch=1)
    try:
        scheduler.add_session("a", start_image(seed=1), "x")
        scheduler.add_session("b", start_image(seed=2), "x")
        for _ in range(4):
            scheduler.step()
        assert [o.session_id for o in recorder.outputs] in (["a", "b", "a", "b"], ["b", "a", "b", "a"])
    finally:
        scheduler.shutdown()


class FakeClock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_paced_session_gets_one_block_per_block_duration(pipeline):
    """Blocks are made when the player needs them: ahead of the stream they would only sit in its
    buffer, and every action would wait behind them."""
    clock = FakeClock()
    scheduler, recorder = make(pipeline, pace=True, lead=0.1, clock=clock)
    block = scheduler.block_seconds
    try:
        scheduler.add_session("a", start_image(seed=1), "x")
        assert scheduler.step() == 1                     # the first block is due at once
        assert scheduler.step() == 0                     # the next one only a block-duration later
        clock.t = 100.0 + 0.85 * block
        assert scheduler.step() == 0
        clock.t = 100.0 + 0.95 * block                   # within the lead: may start early
        assert scheduler.step() == 1
        clock.t = 100.0 + 2.5 * block                    # due at 2 blocks; the server was late
        assert scheduler.step() == 1
        clock.t = 100.0 + 3.0 * block                    # no burst to catch up: next due at 3.5
        assert scheduler.step() == 0
        clock.t = 100.0 + 3.5 * block
        assert scheduler.step() == 1
        assert [o.block_index for o in recorder.outputs] == [0, 1, 2, 3]
        assert recorder.outputs[2].timings["queue"] == pytest.approx(0.5 * block)   # how late it started
    finally:
        scheduler.shutdown()


def test_paced_batch_takes_sessions_due_within_the_lead(pipeline):
    clock = FakeClock()
    scheduler, recorder = make(pipeline, pace=True, lead=0.1, clock=clock)
    block = scheduler.block_seconds
    try:
        scheduler.add_session("a", start_image(seed=1), "x")
        assert scheduler.step() == 1
        clock.t = 100.0 + 0.95 * block                   # b arrives; a is due within the lead: one batch
        scheduler.add_session("b", start_image(seed=2), "x")
        assert scheduler.step() == 2
        clock.t = 100.0 + 1.5 * block
        assert scheduler.step() == 0
        clock.t = 100.0 + 1.95 * block                   # both due again together: batches stay full
        assert scheduler.step() == 2
        assert recorder.batch_sizes == [1, 2, 2]
        assert [o.block_index for o in recorder.of("b")] == [0, 1]
    finally:
        scheduler.shutdown()


def test_scheduler_config_refuses_a_lead_of_a_whole_block():
    with pytest.raises(ValueError, match="lead"):
        SchedulerConfig(lead=1.0)


def test_engine_thread_streams_and_shuts_down(pipeline):
    scheduler, recorder = make(pipeline)
    scheduler.start()
    try:
        scheduler.add_session("a", start_image(), "x")
        wait_until(lambda: len(recorder.outputs) >= 3)
        assert [o.block_index for o in recorder.outputs[:3]] == [0, 1, 2]
    finally:
        scheduler.shutdown()
    assert pipeline.free_slots == 2


def test_actions_and_removal_during_session_opening_are_kept(pipeline, scheduler, monkeypatch):
    """The gateway may act while the engine opens a session (it is in neither queue then)."""
    scheduler, recorder = scheduler
    real_open = pipeline.open_session

    def open_session(image, prompt, seed):
        scheduler.set_action("a", "w", 3, 7.0)          # arrives mid-open: must not be lost
        return real_open(image, prompt, seed)

    monkeypatch.setattr(pipeline, "open_session", open_session)
    scheduler.add_session("a", start_image(), "x")
    scheduler.step()
    assert (recorder.of("a")[0].action_seq, recorder.of("a")[0].client_time) == (3, 7.0)

    def open_then_leave(image, prompt, seed):
        scheduler.remove_session("b")                   # the client left mid-open: the slot comes back
        return real_open(image, prompt, seed)

    monkeypatch.setattr(pipeline, "open_session", open_then_leave)
    scheduler.add_session("b", start_image(), "x")
    scheduler.step()
    assert recorder.of("b") == [] and scheduler.stats()["running"] == 1 and pipeline.free_slots == 1


def test_a_session_being_opened_counts_against_capacity(pipeline, monkeypatch):
    """While the engine opens a session its slot is not taken yet; admission must not hand it
    out twice (2 slots, no waiting room: a being opened + c waiting leave no room for b)."""
    scheduler, _ = make(pipeline, max_waiting=0)
    real_open = pipeline.open_session
    outcome = []

    def open_session(image, prompt, seed):
        if not outcome:
            try:
                scheduler.add_session("b", start_image(), "x")
                outcome.append("accepted")
            except CapacityError as exc:
                outcome.append(str(exc))
        return real_open(image, prompt, seed)

    monkeypatch.setattr(pipeline, "open_session", open_session)
    try:
        scheduler.add_session("a", start_image(), "x")
        scheduler.add_session("c", start_image(), "x")
        scheduler.step()
        assert len(outcome) == 1 and "server full" in outcome[0]
    finally:
        scheduler.shutdown()


def test_started_engine_denoises_the_next_batch_while_the_vae_decodes(pipeline, monkeypatch):
    """Pipelined stages: with a slow decode, a DiT step begins before the previous decode ends."""
    events = []
    real_denoise, real_decode = pipeline.denoise, pipeline.decode

    def denoise(sessions, plans):
        events.append(("denoise", time.monotonic()))
        return real_denoise(sessions, plans)

    def decode(session, latents):
        start = time.monotonic()
        time.sleep(0.3)
        frames = real_decode(session, latents)
        events.append(("decode", start, time.monotonic()))
        return frames

    monkeypatch.setattr(pipeline, "denoise", denoise)
    monkeypatch.setattr(pipeline, "decode", decode)
    scheduler, recorder = make(pipeline)
    scheduler.start()
    try:
        scheduler.add_session("a", start_image(), "x")
        wait_until(lambda: len(recorder.outputs) >= 3)
    finally:
        scheduler.shutdown()
    decodes = [e for e in events if e[0] == "decode"]
    denoise_starts = [e[1] for e in events if e[0] == "denoise"]
    assert [o.block_index for o in recorder.outputs[:3]] == [0, 1, 2]
    assert any(decodes[0][1] < t < decodes[0][2] for t in denoise_starts), "no DiT step overlapped a decode"


@pytest.mark.parametrize("sessions", [1, 2])
def test_started_engine_runs_at_most_one_batch_ahead_of_the_vae(pipeline, monkeypatch, sessions):
    """A batch is denoised only once the VAE has begun on the previous one (one session: has
    taken every earlier block): with a slow decode and no pacing, the DiT would otherwise read
    keys for blocks that then wait for the VAE."""
    counts = {"denoised": 0, "decodes_started": 0}
    backlog_at_denoise = []
    real_denoise, real_decode = pipeline.denoise, pipeline.decode

    def denoise(sessions, plans):
        backlog_at_denoise.append(counts["denoised"] - counts["decodes_started"])
        out = real_denoise(sessions, plans)
        counts["denoised"] += len(sessions)
        return out

    def decode(session, latents):
        counts["decodes_started"] += 1
        time.sleep(0.2)
        return real_decode(session, latents)

    monkeypatch.setattr(pipeline, "denoise", denoise)
    monkeypatch.setattr(pipeline, "decode", decode)
    scheduler, recorder = make(pipeline)
    scheduler.start()
    try:
        for i in range(sessions):
            scheduler.add_session(f"s{i}", start_image(seed=i), "x")
        wait_until(lambda: len(recorder.outputs) >= 5 * sessions)
    finally:
        scheduler.shutdown()
    # at each DiT step, blocks denoised whose decode has not started: at most the last batch but
    # one, plus one block the VAE thread has taken off its queue but not yet begun to decode (this
    # count lags the take); the engine without the wait let 2 x max_batch = 8 pile up
    assert len(backlog_at_denoise) >= 5 and max(backlog_at_denoise) <= sessions, backlog_at_denoise


def test_a_decode_failure_on_the_vae_thread_drops_only_that_session(pipeline, monkeypatch):
    real_decode = pipeline.decode
    failing = []

    def decode(session, latents):
        if session in failing:
            raise RuntimeError("decoder exploded")
        return real_decode(session, latents)

    monkeypatch.setattr(pipeline, "decode", decode)
    scheduler, recorder = make(pipeline)
    scheduler.add_session("good", start_image(seed=1), "x")
    scheduler.add_session("bad", start_image(seed=2), "x")
    scheduler.step()
    failing.append(scheduler.executor.dit.sessions["bad"])
    scheduler.start()
    try:
        wait_until(lambda: len(recorder.of("good")) >= 4 and recorder.errors)
    finally:
        scheduler.shutdown()
    assert [sid for sid, _ in recorder.errors] == ["bad"]
    assert [o.block_index for o in recorder.of("good")[:4]] == [0, 1, 2, 3]
    assert pipeline.free_slots == 2
