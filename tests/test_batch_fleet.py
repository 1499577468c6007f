"""``laser batch`` on a real single-node Ray (CPU, synthetic backend): outputs, retries, resume.

One Ray session for the whole module (starting Ray is the slow part on 2 cores).
"""

from __future__ import annotations

import json
import os
import sys

import pytest
from batch_helpers import CLIPS, CONFIG, SCENE, assert_run_matches, direct_run, write_clip

from laser_plugin.batch import FleetOptions, Job, TaskSpec, read_manifest, run_batch
from laser_plugin.cli.main import main
from laser_plugin.io.run_dir import load_run

ray = pytest.importorskip("ray", reason="laser batch needs Ray: pip install 'laser-plugin[ray]'")


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    # The flaky models below are defined here; ship them by value to the workers.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    folders = {name: write_clip(root / name, *span) for name, span in CLIPS.items()}
    refs = {name: direct_run(folder) for name, folder in folders.items()}
    return folders, refs


class FlakyModel:
    """The synthetic model, except that on frames of ``fail_on`` it fails ``times`` times first
    (counted in marker files, since each attempt runs in a fresh task): ``crash`` kills the worker
    process, anything else raises."""

    def __init__(self, marker_dir, fail_on, times, how):
        from laser_plugin.models.synthetic import make_model, make_scene

        scene = make_scene(
            SCENE["scene"], SCENE["num_frames"], SCENE["height"], SCENE["width"], seed=SCENE["seed"]
        )
        self.model = make_model(scene=scene)
        self.input_size = self.model.input_size
        self.marker_dir, self.fail_on, self.times, self.how = marker_dir, fail_on, times, how

    def __call__(self, images):
        indices = self.model._indices(images)
        for name, first in self.fail_on.items():
            if first in indices:
                done = len(list(self.marker_dir.glob(f"{name}.*")))
                if done < self.times:
                    (self.marker_dir / f"{name}.{done}").touch()
                    if self.how == "crash":
                        os._exit(3)
                    raise RuntimeError(f"transient failure {done + 1} on {name}")
        return self.model.predict(indices)


def flaky_spec(marker_dir, fail_on, times, how):
    marker_dir.mkdir(parents=True, exist_ok=True)
    return TaskSpec(
        model="synthetic", laser=CONFIG,
        model_factory=lambda device: FlakyModel(marker_dir, fail_on, times, how),
    )  # fmt: skip


