"""Input faults through the real CLI: a one-line error for what the user must fix, a warning and a
sane result for degraded input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import laser
from test_faults_common import (
    PlaneModel,
    assert_user_error,
    make_video,
    run_cli,
    textured_images,
    write_images,
)

import laser_plugin.models.synthetic as synthetic
from laser_plugin.io.run_dir import load_run
from laser_plugin.sources import open_source, read_image


@pytest.fixture
def plane(monkeypatch):
    """`--model synthetic` reconstructs any input with PlaneModel."""
    model = PlaneModel()
    monkeypatch.setattr(synthetic, "make_model", lambda weights=None, device="cpu", **kw: model)
    return model


def run_args(inp, out, *extra):
    return (
        "run",
        str(inp),
        "--output-dir",
        str(out),
        "--model",
        "synthetic",
        "--quiet",
        "--window-size",
        "6",
        "--overlap",
        "2",
        *extra,
    )


def assert_plane_run(out, n: int):
    """The run holds n frames 0..n-1 whose trajectory is the plane model's x = 0.05 i."""
    run = load_run(out)
    assert run.status == "complete"
    assert [f.index for f in run.frames] == list(range(n))
    x = run.cam_to_world()[:, 0, 3]
    np.testing.assert_allclose(x, 0.05 * np.arange(n), atol=1e-4)
    assert len((out / "trajectory.txt").read_text().splitlines()) == n
    return run


def test_missing_path(tmp_path, capsys, plane):
    code, err = laser(capsys, *run_args(tmp_path / "nope.mp4", tmp_path / "out"))
    assert_user_error(code, err, "input not found", "nope.mp4")
    assert not (tmp_path / "out").exists()


def test_empty_folder(tmp_path, capsys, plane):
    (tmp_path / "empty").mkdir()
    code, err = laser(capsys, *run_args(tmp_path / "empty", tmp_path / "out"))
    assert_user_error(code, err, "no images")
    assert not (tmp_path / "out").exists()  # nothing written for bad input


def test_folder_with_only_non_images(tmp_path, capsys, plane):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    (d / "clip.json").write_text("{}")
    code, err = laser(capsys, *run_args(d, tmp_path / "out"))
    assert_user_error(code, err, "no images")
    assert not (tmp_path / "out").exists()  # nothing written for bad input


