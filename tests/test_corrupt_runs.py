"""Damaged run directories and bad input: every command ends with one `error:` line and exit 2.

A small run is made once (the plane model over a textured image folder, in-process), copied per
case and damaged the way a full disk, a copy cut short, a hand edit or another program would
damage it; then the user's commands run on it. Each must stop with exit code 2 and exactly one
`error:` line, never a traceback, and leave every file that was there before as it was (issue 21,
items 8 and 10).
"""

from __future__ import annotations

import json
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_faults_common import (
    PlaneModel,
    assert_user_error,
    error_lines,
    textured_images,
    write_images,
)

import laser_plugin.models.synthetic as synthetic
from laser_plugin.cli.main import main
from laser_plugin.types import WindowPrediction

# Two windows of 8; the resume state saved after each.
WINDOW = ("--window-size", "8", "--overlap", "3", "--no-loop-closure", "--quiet")
WINDOW += ("--checkpoint-interval", "0")
FRAMES = 14  # two windows


def laser(capsys, *argv: str) -> tuple[int, str]:
    """`laser ARGV` in-process: (exit code, stderr). Any other exception fails the test with its
    traceback, which is what a user would have seen."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.fixture(autouse=True)
def plane(monkeypatch):
    monkeypatch.setattr(
        synthetic, "make_model", lambda weights=None, device="cpu", **kw: PlaneModel()
    )


def run_args(frames: Path, out: Path, *extra: str) -> tuple[str, ...]:
    return ("run", frames, "--output-dir", out, "--model", "synthetic", *WINDOW, *extra)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path]:
    """(input folder, run directory) of a complete run with its resume state."""
    root = tmp_path_factory.mktemp("made")
    frames = root / "frames"
    write_images(frames, textured_images(FRAMES))
    out = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synthetic, "make_model", lambda weights=None, device="cpu", **kw: PlaneModel())
        code = main([str(a) for a in run_args(frames, out, "--outputs", "full")])
    assert code == 0
    assert (out / "state" / "engine.npz").is_file()
    return frames, out


@pytest.fixture
def run(made, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(made[1], out, symlinks=True)
    return out


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root``: file bytes, or the target of a link."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = f"-> {p.readlink()}"
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


def assert_kept(before: dict[str, bytes | str], root: Path) -> None:
    after = snapshot(root)
    for rel, data in before.items():
        assert rel in after, f"{rel} was removed"
        assert after[rel] == data, f"{rel} was changed"


# -- damage ------------------------------------------------------------------------------------


def _lines(run: Path) -> list[str]:
    return (run / "frames.jsonl").read_text().splitlines()


def _set_lines(run: Path, lines: list[str]) -> None:
    (run / "frames.jsonl").write_text("".join(line + "\n" for line in lines))


def _edit_record(run: Path, i: int, edit) -> None:
    lines = _lines(run)
    rec = json.loads(lines[i])
    edit(rec)
    lines[i] = json.dumps(rec)
    _set_lines(run, lines)


def _record(run: Path, i: int) -> dict:
    return json.loads(_lines(run)[i])


def no_index(run):
    _edit_record(run, 3, lambda r: r.pop("index"))


def not_json(run):
    lines = _lines(run)
    lines[3] = "this is not JSON"
    _set_lines(run, lines)


def truncated_line(run):
    lines = _lines(run)
    lines[3] = lines[3][: len(lines[3]) // 2]  # a torn line that is not the last one
    _set_lines(run, lines)


def not_an_object(run):
    lines = _lines(run)
    lines[3] = "[1, 2, 3]"
    _set_lines(run, lines)


def nan_pose(run):
    _edit_record(run, 2, lambda r: r["cam_to_world"][0].__setitem__(3, float("nan")))


def pose_wrong_shape(run):
    _edit_record(run, 2, lambda r: r.__setitem__("cam_to_world", [[1, 0], [0, 1]]))


def text_timestamp(run):
    _edit_record(run, 2, lambda r: r.__setitem__("timestamp", "noon"))


def not_an_image(run):
    (run / _record(run, 3)["image"]).write_bytes(b"\x00 these bytes are not a JPEG")


def truncated_image(run):
    p = run / _record(run, 3)["image"]
    p.write_bytes(p.read_bytes()[:40])


def not_an_original(run):
    (run / _record(run, 3)["source"]).write_bytes(b"GIF89a but nothing else")


def truncated_depth(run):
    p = run / _record(run, 3)["depth"]
    p.write_bytes(p.read_bytes()[:100])


def garbage_depth(run):
    (run / _record(run, 3)["depth"]).write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)


def depth_other_key(run):
    with zipfile.ZipFile(run / _record(run, 3)["depth"], "w") as z, z.open("x.npy", "w") as fh:
        np.lib.format.write_array(fh, np.zeros((2, 2), np.float16))


def depth_wrong_size(run):
    with zipfile.ZipFile(run / _record(run, 3)["depth"], "w") as z, z.open("depth.npy", "w") as fh:
        np.lib.format.write_array(fh, np.ones((5, 7), np.float16))


def truncated_conf(run):
    p = run / _record(run, 3)["conf"]
    p.write_bytes(p.read_bytes()[:60])


def summary_not_json(run):
    (run / "summary.json").write_text('{"format_version": 2, "status": "compl')


def summary_not_object(run):
    (run / "summary.json").write_text("[]")


def summary_not_utf8(run):
    (run / "summary.json").write_bytes(b'{"status": "\xff\xfe"}')


def settings_not_object(run):
    summary = json.loads((run / "summary.json").read_text())
    summary["settings"] = "run"
    (run / "summary.json").write_text(json.dumps(summary))


DAMAGE = {
    f.__name__: f
    for f in (
        no_index, not_json, truncated_line, not_an_object, nan_pose, pose_wrong_shape,
        text_timestamp, not_an_image, truncated_image, not_an_original, truncated_depth,
        garbage_depth, depth_other_key, depth_wrong_size, truncated_conf, summary_not_json,
        summary_not_object, summary_not_utf8, settings_not_object,
    )
}  # fmt: skip
# The frames.jsonl and summary.json cases fail before any frame is read: one command is enough
# for most; the per-frame files are read by every command, so each is tried.
READERS = ("view", "nerfstudio", "colmap")
CASES = [
    (damage, command)
    for damage in DAMAGE
    for command in READERS
    if command == "colmap"
    or damage in ("no_index", "nan_pose", "not_an_image", "truncated_depth", "summary_not_json")
]


def command_args(command: str, run: Path, tmp: Path) -> tuple[str, ...]:
    if command == "view":
        return ("view", run, "--rerun", f"save:{tmp / 'view.rrd'}")
    return ("export", command, run, tmp / f"export-{command}")


@pytest.mark.parametrize(("damage", "command"), CASES, ids=[f"{d}-{c}" for d, c in CASES])
def test_a_damaged_run_is_refused_in_one_line(run, tmp_path, capsys, damage, command):
    DAMAGE[damage](run)
    before = snapshot(run)
    code, err = laser(capsys, *command_args(command, run, tmp_path))
    line = assert_user_error(code, err)
    assert str(run) in line or "run" in line, line
    assert_kept(before, run)


def test_a_torn_last_line_is_still_read(run, tmp_path, capsys):
    """A hard kill mid-append leaves the last line without its newline: the frames before it
    are the run (not an error)."""
    data = (run / "frames.jsonl").read_bytes()
    (run / "frames.jsonl").write_bytes(data[: len(data) - 40])
    code, err = laser(capsys, "export", "colmap", run, tmp_path / "c")
    assert code == 0, err
    assert "colmap" in err.lower() and f"{FRAMES - 1} frames" in err


def test_a_garbled_marker_does_not_matter_to_readers(run, tmp_path, capsys):
    (run / ".laser-run.json").write_bytes(b"\xff garbage {")
    code, err = laser(capsys, "view", run, "--rerun", f"save:{tmp_path / 'v.rrd'}")
    assert code == 0, err
    assert "Traceback" not in err


# -- resume ------------------------------------------------------------------------------------


def _interrupted(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    summary["status"] = "interrupted"  # as Ctrl-C leaves it
    (run / "summary.json").write_text(json.dumps(summary))


def truncated_state(run):
    p = run / "state" / "engine.npz"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])


def garbage_state(run):
    (run / "state" / "engine.npz").write_bytes(b"not a zip file at all")


def state_without_meta(run):
    np.savez(run / "state" / "engine.npz", other=np.zeros(3))


def state_meta_not_object(run):
    np.savez(run / "state" / "engine.npz", meta=np.frombuffer(b"[1, 2]", np.uint8))


def linked_images(run):
    elsewhere = run.parent / "photos"
    shutil.copytree(run / "images", elsewhere)
    shutil.rmtree(run / "images")
    (run / "images").symlink_to(elsewhere, target_is_directory=True)


# damage -> what the error line says
RESUME_DAMAGE = {
    "truncated_state": (truncated_state, "cannot read the resume state"),
    "garbage_state": (garbage_state, "cannot read the resume state"),
    "state_without_meta": (state_without_meta, "cannot read the resume state"),
    "state_meta_not_object": (state_meta_not_object, "cannot read the resume state"),
    "not_json": (not_json, "frames.jsonl line 4 is not a JSON record"),
    "no_index": (no_index, "frames.jsonl line 4: no 'index'"),
    "summary_not_json": (summary_not_json, "summary.json is not valid JSON"),
    "summary_not_object": (summary_not_object, "summary.json does not hold a JSON object"),
    "linked_images": (linked_images, "images is a symbolic link"),
}


@pytest.mark.parametrize("damage", list(RESUME_DAMAGE))
def test_resume_of_a_damaged_run_is_refused_and_keeps_the_frames(made, run, capsys, damage):
    if not damage.startswith("summary"):
        _interrupted(run)
    RESUME_DAMAGE[damage][0](run)
    before = snapshot(run)
    outside = snapshot(run.parent / "photos") if damage == "linked_images" else {}
    code, err = laser(capsys, *run_args(made[0], run, "--outputs", "full", "--resume"))
    assert_user_error(code, err, RESUME_DAMAGE[damage][1])
    assert_kept(before, run)
    if outside:
        assert snapshot(run.parent / "photos") == outside  # nothing written through the link


def test_overwrite_does_not_remove_through_a_linked_folder(made, run, capsys):
    linked_images(run)
    before = snapshot(run.parent / "photos")
    code, err = laser(capsys, *run_args(made[0], run, "--outputs", "full", "--overwrite"))
    assert_user_error(code, err, "refusing to overwrite")
    assert snapshot(run.parent / "photos") == before
    assert (run / "images").is_symlink()


# -- bad options -------------------------------------------------------------------------------


BAD_OPTIONS = {
    "device": (("--device", "foo"), "--device 'foo' is not a device"),
    "device-index": (("--device", "cuda:x"), "is not a device"),
    "align-device": (("--align-device", "gpu0"), "--align-device 'gpu0' is not a device"),
    "fps-inf": (("--fps", "inf"), "--fps must be positive and finite"),
    "fps-nan": (("--fps", "nan"), "--fps must be positive and finite"),
    "checkpoint-nan": (("--checkpoint-interval", "nan"), "--checkpoint-interval"),
}


@pytest.mark.parametrize("name", list(BAD_OPTIONS))
def test_bad_options_are_refused_before_any_work(made, tmp_path, capsys, name):
    extra, needle = BAD_OPTIONS[name]
    out = tmp_path / "new"
    code, err = laser(capsys, *run_args(made[0], out, *extra))
    assert_user_error(code, err, needle)
    assert not out.exists()


@pytest.mark.parametrize("command", ["demo", "eval"])
def test_a_bad_device_of_demo_and_eval(tmp_path, capsys, command):
    if command == "demo":
        argv = ("demo", "--frames", "8", "--output-dir", tmp_path / "d", "--device", "foo")
    else:
        argv = ("eval", "--dataset", "synthetic", "demo", "--device", "foo")
    code, err = laser(capsys, *argv)
    assert_user_error(code, err, "'foo' is not a device")
    assert not (tmp_path / "d").exists()


# -- eval: ground truth ------------------------------------------------------------------------


def tum_sequence(root: Path, frames: Path, groundtruth: bytes) -> Path:
    """A TUM-layout sequence over the run's input images (no depth) with ``groundtruth``."""
    seq = root / "rgbd_dataset_freiburg1_test"
    seq.mkdir(parents=True)
    names = sorted(p.name for p in frames.iterdir())
    (seq / "rgb").mkdir()
    lines = []
    for i, name in enumerate(names):
        shutil.copy(frames / name, seq / "rgb" / name)
        lines.append(f"{100 + i / 30:.6f} rgb/{name}")
    (seq / "rgb.txt").write_text("\n".join(lines) + "\n")
    (seq / "groundtruth.txt").write_bytes(groundtruth)
    return root


