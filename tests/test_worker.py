"""The network in worker processes (laser_plugin.worker, laser_plugin.predictors.Workers): same frames
as the plain engine, in order, with one or two CPU workers; failures reach the caller in one piece."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import torch
from sink_helpers import Recorder

from laser_plugin import LaserConfig, StreamingReconstructor
from laser_plugin.errors import ConfigError
from laser_plugin.models.pi3 import make_model as make_pi3
from laser_plugin.models.synthetic import make_model, make_scene
from laser_plugin.predictors import Workers
from laser_plugin.worker import WorkerError, WorkerPool, model_factory, preprocess_frames

SCENE = dict(scene="demo", num_frames=40, height=64, width=112)


def assert_same_frames(frames, reference):
    assert [f.index for f in frames] == [f.index for f in reference]
    for f, r in zip(frames, reference, strict=True):
        assert f.window == r.window
        for key in ("image", "cam_to_world", "intrinsics", "depth", "conf", "layers"):
            np.testing.assert_array_equal(getattr(f, key), getattr(r, key))


@pytest.fixture(scope="module")
def scene():
    return make_scene("demo", 40, 64, 112)


@pytest.mark.parametrize(
    ("devices", "sink_thread", "in_process", "prepare", "fusion"),
    [
        (["cpu"], True, False, "all", "previous"),
        (["cpu", "cpu"], False, False, "none", "previous"),
        (["cpu", "cpu"], True, True, "processes", "previous"),
        (["cpu", "cpu"], True, True, "all", "accumulated"),
    ],
)
def test_workers_give_the_plain_engines_frames(
    scene, devices, sink_thread, in_process, prepare, fusion
):
    cfg = LaserConfig(window_size=8, overlap=3, layer_fusion=fusion)
    plain_sink, sink = Recorder(), Recorder()
    plain = StreamingReconstructor(make_model(scene=scene), cfg).reconstruct(
        scene.frames(), [plain_sink]
    )
    factory = model_factory("synthetic", **SCENE)
    with WorkerPool(factory, devices, threads=1, in_process_first=in_process) as pool:
        if in_process:  # worker 0 is a thread of this process, worker 1 a process
            assert type(pool._procs[0]).__name__ == "Thread"
            assert type(pool._procs[1]).__name__ != "Thread"
        p = Workers(pool, sink_thread=sink_thread, prepare=prepare)
        rec = StreamingReconstructor(pool, cfg, predictor=p)
        frames = rec.reconstruct(scene.frames(), [sink])
        assert_same_frames(frames, plain)
        assert sink.calls == plain_sink.calls and sink.closed
        assert sum(pool.windows_per_worker) == rec.num_windows == plain[-1].window + 1
        if len(devices) == 2:
            assert min(pool.windows_per_worker) > 0  # both workers took windows
        assert p.max_buffered <= p.max_pending == 2 * len(devices)
        # Windows a worker prepared skip the aligning process's own preparing.
        prepared_here = sum("prepare" in s.timings for s in rec.window_stats)
        preparing = {"all": [], "none": [0, 1], "processes": [0]}[prepare]
        assert prepared_here == sum(pool.windows_per_worker[r] for r in preparing)
        assert (rec.timings.get("worker_prepare", 0.0) > 0) == (prepare != "none")
        # The same workers serve a second stream (fresh stream state, same result).
        assert_same_frames(rec.reconstruct(scene.frames()), plain)


@pytest.mark.parametrize("in_process", [False, True])
def test_fast_pi3_worker_resizes_like_the_engine_and_reuses_overlap_tokens(in_process):
    """Frames of another size than the model's: the worker resizes them (batched) exactly as the
    engine does per frame; the fast path reuses overlap tokens by frame key; fp32 throughout."""
    rng = np.random.default_rng(0)
    canvas = (rng.random((60, 90 + 3 * 14, 3)) * 255).astype(np.uint8)
    frames = [canvas[:, 3 * i : 3 * i + 90].copy() for i in range(14)]
    cfg = LaserConfig(window_size=6, overlap=2)
    ref = StreamingReconstructor(
        make_pi3(size="tiny", random_init=True), cfg, input_size=(42, 70)
    ).reconstruct(frames)
    factory = functools.partial(make_pi3, size="tiny", random_init=True, fast=True, dtype="fp32")
    with WorkerPool(factory, ["cpu"], threads=1, in_process_first=in_process) as pool:
        rec = StreamingReconstructor(pool, cfg, input_size=(42, 70), predictor=Workers(pool))
        out = rec.reconstruct(frames)
        stats = pool.stats()[0]
    assert stats["cache_hits"] > 0
    assert [f.index for f in out] == [f.index for f in ref]
    for a, b in zip(out, ref, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        for key in ("depth", "conf", "cam_to_world", "intrinsics"):
            np.testing.assert_allclose(getattr(a, key), getattr(b, key), rtol=1e-4, atol=1e-5)


def test_preprocess_matches_the_engine_per_frame():
    rng = np.random.default_rng(1)
    frames = (rng.random((3, 50, 80, 3)) * 255).astype(np.uint8)
    x, images = preprocess_frames(torch.from_numpy(frames), (42, 70))
    rec = StreamingReconstructor(make_pi3(size="tiny", random_init=True), input_size=(42, 70))
    rec.start_stream()
    from laser_plugin.sources import open_source

    items = list(rec._prepared(open_source(list(frames))))
    for j, it in enumerate(items):
        torch.testing.assert_close(x[j], it.tensor, rtol=0, atol=0)
        np.testing.assert_array_equal(images[j].numpy(), it.image)


def _broken_factory(device: str = "cpu"):
    raise ConfigError("no weights here")


class _FailsOnThirdWindow:
    def __init__(self, model):
        self.model, self.calls = model, 0
        self.input_size = model.input_size

    def __call__(self, images):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("device lost")
        return self.model(images)


def _failing_factory(device: str = "cpu"):
    return _FailsOnThirdWindow(make_model(**SCENE))


def test_a_user_error_while_building_the_model_stays_one_line():
    pool = WorkerPool(_broken_factory, ["cpu"], threads=1)
    with pytest.raises(ConfigError, match="no weights here"):
        pool.start()
    assert not pool.started


def test_a_worker_failure_stops_the_stream_and_interrupts_the_sinks(scene):
    sink = Recorder()
    with WorkerPool(_failing_factory, ["cpu"], threads=1) as pool:
        rec = StreamingReconstructor(
            pool, LaserConfig(window_size=8, overlap=3), predictor=Workers(pool)
        )
        with pytest.raises(WorkerError, match="device lost"):
            rec.reconstruct(scene.frames(), [sink])
    assert sink.calls[-1] == ("interrupt", "WorkerError") and sink.closed
    assert ("window", 1) in sink.calls and ("window", 2) not in sink.calls


def test_an_in_process_worker_failure_reaches_the_caller_and_the_pool_closes(scene):
    sink = Recorder()
    with WorkerPool(_failing_factory, ["cpu"], in_process_first=True) as pool:
        rec = StreamingReconstructor(
            pool, LaserConfig(window_size=8, overlap=3), predictor=Workers(pool)
        )
        with pytest.raises(WorkerError, match="device lost"):
            rec.reconstruct(scene.frames(), [sink])
        assert pool._procs[0].is_alive()  # the thread survives a failed window
    assert not pool.started
    assert sink.calls[-1] == ("interrupt", "WorkerError") and sink.closed


def test_bad_pool_settings_are_config_errors():
    with pytest.raises(ConfigError):
        WorkerPool(_broken_factory, [])
    with pytest.raises(ConfigError):
        WorkerPool(_broken_factory, ["cpu"], transfer="smoke")


@pytest.mark.slow  # each synthetic worker renders the 120-frame demo scene to index it (~25 s)
def test_laser_run_fast_writes_the_plain_engines_run(tmp_path, capsys):
    """``laser run --fast --devices cpu,cpu``: worker processes behind the CLI, same frames as
    the plain engine; a finished fast run resumes to "nothing to resume", and a plain run is not
    resumed on the fast path (other numerics), in one line."""
    from PIL import Image

    from laser_plugin.cli.main import main
    from laser_plugin.io.run_dir import load_run

    folder = tmp_path / "clip"
    folder.mkdir()
    for i, image in enumerate(make_scene("demo").frames()):
        if i == 16:
            break
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    reference = StreamingReconstructor(
        make_model(), LaserConfig(window_size=8, overlap=3)
    ).reconstruct(folder)
    args = ["run", str(folder), "--model", "synthetic", "--window-size", "8", "--overlap", "3"]
    out = tmp_path / "fast"
    assert main([*args, "--fast", "--devices", "cpu,cpu", "--output-dir", str(out)]) == 0
    summary = capsys.readouterr().err
    split = re.search(r"windows per device\W+cpu (\d+), cpu (\d+)", summary)
    assert split and int(split[1]) + int(split[2]) == 3 and min(int(split[1]), int(split[2])) > 0
    run = load_run(out)
    assert run.status == "complete" and run.summary["settings"]["fast"] is True
    assert [f.index for f in run.frames] == [f.index for f in reference] == list(range(16))
    np.testing.assert_array_equal(run.cam_to_world(), np.stack([f.cam_to_world for f in reference]))
    for k in range(0, 16, 5):
        # The compact run directory keeps depth as float16.
        saved = reference[k].depth.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(run.load_frame(k).depth, saved)
    fast = [*args, "--quiet", "--fast", "--devices", "cpu,cpu", "--resume", "--output-dir"]
    assert main([*fast, str(out)]) == 0
    assert "nothing to resume" in capsys.readouterr().err
    plain = tmp_path / "plain"
    assert main([*args, "--quiet", "--no-loop-closure", "--output-dir", str(plain)]) == 0
    with pytest.raises(SystemExit) as exit_info:
        main([*fast, str(plain)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1


@pytest.mark.parametrize("transfer", ["host", "local"])
def test_ship_packs_every_field_into_one_buffer_and_unpacks_it_exactly(transfer):
    from laser_plugin.worker import ship, unship

    g = torch.Generator().manual_seed(0)
    tensors = {
        "depth": torch.rand(3, 5, 7, generator=g),
        "confident": torch.rand(3, 5, 7, generator=g) > 0.5,  # 105 bytes: the next is realigned
        "labels_full": torch.randint(-1, 9, (3, 5, 7), generator=g, dtype=torch.int16),
        "poses": torch.rand(3, 4, 4, generator=g, dtype=torch.float64),
        "labels": torch.randint(-1, 9, (3, 2, 3), generator=g),
        "descriptors": None,
        "strided": torch.rand(3, 6, generator=g)[:, ::2],  # not contiguous
    }
    payload = ship(tensors, transfer)
    if transfer != "local":  # one buffer carries everything
        assert (
            set(payload) == {"packed", "layout", "local"} and payload["packed"].dtype == torch.uint8
        )
    back = unship(payload)
    assert list(back) == list(tensors)
    for name, t in tensors.items():
        if t is None:
            assert back[name] is None
            continue
        assert back[name].dtype == t.dtype and back[name].shape == t.shape
        assert torch.equal(back[name], t)
