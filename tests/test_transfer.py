"""laser_plugin.transfer.to_host: several tensors in one copy, exact values, aligned arrays."""

import numpy as np
import torch

from laser_plugin.transfer import to_host


def test_packed_copy_gives_every_array_exactly_and_aligned():
    g = torch.Generator().manual_seed(0)
    tensors = [
        torch.rand(3, 5, 7, generator=g),  # float32, odd element count
        None,
        torch.randint(-1, 9, (3, 5, 7), generator=g).to(torch.int16),
        torch.rand(3, 4, 4, generator=g, dtype=torch.float64),
        torch.arange(3),  # int64
        torch.rand(2, 3, generator=g)[:, ::2],  # not contiguous
    ]
    out = to_host(*tensors, pack=True)
    assert out[1] is None
    for t, a in zip(tensors, out, strict=True):
        if t is None:
            continue
        assert a.dtype == t.numpy().dtype and a.shape == tuple(t.shape)
        assert a.ctypes.data % a.itemsize == 0  # aligned to its itemsize
        np.testing.assert_array_equal(a, t.numpy())


def test_cpu_tensors_come_back_as_views():
    t = torch.rand(4, 4)
    (a,) = to_host(t)
    a[0, 0] = 7.0
    assert t[0, 0] == 7.0