def test_eval_on_a_ground_truth_that_is_not_text(made, tmp_path, capsys):
    root = tum_sequence(tmp_path / "tum", made[0], b"# ground truth\n\xff\xfe\x00\x01 1 2 3\n")
    code, err = laser(capsys, "eval", "--dataset", "tum", root, "--predictions", made[1])
    line = assert_user_error(code, err, "groundtruth.txt", "not UTF-8")
    assert "rgbd_dataset_freiburg1_test" in line


def test_eval_says_why_there_is_no_ate(made, tmp_path, capsys):
    # Parsable, but its times are a day off the frames': no frame gets a pose.
    gt = "".join(f"{86400 + i:.6f} 0 0 0 0 0 0 1\n" for i in range(FRAMES)).encode()
    root = tum_sequence(tmp_path / "tum", made[0], gt)
    code, err = laser(capsys, "eval", "--dataset", "tum", root, "--predictions", made[1])
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1, err
    assert "no ATE/RPE" in warned[0] and "0 of its 14 frames" in warned[0], warned


# -- a network whose output is not finite ------------------------------------------------------


class NanModel(PlaneModel):
    """Broken weights: everything the network returns is NaN (from window ``first_bad`` on)."""

    def __init__(self, first_bad: int = 0, what: str = "all"):
        super().__init__()
        self.first_bad, self.what = first_bad, what

    def __call__(self, images: torch.Tensor) -> WindowPrediction:
        pred = super().__call__(images)
        if self.calls - 1 < self.first_bad:
            return pred
        nan = float("nan")
        if self.what == "poses":
            return WindowPrediction(
                pred.depth, pred.conf, torch.full_like(pred.cam_to_world, nan), pred.intrinsics
            )
        return WindowPrediction(
            torch.full_like(pred.depth, nan),
            torch.full_like(pred.conf, nan),
            torch.full_like(pred.cam_to_world, nan),
            torch.full_like(pred.intrinsics, nan),
        )