def test_fleet_outputs_retries_failures_and_resume(clips, tmp_path):
    folders, refs = clips
    empty = tmp_path / "empty"
    empty.mkdir()
    jobs = [Job(n, str(f)) for n, f in folders.items()]
    jobs += [Job("empty", str(empty)), Job("missing", str(tmp_path / "no_such_clip"))]
    # "desk" crashes its worker once in its second window (a lost worker); the retry continues
    # from the first window's saved state.
    spec = flaky_spec(tmp_path / "markers", {"desk": CLIPS["desk"][0] + 12}, times=1, how="crash")
    states = []
    result = run_batch(
        jobs, tmp_path / "out", spec, FleetOptions(retries=2), on_update=states.append
    )
    by = {r["name"]: r for r in result.records}
    assert [r["name"] for r in result.records] == [j.name for j in jobs]
    assert not result.ok and result.counts == {"complete": 3, "skipped": 0, "failed": 2}
    assert not result.used_gpus and by["hall"]["device"] == "cpu"

    for name, folder in folders.items():
        rec = by[name]
        assert rec["status"] == "complete" and rec["frames"] == len(refs[name]), rec
        assert rec["windows"] >= 2 and rec["fps"] > 0
        assert_run_matches(load_run(tmp_path / "out" / name), refs[name], folder)
    assert by["hall"]["attempts"] == by["door"]["attempts"] == 1 and by["hall"]["errors"] == []
    assert by["desk"]["attempts"] == 2 and len(by["desk"]["errors"]) == 1
    assert "WorkerCrashedError" in by["desk"]["errors"][0] or "died" in by["desk"]["errors"][0]
    assert by["desk"]["resumed_frames"] == 8 and "resumed_frames" not in by["hall"]
    assert load_run(tmp_path / "out" / "desk").summary["batch_attempt"] == 2

    # User errors fail at once: retrying an empty folder or a missing path cannot help.
    assert by["empty"]["status"] == "failed" and by["empty"]["attempts"] == 1
    assert "no images in folder" in by["empty"]["error"] and by["empty"]["retryable"] is False
    assert load_run(tmp_path / "out" / "empty").status == "failed"
    assert by["missing"]["status"] == "failed" and "input not found" in by["missing"]["error"]

    # Fleet progress reached the total of frames; the records are on disk too.
    assert states and states[-1]["frames"] == sum(len(r) for r in refs.values())
    assert max(s["running"] for s in states) >= 2 and states[-1]["retried"] == 1
    on_disk = json.loads((tmp_path / "out" / "batch_summary.json").read_text())
    assert [v["status"] for v in on_disk["videos"]] == [r["status"] for r in result.records]
    assert on_disk["frames"] == sum(len(r) for r in refs.values())

    # Resume: finished videos are skipped (their files untouched); the failed ones run again and
    # the empty folder, now filled, completes.
    stamps = {n: (tmp_path / "out" / n / "summary.json").stat().st_mtime_ns for n in folders}
    write_clip(empty, 3, 13)
    again = run_batch(jobs, tmp_path / "out", spec, FleetOptions(retries=0))
    by2 = {r["name"]: r for r in again.records}
    for n in folders:
        assert (
            by2[n]["status"] == "skipped"
            and by2[n]["attempts"] == 0
            and by2[n]["frames"] == len(refs[n])
        )
        assert (tmp_path / "out" / n / "summary.json").stat().st_mtime_ns == stamps[n]
    assert by2["empty"]["status"] == "complete" and by2["empty"]["frames"] == 10
    assert_run_matches(load_run(tmp_path / "out" / "empty"), direct_run(empty), empty)
    assert by2["missing"]["status"] == "failed"
    assert again.counts == {"complete": 1, "skipped": 3, "failed": 1}


def test_retries_are_counted_and_bounded(clips, tmp_path):
    folders, _ = clips
    spec = flaky_spec(tmp_path / "markers", {"hall": CLIPS["hall"][0]}, times=10, how="raise")
    result = run_batch(
        [Job("hall", str(folders["hall"]))], tmp_path / "out", spec, FleetOptions(retries=2)
    )
    rec = result.records[0]
    assert rec["status"] == "failed" and rec["attempts"] == 3
    assert rec["errors"] == [f"RuntimeError: transient failure {k} on hall" for k in (1, 2, 3)]
    assert len(list((tmp_path / "markers").iterdir())) == 3
    assert load_run(tmp_path / "out" / "hall").status == "failed"


def test_laser_batch_command(clips, tmp_path, capsys, monkeypatch):
    folders, refs = clips
    monkeypatch.setenv("COLUMNS", "200")  # rich folds the table to 80 columns otherwise
    manifest = tmp_path / "videos.csv"
    manifest.write_text(
        "path,name\n" + "".join(f"{folders[n]},clip {n}\n" for n in ("hall", "door"))
    )
    args = [
        "batch", str(manifest), "--output-root", str(tmp_path / "out"), "--model", "synthetic",
        "--model-option", *(f"{k}={v}" for k, v in SCENE.items()),
        "--window-size", "8", "--overlap", "3", "--retries", "1",
    ]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "laser batch" in err and "clip_hall" in err and "2 complete" in err
    for n in ("hall", "door"):
        assert_run_matches(load_run(tmp_path / "out" / f"clip_{n}"), refs[n], folders[n])
    assert main(args) == 0
    assert "2 skipped" in capsys.readouterr().err

    # A failing video makes the command exit 1 after the table; a bad manifest is a one-line error.
    manifest.write_text(manifest.read_text() + f"{tmp_path / 'nothing'},gone\n")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "1 of 3 videos failed" in err and "input not found" in err
    assert [j.name for j in read_manifest(manifest)] == ["clip_hall", "clip_door", "gone"]
    (tmp_path / "bad.csv").write_text("video\nx\n")
    with pytest.raises(SystemExit) as exit_info:
        main([*args[:1], str(tmp_path / "bad.csv"), *args[2:]])
    assert exit_info.value.code == 2
    assert "'path' column" in capsys.readouterr().err
