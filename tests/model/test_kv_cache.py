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
    assert view.write_tokens.tolist() == [[1], [1]]
    assert view.sink_moves == ([1], [1]) and view.sink_frames == []
    assert cache.view([0], 1).sink_moves is None
    assert view.read_tokens == 4                      # mixed fill levels: every slot, masked


def test_view_reads_the_filled_prefix_unmasked():
    cache = make_cache(sink_frames=1, window_frames=4, block_frames=2)     # 7 frame slots
    cache.mark_started([0, 1])
    for committed, read in ((0, 2), (2, 4), (4, 6), (6, 7), (8, 7)):
        cache.num_frames = [committed, committed]
        view = cache.view([0, 1], 2)
        assert view.attn_mask is None and view.read_tokens == read, committed
        assert view.write_tokens.tolist() == [[cache.frame_slot(committed), cache.frame_slot(committed + 1)]] * 2
    cache.num_frames = [0, 2]
    view = cache.view([0, 1], 2)
    assert view.read_tokens == 7 and view.attn_mask[:, 0, 0].sum(1).tolist() == [2, 4]
    with pytest.raises(IndexError, match="out of range"):
        cache.view([2], 1)
    with pytest.raises(ValueError, match="duplicate"):
        cache.view([0, 0], 1)


def test_config_validation():
    with pytest.raises(ValueError, match="invalid cache layout"):
        CacheConfig(block_frames=0)
    with pytest.raises(ValueError, match="window_frames >= 1"):
        CacheConfig(window_frames=0)


def test_compressed_layout_moves_frames_as_they_age():
    cache = KVCache(model_config("tiny"), CacheConfig(sink_frames=2, window_frames=4, block_frames=2, full_frames=1,
                                                      memory_pool=(2, 2)), capacity=2, grid_hw=(2, 4))
    # slots: full-resolution ring (1 + 2) x 8 tokens | sink 2 x 2 | older frames 3 x 2
    assert cache.slot_tokens == [8, 8, 8, 2, 2, 2, 2, 2] and cache.k.shape[2] == 34
    assert [cache.frame_slot(f) for f in range(7)] == [0, 1, 2, 0, 1, 2, 0]      # every frame enters the ring
    assert [cache.memory_slot(f) for f in range(7)] == [3, 4, 5, 6, 7, 5, 6]
    cache.mark_started([0, 1])
    expected = {  # committed: ((frame, its full-resolution slot) pooled before the block, prefix read or None
        # (masked), tokens attended): a prefix from the first block on
        0: ([], 16, 16), 2: ([(0, 0)], 26, 26), 4: ([(1, 1), (2, 2)], 30, 30), 6: ([(3, 0), (4, 1)], 34, 34),
    }
    for committed, (moves, read, visible) in expected.items():
        cache.num_frames = [committed, committed]
        view = cache.view([0], 2)
        assert [(f, slot) for _, f, slot in view.memory_moves] == moves, committed
        assert view.read_tokens == (read or 34) and (view.attn_mask is None) == (read is not None), committed
        attended = view.attn_mask[0, 0, 0].sum().item() if view.attn_mask is not None else view.read_tokens
        assert attended == visible, committed
        cache.place(view)
    assert cache.moved[0] == 5 and cache.moved[1] == 0
    # at 6 committed the sink has moved by 0 frames, at 8 by 2: the row is placed again
    assert cache.view([0], 2).sink_moves is None
    cache.num_frames[0] = 8
    assert cache.view([0], 2).sink_moves == ([0], [2])


def test_compressed_layout_errors():
    with pytest.raises(ValueError, match=r"memory_pool \(2, 2\) does not divide the latent token grid \(3, 4\)"):
        KVCache(model_config("tiny"), CacheConfig(memory_pool=(2, 2)), capacity=1, grid_hw=(3, 4))
    with pytest.raises(ValueError, match=r"full_frames must lie in \[0, window_frames=15\]"):
        CacheConfig(full_frames=16)
    with pytest.raises(ValueError, match="two positive patch sides"):
        CacheConfig(memory_pool=(0, 2))
    with pytest.raises(ValueError, match="global cache keeps every frame at full resolution"):
        CacheConfig(rolling=False, memory_pool=(2, 2))
