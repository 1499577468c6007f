"""The network's stream confined to some SMs (laser_plugin.sm_partition)."""

import time

import pytest
import torch

from laser_plugin.sm_partition import PartitionedStream


def test_only_cuda_devices_have_partitions():
    with pytest.raises(ValueError, match="CUDA devices only"):
        PartitionedStream("cpu", 8)


def _seconds(stream, fn, reps=5):
    with torch.cuda.stream(stream):
        fn()
        stream.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        stream.synchronize()
    return time.perf_counter() - t


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the device)")
def test_kernels_and_graph_replays_on_a_small_partition_run_on_its_sms_only():
    """A compute-bound product on 16 of the SMs takes several times as long as on all of them,
    launched directly and replayed from a CUDA graph (the network's trunk runs as one)."""
    total = torch.cuda.get_device_properties(0).multi_processor_count
    part = PartitionedStream("cuda", 16)
    assert 16 <= part.num_sms < total and part.free_sms == total - part.num_sms
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

    def work():
        for _ in range(4):
            a @ a

    full = torch.cuda.Stream()
    ratio = _seconds(part.stream, work) / _seconds(full, work)
    assert ratio > 0.5 * total / part.num_sms, ratio
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # captured on PyTorch's own capture stream, as GraphedTrunk does
        work()
    ratio_graph = _seconds(part.stream, graph.replay) / _seconds(full, graph.replay)
    print(f"{part}: product {ratio:.1f}x slower, graph replay {ratio_graph:.1f}x")
    assert ratio_graph > 0.5 * total / part.num_sms, ratio_graph
    with torch.cuda.stream(part.stream):  # results are the same computation
        out = a[:64] @ a[:, :64]
    part.stream.synchronize()
    torch.testing.assert_close(out, a[:64] @ a[:, :64])
