"""Nothing of the user's is lost, nothing outside the named folders is read, and nothing hangs.

Each test builds what a user could have on disk (a project with ``.git``, photos in ``images/``,
a symlinked folder, a crafted run directory, a FIFO) and checks that it survives, or that the
command stops with one ``error:`` line. Issue 21 lists the reproductions these come from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import laser
from PIL import Image
from test_faults_common import (
    assert_user_error,
    cli_command,
    cli_env,
    error_lines,
    scene_images,
    scene_spec,
    write_images,
)

from laser_plugin.errors import InputError, OutputError
from laser_plugin.io import lock, ownership
from laser_plugin.io.run_dir import RunWriter, load_run, prepare_output_dir

LASER = [sys.executable, "-m", "laser_plugin.cli.main"]
SMALL_DEMO = ("--frames", "12", "--height", "32", "--width", "48", "--quiet")
WINDOW = ("--window-size", "8", "--overlap", "3", "--no-loop-closure")


def demo(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*LASER, "demo", *SMALL_DEMO, "--output-dir", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )


def user_project(root: Path) -> dict[Path, bytes]:
    """A user's project folder: version control, secrets, photos in a folder named like ours."""
    files = {
        root / ".git" / "HEAD": b"ref: refs/heads/main\n",
        root / ".env": b"TOKEN=secret\n",
        root / "images" / "IMG_0001.jpg": b"\xff\xd8 a photo",
        root / "source" / "raw.dng": b"raw sensor data",
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def assert_intact(files: dict[Path, bytes]) -> None:
    for path, data in files.items():
        assert path.read_bytes() == data, path


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "run"
    r = demo(out)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture
def run_copy(demo_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(demo_run, out, symlinks=True)
    return out


# -- 1. a run removes only what it can prove it wrote ------------------------------------------


def test_demo_never_removes_a_users_project(tmp_path):
    proj = tmp_path / "proj"
    files = user_project(proj)
    for extra in ((), ("--overwrite",)):
        r = demo(proj, *extra)
        assert_user_error(r.returncode, r.stderr)
        assert_intact(files)
    assert not (proj / "summary.json").exists()


def test_run_overwrite_never_removes_a_users_project(tmp_path, capsys):
    proj = tmp_path / "proj"
    files = user_project(proj)
    frames = tmp_path / "frames"
    write_images(frames, scene_images(3))
    code, err = laser(
        capsys, "run", str(frames), "--output-dir", str(proj), "--model", "synthetic", "--overwrite"
    )
    assert_intact(files)
    assert_user_error(code, err, "refusing to overwrite")


def test_demo_replaces_only_its_own_earlier_run_and_says_so(tmp_path):
    out = tmp_path / "d"
    assert demo(out).returncode == 0
    r = subprocess.run(
        [*LASER, "demo", "--frames", "12", "--height", "32", "--width", "48", "--output-dir", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "replacing the earlier demo run" in r.stderr  # not silently
    assert load_run(out).status == "complete"
    # A run of another command is not the demo's to replace without --overwrite.
    summary = json.loads((out / "summary.json").read_text())
    summary["settings"]["command"] = "run"
    (out / "summary.json").write_text(json.dumps(summary))
    r = demo(out)
    assert_user_error(r.returncode, r.stderr, "not empty", "--overwrite")
    assert demo(out, "--overwrite").returncode == 0


def _claimed_run(path: Path) -> Path:
    """A small run directory written by laser (marker, lock released)."""
    prepare_output_dir(path)
    RunWriter(path).close("complete")
    lock.release(path)
    return path


def test_overwrite_refuses_a_photo_dropped_into_the_runs_own_folder(tmp_path):
    out = _claimed_run(tmp_path / "run")
    photo = out / "images" / "IMG_0001.jpg"
    photo.write_bytes(b"photo")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(OutputError, match=r"images/IMG_0001\.jpg"):
        prepare_output_dir(out, overwrite=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing removed
    assert photo.read_bytes() == b"photo"


@pytest.mark.parametrize("name", [".git", ".env", ".config"])
def test_overwrite_refuses_hidden_entries(tmp_path, name):
    out = _claimed_run(tmp_path / "run")
    (out / name).mkdir()
    (out / name / "keep").write_text("mine")
    with pytest.raises(OutputError, match="refusing to overwrite"):
        prepare_output_dir(out, overwrite=True)
    assert (out / name / "keep").read_text() == "mine"


def test_a_directory_reached_through_a_symlink_keeps_its_config(tmp_path):
    real = _claimed_run(tmp_path / "real")
    (real / ".config").mkdir()
    (real / ".config" / "settings").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with pytest.raises(OutputError, match=r"\.config"):
        prepare_output_dir(link, overwrite=True)
    assert (real / ".config" / "settings").read_text() == "mine"


def test_overwrite_follows_no_symlink_inside_the_run(tmp_path):
    out = _claimed_run(tmp_path / "run")
    precious = tmp_path / "precious.png"
    precious.write_bytes(b"keep")
    (out / "images" / "000000.png").symlink_to(precious)
    shutil.rmtree(out / "depth", ignore_errors=True)
    (out / "depth").symlink_to(tmp_path, target_is_directory=True)  # would rmtree tmp_path
    with pytest.raises(OutputError, match="refusing to overwrite"):
        prepare_output_dir(out, overwrite=True)
    assert precious.read_bytes() == b"keep"


def test_the_resume_state_may_nest_folders_but_not_hide_user_files(tmp_path):
    out = _claimed_run(tmp_path / "run")
    loop = out / "state" / "loop" / "frames"  # the loop closure's spilled records
    loop.mkdir(parents=True)
    (loop / "000000001.npz").write_bytes(b"r")
    (out / "state" / "loop" / "poses.f64").write_bytes(b"p")
    (out / "state" / "loop" / ".hidden").write_text("mine")
    with pytest.raises(OutputError, match=r"state/loop/\.hidden"):
        prepare_output_dir(out, overwrite=True)
    assert (out / "state" / "loop" / ".hidden").read_text() == "mine"
    (out / "state" / "loop" / ".hidden").unlink()
    prepare_output_dir(out, overwrite=True)
    lock.release(out)
    assert not (out / "state").exists()


def test_overwrite_needs_the_marker_of_a_run_laser_started(tmp_path):
    out = _claimed_run(tmp_path / "run")
    (out / ownership.RUN_MARKER).unlink()  # e.g. a folder a user assembled with our names
    with pytest.raises(OutputError, match=ownership.RUN_MARKER):
        prepare_output_dir(out, overwrite=True)
    assert (out / "summary.json").exists()


def test_overwrite_of_a_run_of_ours_removes_exactly_its_files(tmp_path):
    out = _claimed_run(tmp_path / "run")
    (out / "images").mkdir(exist_ok=True)
    (out / "depth").mkdir(exist_ok=True)
    (out / "images" / "000007.png").write_bytes(b"frame")
    (out / "depth" / ".000007.npy.tmp123").write_bytes(b"torn")  # a kill mid atomic write
    prepare_output_dir(out, overwrite=True)
    lock.release(out)
    assert sorted(os.listdir(out)) == sorted([ownership.RUN_MARKER, lock.LOCK_NAME])


def test_a_run_that_finished_no_frame_does_not_block_the_next(tmp_path):
    out = _claimed_run(tmp_path / "run")  # e.g. refused input: failed before its first frame
    prepare_output_dir(out)  # a plain re-run replaces it, no --overwrite needed
    lock.release(out)
    (out / "notes.txt").write_text("mine")  # but never with something of the user's in it
    with pytest.raises(OutputError, match=r"notes\.txt"):
        prepare_output_dir(out)
    (out / "notes.txt").unlink()
    RunWriter(out).close("complete")
    (out / "frames.jsonl").write_text('{"index": 0}\n')  # one finished frame: worth keeping
    with pytest.raises(OutputError, match="not empty"):
        prepare_output_dir(out)
    lock.release(out)


def test_batch_reserves_the_name_of_its_records(tmp_path):
    from laser_plugin.batch import Job, TaskSpec, run_batch
    from laser_plugin.errors import ConfigError

    jobs = [Job("batch_summary.json", str(tmp_path / "clip"))]
    with pytest.raises(ConfigError, match=r"cannot be named batch_summary\.json"):
        run_batch(jobs, tmp_path / "root", TaskSpec(model="synthetic"))


def test_batch_never_deletes_a_folder_it_did_not_write(tmp_path):
    from batch_helpers import CONFIG, SCENE, write_clip

    from laser_plugin.batch import Job, TaskSpec
    from laser_plugin.batch.task import run_job

    clip = write_clip(tmp_path / "clip", 0, 10)
    root = tmp_path / "root"
    files = user_project(root / "clip")
    spec = TaskSpec(model="synthetic", model_options=dict(SCENE), laser=CONFIG)
    rec = run_job(Job("clip", str(clip)), str(root), spec)
    assert rec["ok"] is False and rec["retryable"] is False and "not empty" in rec["error"]
    assert_intact(files)
    # A run of the user's own `laser run` there is not the batch's to replace either.
    other = _claimed_run(tmp_path / "root" / "mine")
    summary = json.loads((other / "summary.json").read_text())
    summary["settings"] = {"command": "run"}
    (other / "summary.json").write_text(json.dumps(summary))
    rec = run_job(Job("mine", str(clip)), str(root), spec)
    assert rec["ok"] is False and "no earlier batch run" in rec["error"]
    assert json.loads((other / "summary.json").read_text())["settings"] == {"command": "run"}


# -- 2. one writer per run directory -----------------------------------------------------------


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("scene") / "frames"
    write_images(d, scene_images())
    return d


def _run_args(scene_dir: Path, out: Path, *extra: str) -> list[str]:
    return cli_command(
        "run", str(scene_dir), "--output-dir", str(out), "--model", "synthetic", "--quiet",
        *WINDOW, "--checkpoint-interval", "0", *extra,
    )  # fmt: skip


def test_a_second_writer_on_a_run_directory_stops_with_one_line(tmp_path, scene_dir):
    out = tmp_path / "out"
    first = subprocess.Popen(
        _run_args(scene_dir, out),
        env=cli_env(scene_spec(), delay=2.5),  # long enough for two more processes to start
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        end = time.monotonic() + 120
        while not (out / "frames.jsonl").exists() or not (out / "frames.jsonl").read_bytes():
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < end, "the first run wrote nothing"
            time.sleep(0.1)
        for extra in (("--resume",), ("--overwrite", "--max-frames", "12")):
            r = subprocess.run(
                _run_args(scene_dir, out, *extra),
                env=cli_env(scene_spec()),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert_user_error(r.returncode, r.stderr, "in use by another laser process")
        assert first.poll() is None, "the first run ended before the second writer was tried"
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    run = load_run(out)
    assert run.status == "complete" and [f.index for f in run.frames] == list(range(40))
    assert (out / "frames.jsonl").read_bytes().count(b"\n") == 40  # no duplicated frames


def test_a_run_being_written_is_not_exported(run_copy, tmp_path, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from laser_plugin.io import lock; lock.acquire(sys.argv[1]); "
         "print('held', flush=True); time.sleep(60)", str(run_copy)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = laser(capsys, "export", "colmap", str(run_copy), str(tmp_path / "c"))
        assert_user_error(code, err, "being written by another laser process")
    finally:
        holder.kill()
        holder.wait()
    code, err = laser(capsys, "export", "colmap", str(run_copy), str(tmp_path / "c2"))
    assert code == 0, err


def test_the_lock_is_released_when_its_holder_dies(tmp_path):
    out = _claimed_run(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from laser_plugin.io import lock; lock.acquire(sys.argv[1]); "
         "print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            OutputError, match=f"in use by another laser process \\(pid {holder.pid}\\)"
        ):
            prepare_output_dir(out, overwrite=True)
        assert (out / "summary.json").exists()
    finally:
        holder.kill()
        holder.wait()
    prepare_output_dir(out, overwrite=True)  # kill -9 left no stale lock
    lock.release(out)


def test_bookkeeping_files_replaced_by_symlinks_are_not_followed(tmp_path, demo_run, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep")
    out = _claimed_run(tmp_path / "run")
    (out / lock.LOCK_NAME).unlink()
    (out / lock.LOCK_NAME).symlink_to(precious)
    with pytest.raises(OutputError, match="cannot write to output directory"):
        prepare_output_dir(out, overwrite=True)
    ns = tmp_path / "ns"
    assert laser(capsys, "export", "nerfstudio", str(demo_run), str(ns))[0] == 0
    (ns / ownership.EXPORT_JOURNAL).unlink()
    (ns / ownership.EXPORT_JOURNAL).symlink_to(precious)
    code, err = laser(capsys, "export", "nerfstudio", str(demo_run), str(ns), "--overwrite")
    assert_user_error(code, err, "holds no laser export")
    assert precious.read_text() == "keep"
    assert (ns / "transforms.json").exists()


# -- 3. a run directory cannot make laser read outside it --------------------------------------


def _rewrite_first_frame(run: Path, **changes) -> None:
    lines = (run / "frames.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec.update(changes)
    lines[0] = json.dumps(rec)
    (run / "frames.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "changes",
    [
        {"depth": "../../../../../../../../etc/passwd"},
        {"image": "/etc/hostname"},
        {"conf": "depth/../../outside.npy"},
        {"image": 5},
    ],
    ids=["dotdot", "absolute", "nested-dotdot", "not-a-string"],
)
def test_paths_in_frames_jsonl_stay_inside_the_run(run_copy, capsys, tmp_path, changes):
    _rewrite_first_frame(run_copy, **changes)
    with pytest.raises(InputError, match="outside the run directory"):
        load_run(run_copy)
    code, err = laser(capsys, "export", "nerfstudio", str(run_copy), str(tmp_path / "ns"))
    assert_user_error(code, err, "outside the run directory")
    assert not (tmp_path / "ns").exists()


def test_a_symlink_leading_out_of_the_run_is_refused(run_copy, tmp_path):
    secret = tmp_path / "secret.png"
    Image.fromarray(np.full((32, 48, 3), 7, np.uint8)).save(secret)
    rec = json.loads((run_copy / "frames.jsonl").read_text().splitlines()[0])
    (run_copy / rec["image"]).unlink()
    (run_copy / rec["image"]).symlink_to(secret)
    with pytest.raises(InputError, match="outside the run directory"):
        load_run(run_copy)


# -- 4. export replaces only what it wrote ---------------------------------------------------


def test_export_overwrite_removes_only_the_exporters_files(demo_run, tmp_path, capsys):
    out = tmp_path / "ns"
    assert laser(capsys, "export", "nerfstudio", str(demo_run), str(out))[0] == 0
    raw = out / "images_raw_user" / "DSC_0001.jpg"
    raw.parent.mkdir()
    raw.write_bytes(b"user photo")
    dropped = out / "images" / "IMG_0001.jpg"
    dropped.write_bytes(b"another")
    code, err = laser(capsys, "export", "nerfstudio", str(demo_run), str(out))
    assert_user_error(code, err, "already holds", "--overwrite")
    code, err = laser(capsys, "export", "nerfstudio", str(demo_run), str(out), "--overwrite")
    assert code == 0, err
    assert raw.read_bytes() == b"user photo" and dropped.read_bytes() == b"another"
    meta = json.loads((out / "transforms.json").read_text())
    assert len(meta["frames"]) == 12
    # A COLMAP export does not silently replace the nerfstudio one in the same folder.
    code, err = laser(capsys, "export", "colmap", str(demo_run), str(out))
    assert_user_error(code, err, "already holds")
    assert (out / "transforms.json").exists()


def test_export_into_the_run_itself_is_refused(run_copy, capsys):
    before = sorted(p.relative_to(run_copy) for p in run_copy.rglob("*"))
    for target in (run_copy, run_copy / "export"):
        for kind in ("nerfstudio", "colmap"):
            code, err = laser(capsys, "export", kind, str(run_copy), str(target), "--overwrite")
            assert_user_error(code, err, "outside the run directory")
    assert sorted(p.relative_to(run_copy) for p in run_copy.rglob("*")) == before


def test_export_into_a_folder_of_user_files_is_refused(demo_run, tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "images").mkdir(parents=True)
    photo = out / "images" / "frame_000000.png"  # the very name the exporter writes
    photo.write_bytes(b"user's own frame")
    for kind in ("nerfstudio", "colmap"):
        code, err = laser(capsys, "export", kind, str(demo_run), str(out))
        assert_user_error(code, err, "not empty")
    assert photo.read_bytes() == b"user's own frame"
    assert sorted(os.listdir(out)) == ["images"]  # not even a lock file was left


# -- 5. resume notices a changed input ---------------------------------------------------------


def test_resume_refuses_a_changed_image_folder(tmp_path):
    frames = tmp_path / "frames"
    write_images(frames, scene_images())
    out = tmp_path / "out"
    r = subprocess.run(
        _run_args(frames, out), env=cli_env(scene_spec()), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    summary["status"] = "interrupted"  # as a Ctrl-C leaves it (the state is saved every window)
    (out / "summary.json").write_text(json.dumps(summary))
    for p in sorted(frames.iterdir())[:10]:
        p.unlink()
    before = (out / "frames.jsonl").read_bytes()
    r = subprocess.run(
        _run_args(frames, out, "--resume"), env=cli_env(scene_spec()), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert_user_error(r.returncode, r.stderr, "cannot resume", "input", "changed", "40", "30")
    assert (out / "frames.jsonl").read_bytes() == before


def test_input_fingerprint_changes_with_the_file(tmp_path):
    from laser_plugin.resume import input_fingerprint

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x" * 100)
    a = input_fingerprint(clip)
    clip.write_bytes(b"y" * 90)
    assert input_fingerprint(clip) != a
    folder = tmp_path / "f"
    write_images(folder, scene_images(3))
    b = input_fingerprint(folder)
    (folder / "notes.txt").write_text("not an image: not part of the input")
    assert input_fingerprint(folder) == b
    os.utime(folder / "frame_0001.png", ns=(0, 0))
    assert input_fingerprint(folder) != b


# -- 6. an input inside the output -------------------------------------------------------------


def test_input_inside_the_output_is_refused(run_copy, capsys):
    images = run_copy / "images"
    before = sorted(os.listdir(images))
    for extra in ("--overwrite", "--resume"):
        code, err = laser(
            capsys, "run", str(images), "--output-dir", str(run_copy), "--model", "synthetic", extra
        )
        assert_user_error(code, err, "inside the output directory")
    assert sorted(os.listdir(images)) == before


# -- 7. nothing hangs --------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_fifo_input_is_refused_at_once(tmp_path, suffix):
    fifo = tmp_path / f"clip{suffix}"
    os.mkfifo(fifo)
    r = subprocess.run(
        [*LASER, "run", str(fifo), "--model", "synthetic", "--output-dir", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert_user_error(r.returncode, r.stderr, "not a regular file")
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_run_naming_a_fifo_as_its_input_does_not_hang_the_export(tmp_path):
    from test_faults_common import make_video, textured_images

    video = make_video(tmp_path / "in.mp4", textured_images(6, h=48, w=64))
    out = tmp_path / "run"
    r = subprocess.run(
        cli_command("run", str(video), "--output-dir", str(out), "--model", "synthetic",
                    "--quiet", *WINDOW),
        env=cli_env("plane"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    if not any(f.source_ref for f in load_run(out).frames):
        pytest.skip("this run keeps its original frames: the input is never read back")
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    summary = json.loads((out / "summary.json").read_text())
    summary["settings"]["input"] = str(fifo)  # a crafted (or moved) run
    (out / "summary.json").write_text(json.dumps(summary))
    r = subprocess.run(
        [*LASER, "export", "colmap", str(out), str(tmp_path / "c")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert_user_error(r.returncode, r.stderr, "not a regular file")


def test_batch_with_an_unreachable_address_ends_in_one_line(tmp_path):
    pytest.importorskip("ray")
    write_images(tmp_path / "clip", scene_images(2))
    manifest = tmp_path / "list.txt"
    manifest.write_text(str(tmp_path / "clip") + "\n")
    start = time.monotonic()
    r = subprocess.run(
        [*LASER, "batch", str(manifest), "--output-root", str(tmp_path / "root"),
         "--model", "synthetic", "--address", "127.0.0.1:1", "--quiet"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert time.monotonic() - start < 60
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    (line,) = error_lines(r.stderr)
    assert "127.0.0.1:1" in line