@pytest.mark.parametrize(("first_bad", "what"), [(0, "all"), (1, "all"), (1, "poses")])
def test_a_network_giving_nan_stops_at_the_window_in_one_line(
    made, tmp_path, capsys, monkeypatch, first_bad, what
):
    monkeypatch.setattr(
        synthetic, "make_model", lambda weights=None, device="cpu", **kw: NanModel(first_bad, what)
    )
    out = tmp_path / "out"
    code, err = laser(capsys, *run_args(made[0], out))
    line = assert_user_error(code, err, f"window {first_bad}", "not finite")
    assert ("every camera pose" if what == "poses" else "NaN") in line
    from laser_plugin.io.run_dir import load_run

    kept = load_run(out)
    assert kept.status == "failed"
    assert len(kept.frames) == (0 if first_bad == 0 else 8)  # window 0's frames stay


def test_the_engine_raises_the_same_error_for_api_callers():
    from laser_plugin import LaserConfig, StreamingReconstructor
    from laser_plugin.prepare import ModelOutputError

    rec = StreamingReconstructor(NanModel(1), LaserConfig(window_size=8, overlap=3))
    with pytest.raises(ModelOutputError, match=r"window 1 \(frames 5-12\)"):
        rec.reconstruct(textured_images(FRAMES))


