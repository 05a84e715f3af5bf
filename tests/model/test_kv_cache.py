"""The KV cache's slot layout and positions, alone."""
import pytest

from lingbot_rt.model import CacheConfig, KVCache, model_config


def make_cache(**kw):
    return KVCache(model_config("tiny"), CacheConfig(**kw), capacity=2, grid_hw=(1, 1))


def test_frames_fill_sink_then_ring():
    cache = make_cache(sink_frames=3, window_frames=4)
    assert [cache.frame_slot(f) for f in range(12)] == [0, 1, 2, 3, 4, 5, 6, 3, 4, 5, 6, 3]


def test_positions_are_absolute_until_the_window_fills_then_relative():
    cache = make_cache(sink_frames=3, window_frames=4)
    assert cache.visible_positions(0) == [None] * 7
    assert cache.visible_positions(5) == [0, 1, 2, 3, 4, None, None]
    assert cache.visible_positions(7) == [0, 1, 2, 3, 4, 5, 6]
    # 10 committed: window holds frames 6..9 in slots 6,3,4,5 -> positions 3,4,5,6
    assert cache.visible_positions(10) == [0, 1, 2, 4, 5, 6, 3]
    assert cache.num_visible(10) == 7
    assert cache.visible_positions(10**6) == cache.visible_positions(10**6 + 4 * 1000)


def test_view_masks_empty_slots_and_checks_rows():
    cache = make_cache(sink_frames=1, window_frames=2, block_frames=1)
    cache.mark_started([0, 1])
    cache.num_frames = [1, 4]
    view = cache.view([1, 0], 1)
    assert view.attn_mask[:, 0, 0].tolist() == [[True, True, True, True], [True, False, False, True]]
    assert view.write_slots.tolist() == [[2], [1]]
    with pytest.raises(IndexError, match="out of range"):
        cache.view([2], 1)
    with pytest.raises(ValueError, match="duplicate"):
        cache.view([0, 0], 1)


def test_config_validation():
    with pytest.raises(ValueError, match="invalid cache layout"):
        CacheConfig(block_frames=0)
    with pytest.raises(ValueError, match="window_frames >= 1"):
        CacheConfig(window_frames=0)
