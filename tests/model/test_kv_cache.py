"""The KV cache's slot layout and positions, alone."""
import pytest

from lingbot_rt.model import CacheConfig, KVCache, model_config


def make_cache(**kw):
    return KVCache(model_config("tiny"), CacheConfig(**kw), capacity=2, grid_hw=(1, 1))


def test_frames_fill_sink_then_ring():
    cache = make_cache(sink_frames=3, window_frames=4, block_frames=1)
    # the ring holds the window (4) and the block (1)
    assert [cache.frame_slot(f) for f in range(12)] == [0, 1, 2, 3, 4, 5, 6, 7, 3, 4, 5, 6]
    assert cache.k.shape[2] == 8
    glob = make_cache(sink_frames=1, window_frames=4, rolling=False)
    assert [glob.frame_slot(f) for f in range(5)] == [0, 1, 2, 3, 4] and glob.k.shape[2] == 5 and glob.sink_k is None


def test_visible_frames_and_sink_shift():
    cache = make_cache(sink_frames=3, window_frames=4)
    assert cache.visible_frames(0) == [] and cache.visible_frames(5) == [0, 1, 2, 3, 4]
    assert cache.visible_frames(7) == [0, 1, 2, 3, 4, 5, 6] and cache.sink_shift(7) == 0
    # 10 committed: the window holds frames 6..9 and the sink is moved to frames 3..5, right before it
    assert cache.visible_frames(10) == [0, 1, 2, 6, 7, 8, 9] and cache.sink_shift(10) == 3


def test_view_masks_empty_slots_and_checks_rows():
    cache = make_cache(sink_frames=1, window_frames=2, block_frames=1)
    cache.mark_started([0, 1])
    cache.num_frames = [1, 4]
    view = cache.view([1, 0], 1)
    # row 1: sink 0, window frames 2, 3 (slots 2, 3), block frame 4 (slot 1); row 0: sink, block in slot 1
    assert view.attn_mask[:, 0, 0].tolist() == [[True, True, True, True], [True, True, False, False]]
    assert view.write_slots.tolist() == [[1], [1]]
    assert view.sink_moves == ([1], [1]) and view.sink_frames == []
    assert cache.view([0], 1).sink_moves is None
    assert view.read_frames == 4                      # mixed fill levels: every slot, masked


def test_view_reads_the_filled_prefix_unmasked():
    cache = make_cache(sink_frames=1, window_frames=4, block_frames=2)     # 7 frame slots
    cache.mark_started([0, 1])
    for committed, read in ((0, 2), (2, 4), (4, 6), (6, 7), (8, 7)):
        cache.num_frames = [committed, committed]
        view = cache.view([0, 1], 2)
        assert view.attn_mask is None and view.read_frames == read, committed
        assert view.write_slots.tolist() == [[cache.frame_slot(committed), cache.frame_slot(committed + 1)]] * 2
    cache.num_frames = [0, 2]
    view = cache.view([0, 1], 2)
    assert view.read_frames == 7 and view.attn_mask[:, 0, 0].sum(1).tolist() == [2, 4]
    with pytest.raises(IndexError, match="out of range"):
        cache.view([2], 1)
    with pytest.raises(ValueError, match="duplicate"):
        cache.view([0, 0], 1)


def test_config_validation():
    with pytest.raises(ValueError, match="invalid cache layout"):
        CacheConfig(block_frames=0)
    with pytest.raises(ValueError, match="window_frames >= 1"):
        CacheConfig(window_frames=0)