# -- viewers that show nothing -----------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_view_connect_to_a_closed_port_says_nothing_was_shown(run, capsys):
    pytest.importorskip("rerun")
    port = _closed_port()
    code, err = laser(
        capsys, "view", run, "--rerun", f"connect:rerun+http://127.0.0.1:{port}/proxy"
    )
    line = assert_user_error(code, err, "nothing was shown", str(port))
    assert "ERROR" not in err.replace(line, "")  # no raw Rust logs: the SDK was never started


def test_headless_view_spawn_says_nothing_was_shown(run, capsys, monkeypatch):
    pytest.importorskip("rerun")
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "WAYLAND_SOCKET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    code, err = laser(capsys, "view", run, "--rerun", "spawn")
    assert_user_error(code, err, "nothing was shown", "no display")
    assert error_lines(err) and "ERROR" not in err.replace(error_lines(err)[0], "")


def test_a_window_prepared_by_a_worker_stops_the_same_way():
    """The fast path prepares windows where they were predicted: the verdict comes back with
    the prepared window and the aligning process stops on it."""
    from laser_plugin import LaserConfig, StreamingReconstructor
    from laser_plugin.predictors import Workers
    from laser_plugin.prepare import ModelOutputError
    from laser_plugin.worker import WorkerPool

    cfg = LaserConfig(window_size=8, overlap=3)
    with WorkerPool(
        lambda **kw: NanModel(1, "poses"), ["cpu"], threads=1, in_process_first=True
    ) as pool:
        rec = StreamingReconstructor(pool, cfg, predictor=Workers(pool, prepare="all"))
        with pytest.raises(ModelOutputError, match=r"window 1 .*every camera pose"):
            rec.reconstruct(textured_images(FRAMES))
        assert rec.timings.get("worker_prepare", 0.0) > 0  # prepared in the worker


