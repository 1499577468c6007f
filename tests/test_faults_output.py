"""Output faults: existing directories, read-only and full disks, Ctrl-C, SIGTERM and kill -9 mid-run,
then `--resume`; a failing viewer sink; no file outside the output directory.

Afterwards the run directory always loads through ``load_run`` and holds exactly the frames
finalised before the stop, with trajectory.txt agreeing with frames.jsonl.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import laser
from test_faults_common import (
    PlaneModel,
    assert_user_error,
    cli_command,
    cli_env,
    scene_images,
    scene_spec,
    textured_images,
    write_images,
)

import laser_plugin.models.synthetic as synthetic
from laser_plugin.io.run_dir import load_run
from laser_plugin.models.synthetic import EmulatedModel, make_scene
from laser_plugin.resume import load_state

# 40 frames -> 8 windows, with the defaults (loop closure on: it resumes like the rest).
WINDOW = ("--window-size", "8", "--overlap", "3")


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("scene") / "frames"
    write_images(d, scene_images())
    return d


@pytest.fixture
def scene_model(monkeypatch):
    scene = make_scene("demo", 40, 64, 112)
    monkeypatch.setattr(
        synthetic, "make_model", lambda weights=None, device="cpu", **kw: EmulatedModel(scene)
    )


@pytest.fixture(scope="module")
def reference(scene_dir, tmp_path_factory):
    """An uninterrupted run of the same input and settings."""
    out = tmp_path_factory.mktemp("ref") / "run"
    r = subprocess.run(
        cli_command(
            "run",
            str(scene_dir),
            "--output-dir",
            str(out),
            "--model",
            "synthetic",
            "--quiet",
            *WINDOW,
        ),
        env=cli_env(scene_spec()),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    run = load_run(out)
    assert run.status == "complete" and len(run.frames) == 40
    return run


@pytest.fixture(scope="module")
def reference_without_loops(scene_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref_plain") / "run"
    args = ("--output-dir", str(out), "--model", "synthetic", "--quiet", "--no-loop-closure")
    r = subprocess.run(
        cli_command("run", str(scene_dir), *args, *WINDOW),
        env=cli_env(scene_spec()),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return load_run(out)


def read_tum(path: Path) -> np.ndarray:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return np.array(rows, dtype=np.float64).reshape(-1, 8)


def assert_consistent(out: Path, exact_text_files: bool = True):
    """load_run works; frames are 0..n-1, each loads; trajectory.txt agrees with frames.jsonl."""
    run = load_run(out)
    n = len(run.frames)
    assert [f.index for f in run.frames] == list(range(n))
    for i in range(n):
        f = run.load_frame(i)
        assert f.depth.shape == (64, 112) and np.isfinite(f.depth).all()
    tum = read_tum(out / "trajectory.txt")
    if exact_text_files:
        assert len(tum) == n
    else:  # a hard kill may land between a frame's trajectory line and its frames.jsonl line
        assert n <= len(tum) <= n + 1
    if n:
        np.testing.assert_allclose(tum[:n, 1:4], run.cam_to_world()[:, :3, 3], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(tum[:n, 0], [f.timestamp for f in run.frames], atol=1e-6)
    return run


def assert_same_run(a, b):
    assert [f.index for f in a.frames] == [f.index for f in b.frames]
    np.testing.assert_allclose(a.cam_to_world(), b.cam_to_world(), atol=1e-6)
    for i in range(len(a.frames)):
        np.testing.assert_allclose(
            a.load_frame(i).depth, b.load_frame(i).depth, rtol=1e-5, atol=1e-6
        )


def start(scene_dir, out, *extra, delay=0.3):
    return subprocess.Popen(
        cli_command(
            "run",
            str(scene_dir),
            "--output-dir",
            str(out),
            "--model",
            "synthetic",
            *WINDOW,
            "--checkpoint-interval",
            "0",
            *extra,
        ),
        env=cli_env(scene_spec(), delay=delay),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_frames(proc, out: Path, n: int, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    jsonl = out / "frames.jsonl"
    while time.monotonic() < end:
        if jsonl.exists() and jsonl.read_bytes().count(b"\n") >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.communicate()[1]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out waiting for frames")


def resume(scene_dir, out):
    args = (
        "run",
        str(scene_dir),
        "--output-dir",
        str(out),
        "--model",
        "synthetic",
        "--quiet",
        *WINDOW,
    )
    return subprocess.run(
        cli_command(*args, "--resume"),
        env=cli_env(scene_spec(), count=True),
        capture_output=True,
        text=True,
        timeout=300,
    )


def model_calls(stderr: str) -> int:
    return int(re.search(r"model calls: (\d+)", stderr).group(1))


# -- existing output directory ----------------------------------------------------------------


def test_existing_run_is_refused_then_overwritten(tmp_path, capsys, scene_dir, scene_model):
    out = tmp_path / "out"
    args = (
        "run",
        str(scene_dir),
        "--output-dir",
        str(out),
        "--model",
        "synthetic",
        "--quiet",
        *WINDOW,
    )
    assert laser(capsys, *args, "--max-frames", "10")[0] == 0
    code, err = laser(capsys, *args)
    assert_user_error(code, err, "is not empty", "--overwrite", "--resume")
    assert len(load_run(out).frames) == 10  # untouched
    code, err = laser(capsys, *args, "--max-frames", "12", "--overwrite")
    assert code == 0, err
    run = assert_consistent(out)
    assert len(run.frames) == 12 and run.status == "complete"


def test_overwrite_refuses_a_directory_of_other_files(tmp_path, capsys, scene_dir, scene_model):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    code, err = laser(
        capsys,
        "run",
        str(scene_dir),
        "--output-dir",
        str(out),
        "--model",
        "synthetic",
        "--overwrite",
    )
    assert_user_error(code, err, "refusing to overwrite", "thesis.tex")
    assert (out / "thesis.tex").read_text() == "precious"


def test_output_path_is_a_file(tmp_path, capsys, scene_dir, scene_model):
    (tmp_path / "f").write_text("x")
    code, err = laser(
        capsys, "run", str(scene_dir), "--output-dir", str(tmp_path / "f"), "--model", "synthetic"
    )
    assert_user_error(code, err, "not a directory")


def test_resume_needs_a_run_and_matching_settings(tmp_path, capsys, scene_dir, scene_model):
    out = tmp_path / "out"
    args = ("run", str(scene_dir), "--output-dir", str(out), "--model", "synthetic", "--quiet")
    code, err = laser(capsys, *args, "--resume")
    assert_user_error(code, err, "nothing to resume")
    assert laser(capsys, *args, *WINDOW, "--max-frames", "20")[0] == 0
    code, err = laser(
        capsys, *args, "--window-size", "10", "--overlap", "3", "--max-frames", "20", "--resume"
    )
    assert_user_error(code, err, "cannot resume", "window_size was 8, now 10")
    code, err = laser(capsys, *args, *WINDOW, "--resume", "--overwrite", "--max-frames", "20")
    assert_user_error(code, err, "--resume", "--overwrite")
    before = (out / "frames.jsonl").read_bytes()
    code, err = laser(capsys, *args, *WINDOW, "--max-frames", "20", "--resume")
    assert code == 0 and "nothing to resume" in err and "is complete" in err, err
    assert (out / "frames.jsonl").read_bytes() == before


# -- file systems -----------------------------------------------------------------------------


def _mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True
    )
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {r.stderr.strip()}")


@pytest.fixture
def mounts():
    made: list[Path] = []
    yield lambda path, options: (_mount_tmpfs(path, options), made.append(path))
    for path in reversed(made):
        subprocess.run(["umount", str(path)], check=False)


def test_read_only_directory(tmp_path, capsys, scene_dir, scene_model, mounts):
    ro = tmp_path / "ro"
    mounts(ro, "ro,size=1m")
    code, err = laser(
        capsys, "run", str(scene_dir), "--output-dir", str(ro / "out"), "--model", "synthetic"
    )
    assert_user_error(code, err, "cannot write to output directory", "read-only file system")


def test_disk_full_stops_with_one_line_then_resumes(
    tmp_path, capsys, scene_dir, scene_model, mounts, reference
):
    disk = tmp_path / "disk"
    # Part of what the whole run needs (~1.1 MB in the compact format 2, plus loop closure's
    # spill in state/, whose depth and confidence are stored raw since they left the aligning
    # thread), so the disk fills part-way whatever file is written at that moment.
    mounts(disk, "size=1200k")
    out = disk / "out"
    args = (
        "run",
        str(scene_dir),
        "--output-dir",
        str(out),
        "--model",
        "synthetic",
        "--quiet",
        *WINDOW,
    )
    code, err = laser(capsys, *args)
    line = assert_user_error(code, err, "no space left on device", "--resume")
    run = assert_consistent(out)
    assert 0 < len(run.frames) < 40, line  # stopped part-way, every saved frame complete
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    code, err = laser(capsys, *args, "--resume")
    assert code == 0, err
    resumed = assert_consistent(out)
    assert resumed.status == "complete"
    assert_same_run(resumed, reference)


# -- interruptions ----------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_run_keeps_finalised_frames_and_resumes(tmp_path, scene_dir, reference, sig):
    out = tmp_path / "out"
    proc = start(scene_dir, out)
    wait_for_frames(proc, out, 10)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted" in err
    run = assert_consistent(out)
    assert run.status == "interrupted"
    assert 10 <= len(run.frames) < 40
    saved = load_state(out)
    assert saved is not None and saved.num_windows >= 1 and saved.num_frames <= len(run.frames)
    r = resume(scene_dir, out)
    assert r.returncode == 0, r.stderr
    resumed = assert_consistent(out)
    assert resumed.status == "complete" and resumed.summary.get("resumed") == 1
    # Only the windows after the last saved one ran again (8 in all), plus loop closure's
    # verification calls of those windows (its candidates, counted in the state and the summary).
    loop = resumed.summary["loop_closure"]
    assert loop == reference.summary["loop_closure"] and loop["accepted"] > 0
    verified = loop["candidates"] - saved.hooks["loop"]["meta"]["counts"]["candidates"]
    assert model_calls(r.stderr) == 8 - saved.num_windows + verified, r.stderr
    assert_same_run(resumed, reference)
    assert (out / "points.ply").read_bytes() == (reference.path / "points.ply").read_bytes()


def test_kill_9_mid_run_leaves_a_loadable_run_that_resumes(
    tmp_path, scene_dir, reference, reference_without_loops
):
    out = tmp_path / "out"
    proc = start(scene_dir, out, delay=0.1)
    wait_for_frames(proc, out, 14)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    run = assert_consistent(out, exact_text_files=False)
    assert run.status == "running"  # nobody could write otherwise
    assert 14 <= len(run.frames) <= 40
    # Each frame written before the kill is the uninterrupted run's, or (a loop closed later
    # moved it there) the same frame without loop closure's correction.
    n = len(run.frames)
    near = [
        np.abs(run.cam_to_world()[:n] - ref.cam_to_world()[:n]).max(axis=(1, 2)) <= 1e-6
        for ref in (reference, reference_without_loops)
    ]
    assert np.logical_or(*near).all(), near
    r = resume(scene_dir, out)
    assert r.returncode == 0, r.stderr
    resumed = assert_consistent(out)
    assert resumed.status == "complete"
    assert_same_run(resumed, reference)


def test_api_interrupt_then_resume_equals_uninterrupted(tmp_path):
    """The resume state round trip without processes: a sink stops the run after 17 frames."""
    from laser_plugin.cli.run import execute
    from laser_plugin.config import LaserConfig

    scene = make_scene("demo", 40, 64, 112)
    for mode in ("earlier", "later"):
        cfg = LaserConfig(window_size=8, overlap=3, overlap_estimate=mode)
        settings = {"input": "scene", "model": "synthetic", "laser": cfg.to_dict()}

        class Stop:
            seen = 0

            def on_frame(self, frame):
                Stop.seen += 1
                if Stop.seen == 17:
                    raise KeyboardInterrupt

            def close(self):
                pass

        kw = dict(settings=settings, quiet=True)
        execute(
            EmulatedModel(scene), scene.frames(), cfg, tmp_path / f"a{mode}", overwrite=False, **kw
        )
        with pytest.raises(KeyboardInterrupt):
            execute(
                EmulatedModel(scene),
                scene.frames(),
                cfg,
                tmp_path / f"b{mode}",
                overwrite=False,
                extra_sinks=[Stop()],
                **kw,
            )
        assert load_run(tmp_path / f"b{mode}").status == "interrupted"
        execute(
            EmulatedModel(scene),
            scene.frames(),
            cfg,
            tmp_path / f"b{mode}",
            overwrite=False,
            resume=True,
            **kw,
        )
        a, b = load_run(tmp_path / f"a{mode}"), load_run(tmp_path / f"b{mode}")
        assert len(b.frames) == 40
        assert_same_run(a, b)


# -- sinks and file names ---------------------------------------------------------------------


def test_a_sink_raising_mid_stream_is_detached_and_the_files_are_complete(tmp_path, capsys):
    from laser_plugin.cli.run import execute
    from laser_plugin.config import LaserConfig

    class Viewer:
        def __init__(self):
            self.frames = []
            self.closed = False

        def on_frame(self, frame):
            if len(self.frames) == 9:
                raise ConnectionResetError("viewer went away")
            self.frames.append(frame.index)

        def close(self):
            self.closed = True

    class Healthy(Viewer):
        def on_frame(self, frame):
            self.frames.append(frame.index)

    broken, healthy = Viewer(), Healthy()
    scene = make_scene("demo", 40, 64, 112)
    cfg = LaserConfig(window_size=8, overlap=3)
    execute(
        EmulatedModel(scene),
        scene.frames(),
        cfg,
        tmp_path / "out",
        overwrite=False,
        settings={},
        quiet=True,
        extra_sinks=[broken, healthy],
    )
    err = capsys.readouterr().err
    assert (
        err.count("warning: sink Viewer failed in on_frame and was detached: viewer went away") == 1
    )
    assert broken.frames == list(range(9)) and broken.closed
    assert healthy.frames == list(range(40)) and healthy.closed
    run = assert_consistent(tmp_path / "out")
    assert len(run.frames) == 40 and run.status == "complete"


ODD_NAMES = [
    "..png",
    "a b;$(touch pwned).png",
    "ñandú 雪.png",
    "-rf.png",
    "x\nfake.png",
    "%s%n.png",
    "'\".png",
]


def test_odd_input_names_write_nothing_outside_the_output_dir(tmp_path, capsys, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(
        synthetic, "make_model", lambda weights=None, device="cpu", **kw: PlaneModel()
    )
    src = tmp_path / "in" / "..." / "weird dir $HOME"
    src.mkdir(parents=True)
    for name, image in zip(ODD_NAMES, textured_images(len(ODD_NAMES))):
        Image.fromarray(image).save(src / name, format="PNG")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "out"
    code, err = laser(
        capsys,
        "run",
        str(src),
        "--output-dir",
        str(out),
        "--model",
        "synthetic",
        "--quiet",
        "--window-size",
        "4",
        "--overlap",
        "1",
    )
    assert code == 0, err
    new = {p for p in tmp_path.rglob("*")} - before
    outside = [p for p in new if out not in p.parents and p != out]
    assert outside == []
    run = load_run(out)
    # Hidden files (names starting with ".", e.g. macOS "._IMG.jpg" debris) are not frames.
    assert len(run.frames) == len([n for n in ODD_NAMES if not n.startswith(".")])
    # Every file the run wrote is named by frame index, whatever the input names were.
    assert all(Path(f.paths["image"]).stem == f"{f.index:06d}" for f in run.frames)
    assert not (cwd / "pwned").exists()


def test_viser_default_bind_is_loopback():
    """The viewer only listens beyond this machine when asked (see also tests/test_viser_*)."""
    import inspect

    from laser_plugin.cli.run import Viewers

    assert Viewers().host == "127.0.0.1"
    viser_integration = pytest.importorskip("laser_plugin.integrations.viser")
    assert (
        inspect.signature(viser_integration.make_viser_sink).parameters["host"].default
        == "127.0.0.1"
    )


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.makedirs, (self.marker,))


def test_resume_state_is_never_unpickled(tmp_path, capsys, scene_dir, scene_model):
    """A tampered OUT/state/engine.npz holding a pickle is refused in one line; its code never runs."""
    out = tmp_path / "out"
    args = (
        "run",
        str(scene_dir),
        "--output-dir",
        str(out),
        "--model",
        "synthetic",
        "--quiet",
        *WINDOW,
    )
    assert laser(capsys, *args, "--max-frames", "16", "--checkpoint-interval", "0")[0] == 0
    summary = out / "summary.json"
    summary.write_text(
        summary.read_text().replace('"status": "complete"', '"status": "interrupted"')
    )
    marker = tmp_path / "pwned"
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(marker)
    np.savez(out / "state" / "engine.npz", meta=evil)
    code, err = laser(capsys, *args, "--max-frames", "16", "--checkpoint-interval", "0", "--resume")
    assert_user_error(code, err, "cannot read the resume state")
    assert not marker.exists()


def test_write_failure_mid_run_is_one_line_without_root(tmp_path, scene_dir):
    """A file-size limit (RLIMIT_FSIZE, no privileges needed) makes a write fail mid-run, as a
    full disk would: one line, exit 2, and the frames saved so far load."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    out = tmp_path / "out"
    args = (
        "run",
        str(scene_dir),
        "--output-dir",
        str(out),
        "--model",
        "synthetic",
        "--quiet",
        *WINDOW,
    )
    r = subprocess.run(
        cli_command(*args),
        env=cli_env(scene_spec()),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit,
    )
    assert_user_error(r.returncode, r.stderr, "file too large")
    run = assert_consistent(out)
    assert run.status == "failed" or len(run.frames) < 40