def test_non_images_mixed_in(tmp_path, capsys, plane):
    d = tmp_path / "frames"
    write_images(d, textured_images(9))
    (d / "notes.txt").write_text("not an image")
    (d / ".DS_Store").write_bytes(b"\0\1")
    (d / "frame_0004b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # an image name, corrupt
    code, err = laser(capsys, *run_args(d, tmp_path / "out"))
    assert code == 0, err
    assert "Traceback" not in err
    assert "warning: skipped 1 non-image file" in err
    assert "warning: skipping unreadable image" in err and "frame_0004b.png" in err
    assert_plane_run(tmp_path / "out", 9)


def test_unsupported_container(tmp_path, capsys, plane):
    f = tmp_path / "scan.xyz"
    f.write_bytes(b"1 2 3\n")
    code, err = laser(capsys, *run_args(f, tmp_path / "out"))
    assert_user_error(code, err, "unsupported input", "scan.xyz")
    assert not (tmp_path / "out").exists()  # nothing written for bad input


def test_garbage_with_video_suffix(tmp_path, capsys, plane):
    f = tmp_path / "clip.mp4"
    f.write_bytes(np.random.default_rng(0).bytes(4000))
    code, err = laser(capsys, *run_args(f, tmp_path / "out"))
    assert_user_error(code, err, "clip.mp4")
    assert not (tmp_path / "out").exists()  # nothing written for bad input


def test_video_decodes_lazily_and_fully(tmp_path, capsys, plane):
    frames = textured_images(12)
    video = make_video(tmp_path / "clip.mp4", frames)
    src = open_source(video)
    first = next(src)  # a generator: one frame decoded, not the whole file
    assert first.image.shape == (48, 64, 3) and first.index == 0
    assert len(list(src)) == 11
    code, err = laser(capsys, *run_args(video, tmp_path / "out"))
    assert code == 0, err
    assert_plane_run(tmp_path / "out", 12)


def _cut(video, fraction: float = 0.5):
    data = video.read_bytes()
    cut = video.with_name("cut" + video.suffix)
    cut.write_bytes(data[: int(len(data) * fraction)])
    return cut


def test_truncated_stream_keeps_decodable_frames(tmp_path, capsys, plane):
    # MPEG-TS is a stream format: a cut file is a shorter valid stream (nothing says it was cut).
    cut = _cut(make_video(tmp_path / "clip.ts", textured_images(40)))
    n = len(list(open_source(cut)))
    assert 5 <= n < 40
    code, err = laser(capsys, *run_args(cut, tmp_path / "out"))
    assert code == 0, err
    assert "Traceback" not in err
    assert_plane_run(tmp_path / "out", n)


def test_truncated_video_warns(tmp_path, capsys, plane):
    # AVI declares its frame count: decoding fewer is reported, the frames decoded are used.
    cut = _cut(make_video(tmp_path / "clip.avi", textured_images(40)))
    with pytest.warns(UserWarning, match="declares 40 frames but only"):
        n = len(list(open_source(cut)))
    assert 1 <= n < 40
    code, err = laser(capsys, *run_args(cut, tmp_path / "out"))
    assert code == 0, err
    assert "warning: video" in err and "truncated file?" in err
    assert_plane_run(tmp_path / "out", n)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_video_cut_before_any_frame(tmp_path, capsys, plane, suffix):
    cut = _cut(make_video(tmp_path / f"clip{suffix}", textured_images(10)), 0.3)
    code, err = laser(capsys, *run_args(cut, tmp_path / "out"))
    assert_user_error(code, err, cut.name)
    assert not (tmp_path / "out").exists()  # nothing written for bad input


def test_image_modes_are_normalised(tmp_path):
    from PIL import Image

    rgb = textured_images(1, 24, 32)[0]
    gray = rgb[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    rgba = np.dstack([rgb, np.full(gray.shape, 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit
    # EXIF orientation 6: the stored pixels must be rotated 90 degrees clockwise to display.
    exif = Image.Exif()
    exif[0x0112] = 6
    blocks = np.zeros((24, 32, 3), np.uint8)  # smooth content survives JPEG
    blocks[:12, :16] = (250, 0, 0)
    blocks[:12, 16:] = (0, 250, 0)
    blocks[12:, :16] = (0, 0, 250)
    Image.fromarray(blocks).save(tmp_path / "rotated.jpg", exif=exif, quality=95)

    g = read_image(tmp_path / "gray.png")
    assert g.shape == (24, 32, 3) and g.dtype == np.uint8
    np.testing.assert_array_equal(g[..., 1], gray)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)
    d = read_image(tmp_path / "deep.png")
    assert d.dtype == np.uint8 and d.shape == (24, 32, 3)
    np.testing.assert_array_equal(d[..., 0], gray)  # 16-bit scaled back to 8, not clipped
    r = read_image(tmp_path / "rotated.jpg")
    assert r.shape == (32, 24, 3)  # portrait, as the camera held it
    err_cw = np.abs(r.astype(int) - np.rot90(blocks, k=-1).astype(int)).mean()
    err_ccw = np.abs(r.astype(int) - np.rot90(blocks, k=1).astype(int)).mean()
    assert err_cw < 10 < err_ccw, (err_cw, err_ccw)


def test_mixed_modes_and_sizes_run(tmp_path, capsys, plane):
    from PIL import Image

    d = tmp_path / "frames"
    d.mkdir()
    for i, im in enumerate(textured_images(8)):
        if i % 3 == 1:
            Image.fromarray(im[..., 0], "L").save(d / f"{i:02d}.png")
        elif i % 3 == 2:
            Image.fromarray(np.dstack([im, np.full(im.shape[:2], 255, np.uint8)]), "RGBA").save(
                d / f"{i:02d}.png"
            )
        else:
            Image.fromarray(im).resize((96, 70) if i == 3 else (64, 48)).save(d / f"{i:02d}.png")
    code, err = laser(capsys, *run_args(d, tmp_path / "out"))
    assert code == 0, err
    assert "warning: frame 3 is 96x70 but the stream started at 64x48" in err
    run = assert_plane_run(tmp_path / "out", 8)
    sizes = {run.load_frame(i).image.shape for i in range(8)}
    assert sizes == {(48, 64, 3)}  # every frame at the model size


def test_single_frame(tmp_path, capsys, plane):
    write_images(tmp_path / "one", textured_images(1))
    code, err = laser(capsys, *run_args(tmp_path / "one", tmp_path / "out"))
    assert code == 0, err
    run = assert_plane_run(tmp_path / "out", 1)
    np.testing.assert_allclose(run.frames[0].cam_to_world, np.eye(4), atol=1e-6)  # the global frame


def test_single_image_file(tmp_path, capsys, plane):
    path = write_images(tmp_path / "one", textured_images(1))[0]
    code, err = laser(capsys, *run_args(path, tmp_path / "out"))
    assert code == 0, err
    assert_plane_run(tmp_path / "out", 1)


@pytest.mark.parametrize("n", [2, 3])
def test_stream_shorter_than_the_overlap(tmp_path, capsys, plane, n):
    write_images(tmp_path / "few", textured_images(n))
    code, err = laser(
        capsys,
        *run_args(tmp_path / "few", tmp_path / "out", "--window-size", "10", "--overlap", "5"),
    )
    assert code == 0, err
    assert_plane_run(tmp_path / "out", n)


def test_long_stream_is_processed_lazily():
    """The engine pulls at most one window ahead of what it has emitted (memory is bounded)."""
    from laser_plugin import LaserConfig, StreamingReconstructor

    pulled = 0
    frames = textured_images(1, 48, 64)[0]

    def stream():
        nonlocal pulled
        for _ in range(150):
            pulled += 1
            yield frames

    rec = StreamingReconstructor(PlaneModel(), LaserConfig(window_size=6, overlap=2))
    lag = []
    emitted = 0
    for f in rec.run(stream()):
        emitted += 1
        lag.append(pulled - emitted)
        assert f.index == emitted - 1
    assert emitted == 150
    assert max(lag) <= 6  # never more than one window of frames in flight
    assert len(rec._cache) <= 5  # the overlap cache holds at most L-1 frames


def test_cli_user_errors_have_no_traceback_in_a_real_process(tmp_path):
    r = run_cli(
        "run",
        str(tmp_path / "missing"),
        "--output-dir",
        str(tmp_path / "o"),
        "--model",
        "synthetic",
    )
    assert_user_error(r.returncode, r.stderr, "input not found")


def test_summary_records_the_input_settings(tmp_path, capsys, plane):
    write_images(tmp_path / "f", textured_images(7))
    code, err = laser(capsys, *run_args(tmp_path / "f", tmp_path / "out", "--stride", "2"))
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["settings"]["stride"] == 2
    assert summary["frames"] == 4  # frames 0, 2, 4, 6


def test_audio_only_file(tmp_path, capsys, plane):
    import av

    path = tmp_path / "voice.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mp2", rate=44100)
        stream.layout = "mono"
        for i in range(5):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1152), np.int16), format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = 44100, i * 1152
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    code, err = laser(capsys, *run_args(path, tmp_path / "out"))
    assert_user_error(code, err, "voice.mkv has no video stream")
    assert not (tmp_path / "out").exists()
