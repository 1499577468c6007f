"""Run-directory format 2: compact outputs, --outputs, original frames read back from the input,
the writer's threads (order, failures), and format 1 still read."""

from __future__ import annotations

import errno
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import laser
from test_faults_common import PlaneModel, make_video, textured_images, write_images

import laser_plugin.io.run_dir as run_dir
import laser_plugin.models.synthetic as synthetic
from laser_plugin.errors import ConfigError, InputError, OutputError
from laser_plugin.io.run_dir import (
    FORMAT_VERSION,
    RunWriter,
    depth_as_saved,
    dequantize_conf,
    load_run,
    parse_outputs,
    quantize_conf,
)
from laser_plugin.types import ReconstructedFrame

WINDOW = ("--window-size", "8", "--overlap", "3", "--no-loop-closure", "--quiet")


@pytest.fixture
def plane(monkeypatch):
    monkeypatch.setattr(
        synthetic, "make_model", lambda weights=None, device="cpu", **kw: PlaneModel()
    )


def decode_video(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def frame(i: int, h: int = 24, w: int = 32, depth_scale: float = 1.0) -> ReconstructedFrame:
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return ReconstructedFrame(
        index=i,
        timestamp=i / 10,
        # Smooth colours, what JPEG is made for (pixel noise would measure only its worst case).
        image=np.stack(
            [127 + 100 * np.sin(xx / 17 + c + i) * np.cos(yy / 23) for c in range(3)], axis=-1
        ).astype(np.uint8),
        cam_to_world=np.eye(4),
        intrinsics=np.array([[30.0, 0, w / 2], [0, 30.0, h / 2], [0, 0, 1]]),
        depth=(1.0 + rng.random((h, w))).astype(np.float32) * depth_scale,
        conf=rng.random((h, w)).astype(np.float32),
        window=i // 4,
    )


# -- video input: compact by default, originals decoded again for exports ----------------------


def test_video_run_is_compact_and_exports_full_resolution(tmp_path, capsys, plane):
    images = textured_images(20, h=96, w=128)
    video = make_video(tmp_path / "in.mp4", images)
    out = tmp_path / "run"
    code, err = laser(
        capsys, "run", str(video), "--output-dir", str(out), "--model", "synthetic", *WINDOW
    )
    assert code == 0, err
    run = load_run(out)
    assert run.format_version == FORMAT_VERSION == 2 and len(run.frames) == 20
    assert run.summary["outputs"] == "images,depth,conf,points"
    assert not (out / "source").exists() and not (out / "layers").exists()
    assert all(f.paths["image"].endswith(".jpg") and f.paths["source"] is None for f in run.frames)
    assert [f.source_ref for f in run.frames] == [{"source_frame": i} for i in range(20)]
    decoded = decode_video(video)
    for i in (0, 7, 19, 3):  # backwards too: the reader reopens the video
        f = run.load_frame(i, source=True)
        assert f.source_image.shape == (96, 128, 3)
        np.testing.assert_array_equal(f.source_image, decoded[i])
        assert f.depth.dtype == np.float32 and f.conf.dtype == np.float32
    # The COLMAP export writes the original 128x96 frames, as format 1's source/ JPEGs did.
    from PIL import Image

    from laser_plugin.integrations.nerfstudio.export import export_run_colmap

    export_run_colmap(out, tmp_path / "colmap")
    written = sorted((tmp_path / "colmap" / "images").iterdir())
    assert len(written) == 20
    with Image.open(written[0]) as im:
        assert im.size == (128, 96)
    # Without the video, an export at the source resolution is refused before writing anything.
    video.rename(tmp_path / "moved.mp4")
    with pytest.raises(InputError, match="missing"):
        export_run_colmap(out, tmp_path / "colmap2")
    assert not (tmp_path / "colmap2").exists()
    with pytest.warns(RuntimeWarning, match="original frames unavailable"):
        assert load_run(out).load_frame(0, source="auto").source_image is None
    assert load_run(out).load_frame(0).source_image is None  # default: only what the run keeps


def test_video_stride_maps_to_decode_indices(tmp_path, capsys, plane):
    images = textured_images(24, h=96, w=128, seed=1)
    video = make_video(tmp_path / "in.mp4", images)
    out = tmp_path / "run"
    code, err = laser(
        capsys,
        "run",
        str(video),
        "--output-dir",
        str(out),
        "--model",
        "synthetic",
        "--stride",
        "3",
        *WINDOW,
    )
    assert code == 0, err
    run = load_run(out)
    assert [f.source_ref["source_frame"] for f in run.frames] == list(range(0, 24, 3))
    decoded = decode_video(video)
    np.testing.assert_array_equal(run.load_frame(5, source=True).source_image, decoded[15])


def test_changed_video_is_refused_not_mismatched(tmp_path, capsys, plane):
    video = make_video(tmp_path / "in.mp4", textured_images(12, h=96, w=128), fps=10)
    out = tmp_path / "run"
    assert (
        laser(capsys, "run", str(video), "--output-dir", str(out), "--model", "synthetic", *WINDOW)[
            0
        ]
        == 0
    )
    make_video(video, textured_images(12, h=96, w=128), fps=5)  # other timestamps
    with pytest.raises(InputError, match="no longer matches"):
        load_run(out).load_frame(3, source=True)


# -- folder input: the user's files are referenced, by name, inside that folder only ------------


def test_folder_run_references_the_input_files(tmp_path, capsys, plane):
    from laser_plugin.sources import read_image

    folder = tmp_path / "frames"
    write_images(folder, textured_images(12, h=96, w=128))
    (folder / "frame_0003.png").write_bytes(b"not an image")  # skipped: later indices shift
    out = tmp_path / "run"
    code, err = laser(
        capsys, "run", str(folder), "--output-dir", str(out), "--model", "synthetic", *WINDOW
    )
    assert code == 0, err
    run = load_run(out)
    names = [f.source_ref["source_file"] for f in run.frames]
    assert names == [f"frame_{i:04d}.png" for i in range(12) if i != 3]
    np.testing.assert_array_equal(
        run.load_frame(5, source=True).source_image, read_image(folder / "frame_0006.png")
    )
    # A tampered frames.jsonl cannot make the reader open a file outside the folder.
    (tmp_path / "secret.png").write_bytes((folder / "frame_0000.png").read_bytes())
    lines = (out / "frames.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec["source_file"] = "../secret.png"
    (out / "frames.jsonl").write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")
    with pytest.raises(InputError, match="not a valid run"):
        load_run(out).load_frame(0, source=True)


# -- --outputs ----------------------------------------------------------------------------------


def test_outputs_are_parsed_or_refused_in_one_line(tmp_path, capsys, plane):
    assert parse_outputs(None) == {"images", "depth", "conf", "points"}
    assert parse_outputs("full") == set(run_dir.OUTPUTS)
    assert parse_outputs("compact,layers") == {"images", "depth", "conf", "points", "layers"}
    assert parse_outputs("images, depth ,conf") == {"images", "depth", "conf"}
    with pytest.raises(ConfigError, match="unknown output 'normals'"):
        parse_outputs("compact,normals")
    with pytest.raises(ConfigError, match="missing depth"):
        parse_outputs("images,conf")
    folder = tmp_path / "frames"
    write_images(folder, textured_images(8, h=96, w=128))
    out = tmp_path / "run"
    code, err = laser(
        capsys,
        "run",
        str(folder),
        "--output-dir",
        str(out),
        "--model",
        "synthetic",
        "--outputs",
        "images,conf",
        *WINDOW,
    )
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "missing depth" in lines[0], err
    assert not out.exists()  # refused before anything was written


def test_full_outputs_keep_sources_and_resume_needs_the_same_outputs(tmp_path, capsys, plane):
    folder = tmp_path / "frames"
    write_images(folder, textured_images(10, h=96, w=128))
    out = tmp_path / "run"
    args = ("run", str(folder), "--output-dir", str(out), "--model", "synthetic", *WINDOW)
    assert laser(capsys, *args, "--outputs", "full")[0] == 0
    run = load_run(out)
    assert all(f.paths["source"] == f"source/{f.index:06d}.jpg" for f in run.frames)
    assert run.frames[0].source_size == (128, 96) and run.frames[0].source_ref is None
    summary = json.loads((out / "summary.json").read_text())
    summary["status"] = "interrupted"
    (out / "summary.json").write_text(json.dumps(summary))
    code, err = laser(capsys, *args, "--resume")  # default outputs: compact
    assert code == 2 and "outputs" in err, err


def test_points_output_off_writes_no_cloud(tmp_path):
    w = RunWriter(tmp_path / "r", outputs="images,depth,conf")
    for i in range(5):
        w.on_frame(frame(i))
    w.close()
    assert (
        not (tmp_path / "r" / "points.ply").exists() and len(load_run(tmp_path / "r").frames) == 5
    )


# -- encodings ----------------------------------------------------------------------------------


def test_quantisation_bounds():
    conf = np.random.default_rng(0).random((50, 60)).astype(np.float32)
    back = dequantize_conf(quantize_conf(conf))
    assert np.abs(back - conf).max() <= 0.5 / 255 + 1e-7
    depth = (0.1 + 100 * np.random.default_rng(1).random((50, 60))).astype(np.float32)
    saved = depth_as_saved(depth)
    assert saved.dtype == np.float16
    assert (np.abs(saved.astype(np.float32) - depth) / depth).max() <= 2.0**-11
    far = depth.copy()
    far[0, 0] = 1e5  # beyond float16: that frame stays float32, exactly
    assert depth_as_saved(far).dtype == np.float32


def test_writer_round_trip_and_size(tmp_path):
    w = RunWriter(tmp_path / "r", threads=3)
    frames = [frame(i, 294, 518) for i in range(4)]
    for f in frames:
        w.on_frame(f)
    w.close()
    run = load_run(tmp_path / "r")
    for f, i in zip(frames, range(4), strict=True):
        g = run.load_frame(i)
        np.testing.assert_allclose(g.depth, f.depth, rtol=2.0**-11)
        np.testing.assert_allclose(g.conf, f.conf, atol=0.5 / 255 + 1e-7)
        assert np.abs(g.image.astype(int) - f.image.astype(int)).mean() < 3  # JPEG quality 90
    # Noise is the worst case for the deflated maps; a frame still stays under 0.5 MB.
    per_frame = (
        sum(
            p.stat().st_size
            for p in (tmp_path / "r").rglob("*.*")
            if p.parent.name in ("images", "depth", "conf")
        )
        / 4
    )
    assert per_frame < 500_000, per_frame


# -- the writer's threads -----------------------------------------------------------------------


@pytest.mark.parametrize("sync", ["fs", "file"])
def test_frames_jsonl_keeps_stream_order_whatever_the_threads_finish(tmp_path, monkeypatch, sync):
    if sync == "fs" and not run_dir.have_syncfs():
        pytest.skip("syncfs is Linux-only")
    real = run_dir._write_file
    rng = random.Random(0)

    def jittered(path, data, **kw):
        time.sleep(rng.random() * 0.01)  # encoders finish out of order
        real(path, data, **kw)

    monkeypatch.setattr(run_dir, "_write_file", jittered)
    w = RunWriter(tmp_path / "r", threads=4, max_pending=6, sync=sync)
    for i in range(30):
        w.on_frame(frame(i))
        if i % 4 == 3:
            w.on_window(_stats(i))
    w.close()
    run = load_run(tmp_path / "r")
    assert [f.index for f in run.frames] == list(range(30))
    assert len((tmp_path / "r" / "trajectory.txt").read_text().splitlines()) == 30


def _stats(i):
    from laser_plugin.types import WindowStats

    idx = list(range(i - 3, i + 1))
    return WindowStats(
        window=i // 4,
        frame_indices=idx,
        new_frame_indices=idx,
        scale=1.0,
        depth_residual=0.0,
        pose_residual=0.0,
        overlap_pixels=0,
        num_layers=0,
        layer_scale_spread=0.0,
    )


def test_a_write_failure_is_raised_once_and_the_frames_before_it_stay(tmp_path, monkeypatch):
    real = run_dir._write_file

    def full_disk(path, data, **kw):
        if path.name.startswith("000013"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, **kw)

    monkeypatch.setattr(run_dir, "_write_file", full_disk)
    w = RunWriter(tmp_path / "r", threads=2, max_pending=4)
    with pytest.raises(OutputError, match=r"cannot write frame 13 .*No space left.*--resume"):
        for i in range(40):
            w.on_frame(frame(i))
            if i % 4 == 3:
                w.on_window(_stats(i))
    w.on_interrupt(OutputError("stop"))
    w.close()  # raised already: not again
    run = load_run(tmp_path / "r")
    assert [f.index for f in run.frames] == list(range(13))
    assert run.status == "failed"


def test_a_failure_in_the_last_window_fails_close(tmp_path, monkeypatch):
    real = run_dir._write_file

    def full_disk(path, data, **kw):
        if path.name.startswith("000004"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, **kw)

    monkeypatch.setattr(run_dir, "_write_file", full_disk)
    w = RunWriter(tmp_path / "r")
    for i in range(5):
        w.on_frame(frame(i))
    with pytest.raises(OutputError, match="cannot write frame 4"):
        w.close()
    assert load_run(tmp_path / "r").status == "failed" and len(load_run(tmp_path / "r").frames) == 4


# -- format 1 ------------------------------------------------------------------------------------


def write_v1_run(out: Path, n: int = 3) -> list[ReconstructedFrame]:
    from PIL import Image

    frames = [frame(i) for i in range(n)]
    for sub in ("images", "depth", "conf", "source"):
        (out / sub).mkdir(parents=True)
    lines = []
    for f in frames:
        name = f"{f.index:06d}"
        Image.fromarray(f.image).save(out / "images" / f"{name}.png")
        Image.fromarray(f.image).resize((64, 48)).save(out / "source" / f"{name}.jpg", quality=95)
        np.save(out / "depth" / f"{name}.npy", f.depth)
        np.save(out / "conf" / f"{name}.npy", f.conf.astype(np.float16))
        lines.append(
            json.dumps(
                {
                    "index": f.index, "timestamp": f.timestamp, "window": f.window,
                    "width": f.width, "height": f.height,
                    "intrinsics": f.intrinsics.tolist(), "cam_to_world": f.cam_to_world.tolist(),
                    "image": f"images/{name}.png", "depth": f"depth/{name}.npy",
                    "conf": f"conf/{name}.npy", "layers": None, "layer_scales": None,
                    "source": f"source/{name}.jpg", "source_width": 64, "source_height": 48,
                }
            )
        )  # fmt: skip
    (out / "frames.jsonl").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(
        json.dumps({"format_version": 1, "status": "interrupted", "settings": {}})
    )
    return frames


def test_format_1_runs_still_load_and_are_not_resumed(tmp_path):
    frames = write_v1_run(tmp_path / "v1")
    run = load_run(tmp_path / "v1")
    assert run.format_version == 1 and len(run.frames) == 3
    g = run.load_frame(1)
    np.testing.assert_array_equal(g.image, frames[1].image)  # PNG: exact
    np.testing.assert_array_equal(g.depth, frames[1].depth)
    np.testing.assert_allclose(g.conf, frames[1].conf, atol=1e-3)
    assert g.source_image.shape == (48, 64, 3) and run.frames[1].source_size == (64, 48)
    with pytest.raises(OutputError, match="format 1"):
        RunWriter(tmp_path / "v1", resume_frames=2)
