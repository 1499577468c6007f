"""Keyframe index and spill storage."""

from __future__ import annotations

import numpy as np

from laser_plugin.loop.index import KeyframeIndex
from laser_plugin.spill import SpillStore


def test_index_finds_the_planted_match_and_respects_window_and_threshold():
    rng = np.random.default_rng(0)
    idx = KeyframeIndex(capacity=4)  # grows past its initial capacity
    desc = rng.normal(size=(60, 32))
    for w in range(20):
        idx.add(w, np.arange(3 * w, 3 * w + 3), desc[3 * w : 3 * w + 3])
    assert len(idx) == 60
    query = desc[[22]] + 0.01 * rng.normal(size=(1, 32))  # frame 22 belongs to window 7
    hit = idx.query(query, max_window=19, min_similarity=0.9)
    assert hit is not None and hit.window == 7 and hit.similarity > 0.99
    assert idx.query(query, max_window=6, min_similarity=0.9) is None  # window 7 is too recent
    assert idx.query(rng.normal(size=(1, 32)), max_window=19, min_similarity=0.9) is None
    assert idx.nbytes() < 60 * 32 * 2 + 4 * 64 * 16 + 1024


def test_spill_store_round_trip_and_cleanup(tmp_path):
    store = SpillStore(tmp_path, "x")
    a = np.arange(12, dtype=np.float16).reshape(3, 4)
    store.put(5, a=a, b=np.eye(4))
    assert 5 in store and len(store) == 1 and store.disk_bytes() > 0
    rec = store.get(5)
    np.testing.assert_array_equal(rec["a"], a)
    assert rec["a"].dtype == np.float16
    store.cleanup()
    assert not (tmp_path / "x").exists()
    tmp = SpillStore(None)
    tmp.put(0, a=a)
    d = tmp.dir
    assert d.exists()
    tmp.cleanup()
    assert not d.exists()


def test_spilled_voxel_map_applies_per_window_corrections(tmp_path):
    """The memory benchmark's map (benchmarks/spilled_map.py)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from spilled_map import SpilledVoxelMap

    rng = np.random.default_rng(1)
    m = SpilledVoxelMap(tmp_path, voxel_size=0.05)
    pts0 = rng.uniform(0, 1, (2000, 3))
    pts1 = rng.uniform(2, 3, (2000, 3))
    col = np.full((2000, 3), 200, np.uint8)
    m.add_window(0, pts0, col)
    m.add_window(1, pts1, col)
    assert m.num_points > 0 and len(m.store) == 2
    shift = np.eye(4)
    shift[:3, 3] = [10.0, 0.0, 0.0]
    pts, cols = m.merged(lambda w: shift if w == 1 else np.eye(4))
    assert cols.dtype == np.uint8 and len(pts) == m.num_points
    # Window 0 stays in [0, 1]; window 1 moved by +10 along x.
    assert (pts[:, 0] < 1.05).sum() + (pts[:, 0] > 11.9).sum() == len(pts)
    assert (pts[:, 0] > 11.9).sum() > 0


def test_record_log_appends_truncates_and_reads(tmp_path):
    from laser_plugin.spill import RecordLog

    log = RecordLog(tmp_path, "rows", 3)
    for i in range(5):
        log.append(np.array([i, 2.0 * i, -i]))
    assert len(log) == 5
    np.testing.assert_array_equal(log.last(), [4, 8, -4])
    log.truncate(3)
    log.append(np.array([9.0, 9.0, 9.0]))
    np.testing.assert_array_equal(log.read(), [[0, 0, 0], [1, 2, -1], [2, 4, -2], [9, 9, 9]])
    log.close()
    # A plain .npy once closed; reopened with ``keep``, the first rows continue a stream.
    np.testing.assert_array_equal(np.load(tmp_path / "rows.npy"), log_rows := np.array(
        [[0, 0, 0], [1, 2, -1], [2, 4, -2], [9, 9, 9]], float))  # fmt: skip
    again = RecordLog(tmp_path, "rows", 3, keep=2)
    again.append(np.array([7.0, 7.0, 7.0]))
    np.testing.assert_array_equal(again.read(), [*log_rows[:2], [7, 7, 7]])
    again.close()
