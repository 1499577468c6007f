"""Device-to-host copies of a window's arrays (laser_plugin.host_copy)."""

import numpy as np
import pytest
import torch

from laser_plugin.host_copy import HostCopier


def test_cpu_tensors_come_back_as_views_and_none_stays_none():
    a = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    b = torch.ones(2, dtype=torch.float64)
    ha, hn, hb = HostCopier()([a, None, b])
    assert hn is None and ha.shape == (3, 4) and hb.dtype == np.float64
    a[0, 0] = 7.0
    assert ha[0, 0] == 7.0  # a view, as .cpu().numpy() gives on the CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the device)")
def test_cuda_copies_are_exact_independent_of_later_windows_and_not_page_locked():
    copy = HostCopier()
    g = torch.Generator(device="cuda").manual_seed(0)
    first = [torch.rand(5, 7, 9, device="cuda", generator=g), None, torch.arange(4, device="cuda")]
    want = [None if t is None else t.cpu().numpy() for t in first]
    got = copy(first)
    # Same slots, other shapes: the staging buffers are reused (and one grows); the arrays
    # returned before must not change.
    second = [torch.rand(6, 7, 9, device="cuda", generator=g), torch.zeros(3, device="cuda"),
              torch.arange(2, device="cuda")]  # fmt: skip
    got2 = copy(second)
    for w, h in zip(want, got, strict=True):
        assert (w is None and h is None) or np.array_equal(w, h)
    for t, h in zip(second, got2, strict=True):
        assert np.array_equal(t.cpu().numpy(), h)
    assert not torch.from_numpy(got[0]).is_pinned()