class SvdOnNanModel(NanModel):
    """From window ``first_bad`` on, the network's own computation raises as π³'s rotation SVD
    does on the CPU for broken (NaN) weights."""

    def __call__(self, images):
        if self.calls >= self.first_bad:
            self.calls += 1
            torch.linalg.svd(torch.full((1, 3, 3), float("nan")))
        return super().__call__(images)


@pytest.mark.parametrize("runner", ["engine", "worker"])
def test_a_network_raising_on_nan_stops_in_one_line_on_every_runner(runner):
    """Issue 21: in a worker this came back as a WorkerError carrying a traceback."""
    from laser_plugin import LaserConfig, StreamingReconstructor
    from laser_plugin.predictors import Workers
    from laser_plugin.prepare import ModelOutputError
    from laser_plugin.worker import WorkerPool

    cfg = LaserConfig(window_size=8, overlap=3)
    match = r"window 1\b.*non-finite values"
    if runner == "engine":
        with pytest.raises(ModelOutputError, match=match):
            StreamingReconstructor(SvdOnNanModel(1), cfg).reconstruct(textured_images(FRAMES))
        return
    with WorkerPool(
        lambda **kw: SvdOnNanModel(1), ["cpu"], threads=1, in_process_first=True
    ) as pool:
        with pytest.raises(ModelOutputError, match=match) as info:
            rec = StreamingReconstructor(pool, cfg, predictor=Workers(pool))
            rec.reconstruct(textured_images(FRAMES))
        assert "\n" not in str(info.value) and "Traceback" not in str(info.value)


@pytest.mark.parametrize("command", ["run", "demo"])
def test_run_with_a_viewer_that_can_show_nothing_is_refused_at_start(
    made, tmp_path, capsys, monkeypatch, command
):
    """`laser run --rerun spawn` without a display used to warn and run on (issue 21)."""
    pytest.importorskip("rerun")
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "WAYLAND_SOCKET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    out = tmp_path / "out"
    args = [*run_args(made[0], out)] if command == "run" else ["demo", "--output-dir", str(out)]
    code, err = laser(capsys, *args, "--rerun", "spawn")
    assert_user_error(code, err, "nothing was shown", "no display")
    assert not out.exists()  # refused before the run directory was made
    port = _closed_port()
    code, err = laser(capsys, *args, "--rerun", f"connect:rerun+http://127.0.0.1:{port}/proxy")
    assert_user_error(code, err, "no Rerun viewer listens", str(port))
    assert not out.exists()
