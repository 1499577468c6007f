"""Loop closure end to end on drifting synthetic sequences, scored against ground truth."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sink_helpers import StopAfter

from laser_plugin import LaserConfig, StreamingReconstructor, metrics
from laser_plugin.io.run_dir import RunWriter, load_run
from laser_plugin.loop import LoopClosingReconstructor, LoopConfig
from laser_plugin.models.synthetic import EmulatedModel, EmulatorConfig, make_scene

DRIFT = EmulatorConfig(drift_rot_deg=0.15, drift_scale=0.02)


class Recorder:
    def __init__(self):
        self.frames = {}
        self.corrections = []

    def on_frame(self, frame):
        self.frames[frame.index] = frame

    def on_correction(self, frames):
        self.corrections.append([f.index for f in frames])
        for f in frames:
            self.frames[f.index] = f

    def close(self):
        pass


def run(scene, model, sinks=(), **loop_kw):
    rec = LoopClosingReconstructor(model, LaserConfig(), LoopConfig(**loop_kw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = rec.reconstruct(scene.frames(), sinks)
    return rec, frames


@pytest.fixture(scope="module")
def looped(tmp_path_factory):
    """One drifting lap with a recording sink and a run writer, plus the plain engine's output."""
    scene = make_scene("loop", 240, 48, 84)
    model = EmulatedModel(scene, DRIFT)
    sink = Recorder()
    out = tmp_path_factory.mktemp("loop") / "run"
    rec, frames = run(scene, model, [sink, RunWriter(out)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = StreamingReconstructor(model, LaserConfig()).reconstruct(scene.frames())
    yield scene, plain, rec, frames, sink, out
    rec.cleanup()


def test_loop_is_found_and_halves_the_trajectory_error(looped):
    scene, plain, rec, _, _, _ = looped
    ate_plain = metrics.ate_rmse(np.stack([f.cam_to_world for f in plain]), scene.cam_to_world)
    idx, corrected = rec.corrected_trajectory()
    np.testing.assert_array_equal(idx, np.arange(scene.num_frames))
    ate_loop = metrics.ate_rmse(corrected, scene.cam_to_world)
    accepted = [e for e in rec.events if e.accepted]
    assert accepted, list(rec.events)
    # Each accepted loop joins the end of the lap to its start (a true revisit).
    for e in accepted:
        assert e.candidate <= 2 and e.window >= 12
    assert ate_plain > 0.05  # the drift is real
    assert ate_loop < 0.5 * ate_plain, (ate_plain, ate_loop)


def test_sinks_end_with_the_corrected_trajectory(looped):
    _, _, rec, frames, sink, _ = looped
    assert (
        sink.corrections
        and max(len(c) for c in sink.corrections) <= rec.loop_config.correction_chunk
    )
    idx, corrected = rec.corrected_trajectory()
    held = np.stack([sink.frames[i].cam_to_world for i in idx])
    np.testing.assert_allclose(held, corrected, atol=1e-5)
    # Re-emitted frames keep their images and are marked; depths follow the Sim(3) scale.
    f = sink.frames[int(sink.corrections[0][0])]
    assert f.extras.get("corrected") and f.image.shape == (48, 84, 3)
    orig = frames[f.index]
    s = np.cbrt(np.linalg.det(rec.correction(orig.window)[:3, :3]))
    mask = orig.depth > 0
    assert np.isfinite(s)
    # The yielded frame carries the correction known when it was emitted (none before the loop).
    np.testing.assert_allclose(f.depth[mask], (orig.depth * s)[mask], rtol=2e-3)


def test_first_lap_output_equals_the_plain_engine(looped):
    _, plain, rec, frames, _, _ = looped
    first_loop = min(e.window for e in rec.events if e.accepted)
    for a, b in zip(frames, plain):
        if a.window >= first_loop:
            break
        np.testing.assert_allclose(a.cam_to_world, b.cam_to_world, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(a.depth, b.depth)


def test_no_loop_accepted_without_revisits():
    scene = make_scene("forward", 150, 48, 84)
    rec, frames = run(scene, EmulatedModel(scene, DRIFT))
    try:
        assert not [e for e in rec.events if e.accepted]
        assert rec.counts["corrected_frames"] == 0
        _, corrected = rec.corrected_trajectory()
        np.testing.assert_allclose(corrected, np.stack([f.cam_to_world for f in frames]), atol=1e-6)
    finally:
        rec.cleanup()


def test_look_alike_place_is_rejected_by_verification():
    """Forced candidates (similarity threshold -0.99) on a sequence without revisits: every one
    must fail geometric verification, and the trajectory must stay as it was."""
    scene = make_scene("forward", 150, 48, 84)
    rec, _ = run(scene, EmulatedModel(scene, DRIFT), min_similarity=-0.99, cooldown_windows=0)
    try:
        assert rec.counts["candidates"] >= 3
        assert rec.counts["accepted"] == 0, list(rec.events)
    finally:
        rec.cleanup()


def test_later_overlap_mode_emits_every_frame_once_and_consistently():
    scene = make_scene("loop", 80, 32, 56)
    rec = LoopClosingReconstructor(
        EmulatedModel(scene, DRIFT), LaserConfig(overlap_estimate="later"), LoopConfig()
    )
    sink = Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = rec.reconstruct(scene.frames(), [sink])
    try:
        assert [f.index for f in frames] == list(range(80))
        idx, corrected = rec.corrected_trajectory()
        assert sorted(idx) == list(range(80))
        held = np.stack([sink.frames[i].cam_to_world for i in idx])
        np.testing.assert_allclose(held, corrected, atol=1e-5)
    finally:
        rec.cleanup()


class NoDescriptors:
    def __init__(self, model):
        self.model = model

    def input_size(self, h, w):
        return self.model.input_size(h, w)

    def __call__(self, images):
        pred = self.model(images)
        pred.descriptors = None
        return pred


def test_backend_without_descriptors_turns_loop_closure_off():
    scene = make_scene("loop", 60, 32, 56)
    model = NoDescriptors(EmulatedModel(scene))
    rec = LoopClosingReconstructor(model, LaserConfig(), LoopConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = rec.reconstruct(scene.frames())
        plain = StreamingReconstructor(model, LaserConfig()).reconstruct(scene.frames())
    assert not rec.enabled and len(frames) == 60
    assert rec.counts["candidates"] == 0 and len(rec.corrected_trajectory()[0]) == 0
    for a, b in zip(frames, plain):
        np.testing.assert_array_equal(a.cam_to_world, b.cam_to_world)


def test_run_writer_rewrites_corrected_frames(looped):
    _, _, rec, frames, _, out = looped
    assert rec.counts["corrected_frames"] > 0
    data = load_run(out)
    idx, corrected = rec.corrected_trajectory()
    assert [f.index for f in data.frames] == list(idx)
    np.testing.assert_allclose(data.cam_to_world(), corrected, atol=1e-6)
    lines = (out / "trajectory.txt").read_text().splitlines()
    assert len(lines) == len(idx)
    np.testing.assert_allclose(
        [float(x) for x in lines[3].split()[1:4]], corrected[3, :3, 3], atol=1e-6
    )
    i = rec.events[-1].candidate_frames[0]
    f = data.load_frame(i)
    s = np.cbrt(np.linalg.det(rec.correction(f.window)[:3, :3]))
    m = frames[i].depth > 0
    np.testing.assert_allclose(f.depth[m], frames[i].depth[m] * s, rtol=2e-3)
    assert data.summary["status"] == "complete"


def test_a_run_directory_is_the_loop_archive(tmp_path):
    """``laser run``'s session reads the frames a loop moves back from the run directory (each
    frame written once) instead of spilling a second copy. Against the spilling hook: the same
    loops, the same corrected poses (exactly) and depths (float16 storage), also with the sinks
    on a thread of their own and after an interrupted run was resumed."""
    from laser_plugin.io.run_dir import prepare_output_dir
    from laser_plugin.loop import LoopClosure
    from laser_plugin.models.synthetic import make_model
    from laser_plugin.predictors import Pipelined
    from laser_plugin.resume import load_state
    from laser_plugin.session import open_session

    spec = dict(scene="loop", num_frames=50, height=32, width=56, drift_rot_deg=0.15, drift_scale=0.02)  # fmt: skip
    stream = [f for _ in range(2) for f in make_model(**spec).scene.frames()]
    config = LaserConfig(window_size=8, overlap=3)

    def spilled_reference():
        sink = Recorder()
        hook = LoopClosure(LoopConfig(spill_dir=str(tmp_path / "spill")))
        rec = StreamingReconstructor(make_model(**spec), config, hooks=[hook])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rec.reconstruct(stream, [sink, RunWriter(tmp_path / "ref")])
        return sink, hook

    def session_run(name, stop_after=None, resume=False):
        sink = Recorder()
        out = prepare_output_dir(tmp_path / name, resume=resume, overwrite=not resume)
        extra = [sink] if stop_after is None else [sink, StopAfter(stop_after)]
        session = open_session(
            out, make_model(**spec), config, {}, state=load_state(out) if resume else None,
            predictor=Pipelined(sink_thread=True), loop_closure=True, extra_sinks=extra,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                for _ in session.run(stream):
                    pass
            except KeyboardInterrupt:
                pass
            finally:
                session.writer.close()
        return sink, session.engine.loop, out

    ref, ref_hook = spilled_reference()
    got, hook, out = session_run("straight")
    assert list(hook.events) == list(ref_hook.events)
    assert hook.counts == ref_hook.counts
    assert hook.counts["accepted"] >= 2 and hook.counts["corrected_frames"] > len(stream) // 2
    assert not list((out / "state").glob("loop-frames*"))  # no second copy of the frames
    data = load_run(out)
    assert [f.index for f in data.frames] == list(range(len(stream)))
    for i in range(len(stream)):
        a, b = got.frames[i], ref.frames[i]
        np.testing.assert_allclose(a.cam_to_world, b.cam_to_world, rtol=0, atol=1e-9)
        np.testing.assert_allclose(a.depth, b.depth, rtol=2e-3)
        assert a.extras.get("corrected") == b.extras.get("corrected")
        saved = data.load_frame(i)
        if a.extras.get("corrected"):  # the image came back from the run's own JPEG
            np.testing.assert_array_equal(a.image, saved.image)
        np.testing.assert_allclose(data.frames[i].cam_to_world, b.cam_to_world, atol=1e-9)
        np.testing.assert_allclose(saved.depth, b.depth, rtol=2e-3)

    # Interrupted after window 11 (loops are closed before and after), then resumed.
    _, _, cut = session_run("resumed", stop_after=11)
    assert 0 < len(load_run(cut).frames) < len(stream)
    _, resumed, _ = session_run("resumed", resume=True)
    assert resumed.counts == hook.counts
    again = load_run(cut)
    for i in range(len(stream)):
        np.testing.assert_array_equal(again.frames[i].cam_to_world, data.frames[i].cam_to_world)
        np.testing.assert_array_equal(again.load_frame(i).depth, data.load_frame(i).depth)
