"""Batch manifests and the per-video task, without Ray."""

from __future__ import annotations

import json

import pytest
from batch_helpers import CONFIG, SCENE, assert_run_matches, direct_run, write_clip

from laser_plugin.batch import Job, TaskSpec, read_manifest, run_job
from laser_plugin.batch.manifest import safe_name
from laser_plugin.cli.batch import parse_model_options
from laser_plugin.errors import ConfigError, InputError
from laser_plugin.io.run_dir import load_run


def test_text_manifest_relative_paths_comments_and_collisions(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    m = tmp_path / "videos.txt"
    m.write_text(f"# clips\n\na/clip.mp4\n  b/clip.mp4  \n{tmp_path}/c d#1.mov\n")
    jobs = read_manifest(m)
    assert [j.path for j in jobs] == [
        str(tmp_path / "a/clip.mp4"),
        str(tmp_path / "b/clip.mp4"),
        f"{tmp_path}/c d#1.mov",
    ]
    # Colliding stems get a stable hash of the absolute path; unique ones keep the stem.
    assert jobs[0].name.startswith("clip-") and jobs[1].name.startswith("clip-")
    assert jobs[0].name != jobs[1].name and len(jobs[0].name) == len("clip-") + 8
    assert jobs[2].name == "c_d_1"
    assert read_manifest(m) == jobs


def test_csv_and_jsonl_manifests(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("Name,path\nfirst,x/one.mp4\n,x/two\n\n")
    assert read_manifest(csv) == [
        Job("first", str(tmp_path / "x/one.mp4")),
        Job("two", str(tmp_path / "x/two")),
    ]
    jl = tmp_path / "m.jsonl"
    jl.write_text(
        json.dumps({"path": "/data/v.mp4", "name": "my clip"})
        + "\n\n"
        + json.dumps({"path": "w"})
        + "\n"
    )
    assert read_manifest(jl) == [Job("my_clip", "/data/v.mp4"), Job("w", str(tmp_path / "w"))]


@pytest.mark.parametrize(
    ("name", "text", "error", "match"),
    [
        ("m.txt", "# nothing\n", InputError, "lists no videos"),
        ("m.csv", "video\nx.mp4\n", InputError, "'path' column"),
        ("m.jsonl", '{"path": "a"}\nnot json\n', InputError, r"m.jsonl:2: not JSON"),
        ("m.jsonl", '{"name": "a"}\n', InputError, "'path' string"),
        ("m.csv", "path,name\na.mp4,x\nb.mp4,x\n", ConfigError, "already used"),
        ("m.txt", "a.mp4\na.mp4\n", ConfigError, "already used"),
        ("m.csv", "path,name\na.mp4,..\n", ConfigError, "output directory name"),
    ],
)
def test_bad_manifests_are_one_line_errors(tmp_path, name, text, error, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(error, match=match):
        read_manifest(tmp_path / name)


def test_missing_manifest(tmp_path):
    with pytest.raises(InputError, match="manifest not found"):
        read_manifest(tmp_path / "nope.txt")


def test_safe_name_and_model_options():
    assert safe_name(" a/b c.d ") == "a_b_c.d"
    assert parse_model_options(("scene=demo", "frames=40", "x=[1, 2]")) == {
        "scene": "demo",
        "frames": 40,
        "x": [1, 2],
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_model_options(("frames",))


def synthetic_spec() -> TaskSpec:
    return TaskSpec(model="synthetic", model_options=dict(SCENE), laser=CONFIG)


def test_run_job_writes_the_same_run_as_the_engine(tmp_path):
    clip = write_clip(tmp_path / "in" / "clip", 5, 21)
    reported = []
    rec = run_job(
        Job("clip", str(clip)),
        str(tmp_path / "out"),
        synthetic_spec(),
        report=lambda n, f: reported.append((n, f)),
    )
    assert rec["ok"] is True and rec["frames"] == 16 and rec["windows"] == 3
    assert reported[-1] == ("clip", 16) and [f for _, f in reported] == sorted(
        f for _, f in reported
    )
    run = load_run(tmp_path / "out" / "clip")
    assert run.summary["settings"]["command"] == "batch" and run.summary["batch_attempt"] == 1
    assert_run_matches(run, direct_run(clip), clip)
    # Running a finished video again (laser batch --force) redoes it rather than resuming it.
    again = run_job(Job("clip", str(clip)), str(tmp_path / "out"), synthetic_spec(), attempt=1)
    assert again["ok"] and again["frames"] == 16 and "resumed_frames" not in again


def test_run_job_failures_are_records_with_retryable(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    rec = run_job(Job("empty", str(empty)), str(tmp_path / "out"), synthetic_spec())
    assert (
        rec["ok"] is False and rec["retryable"] is False and "no images in folder" in rec["error"]
    )
    # The run directory says "failed" (not "complete"), so a resumed batch tries it again.
    run = load_run(tmp_path / "out" / "empty")
    assert run.status == "failed" and run.frames == [] and "no images" in run.summary["error"]

    def broken(device):
        raise RuntimeError("CUDA out of memory (emulated)")

    spec = synthetic_spec()
    spec.model_factory = broken
    clip = write_clip(tmp_path / "clip", 0, 10)
    rec = run_job(Job("clip", str(clip)), str(tmp_path / "out"), spec, attempt=2)
    assert rec["ok"] is False and rec["retryable"] is True and rec["attempt"] == 2
    assert (
        rec["error"] == "RuntimeError: CUDA out of memory (emulated)"
        and "broken" in rec["traceback"]
    )

    # Frames the emulated model does not know (not its scene's): a user error, one line.
    spec = TaskSpec(model="synthetic", model_options={**SCENE, "seed": 1}, laser=CONFIG)
    rec = run_job(Job("clip", str(clip)), str(tmp_path / "out"), spec)
    assert rec["ok"] is False and rec["retryable"] is False and "synthetic scene" in rec["error"]
