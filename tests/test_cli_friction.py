"""Issue 21, "Friction a new user hit": --device is the network's in every command (the alignment's
is --align-device), `laser run`'s default output folder is named after the input and never
collides, help text without placeholder types or internal names, and .ci/test.sh runs every
phase. CPU only, fast: nothing here runs a model."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from laser_plugin.cli.main import main
from laser_plugin.cli.run import DEFAULT_OUTPUT_DIR, default_output_dir

ROOT = Path(__file__).resolve().parents[1]


def laser(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = int(exc.code or 0)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def help_text(capsys, *argv) -> str:
    code, out, err = laser(capsys, *argv, "--help")
    assert code == 0, err
    return out


# -- --device / --align-device -------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "demo", "batch", "eval"])
def test_device_is_the_networks_and_align_device_the_alignments(capsys, command):
    text = " ".join(help_text(capsys, command).split())
    first_sentence = text[text.index("--device ") :].split(". ")[0]
    assert "network" in first_sentence and "alignment" not in first_sentence, first_sentence
    assert "--align-device" in text


def test_demo_refuses_a_bad_align_device_by_its_name(capsys, tmp_path):
    code, _, err = laser(capsys, "demo", "--output-dir", tmp_path / "d", "--align-device", "gpu0")
    assert code == 2 and "--align-device 'gpu0' is not a device" in err
    assert not (tmp_path / "d").exists()


def test_eval_align_device_follows_device_by_default(capsys):
    from laser_plugin.cli.eval import Eval

    assert Eval(dataset="synthetic").align_device == "auto"
    code, _, err = laser(capsys, "eval", "--dataset", "synthetic", "demo", "--align-device", "x")
    assert code == 2 and "--align-device 'x' is not a device" in err


def test_batch_device_choices(capsys):
    code, _, err = laser(capsys, "batch", "m.txt", "--output-root", "o", "--device", "cuda:7")
    assert code == 2 and "--device" in err


# -- default output folder ------------------------------------------------------------------------


def _fake_run(folder: Path, source: Path, status: str, command: str = "run") -> None:
    folder.mkdir(parents=True)
    settings = {"command": command, "input": str(source.resolve())}
    (folder / "summary.json").write_text(json.dumps({"status": status, "settings": settings}))


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    video = tmp_path / "in" / "walk.mp4"
    folder = tmp_path / "in" / "kitchen"
    video.parent.mkdir()
    video.write_bytes(b"")
    folder.mkdir()
    return video, folder


def test_default_output_dir_is_named_after_the_input(inputs):
    video, folder = inputs
    assert default_output_dir(video, reuse=False) == Path("outputs/walk")
    assert default_output_dir(folder, reuse=False) == Path("outputs/kitchen")


def test_default_output_dir_never_takes_someone_elses_folder(inputs, tmp_path):
    video, _ = inputs
    Path("outputs/walk").mkdir(parents=True)  # not a run at all
    _fake_run(Path("outputs/walk-2"), tmp_path / "other.mp4", "running")  # another input's run
    _fake_run(Path("outputs/walk-3"), video, "complete", command="demo")
    assert default_output_dir(video, reuse=False) == Path("outputs/walk-4")
    assert default_output_dir(video, reuse=True) == Path("outputs/walk-4")


def test_default_output_dir_of_a_second_run(inputs):
    video, _ = inputs
    _fake_run(Path("outputs/walk"), video, "complete")
    # A finished run of the same input is kept: the next run goes beside it ...
    assert default_output_dir(video, reuse=False) == Path("outputs/walk-2")
    # ... unless the user asks to continue or replace it.
    assert default_output_dir(video, reuse=True) == Path("outputs/walk")


def test_default_output_dir_finds_the_unfinished_run_to_resume(inputs):
    video, _ = inputs
    _fake_run(Path("outputs/walk"), video, "complete")
    _fake_run(Path("outputs/walk-2"), video, "running")
    assert default_output_dir(video, reuse=False) == Path("outputs/walk-2")


def test_two_runs_without_output_dir_do_not_collide(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from laser_plugin.models.synthetic import make_scene

    scene = make_scene("demo")  # the synthetic model's own scene
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(8):
        Image.fromarray(scene.render(i).image).save(folder / f"frame{i}.png")
    monkeypatch.chdir(tmp_path)
    argv = ("run", folder, "--model", "synthetic", "--window-size", "4", "--overlap", "1")
    for expected in ("outputs/frames", "outputs/frames-2"):
        code, _, err = laser(capsys, *argv)
        assert code == 0, err
        assert f"writing the run to {expected}" in err
        assert (
            json.loads((tmp_path / expected / "summary.json").read_text())["status"] == "complete"
        )
    code, _, err = laser(capsys, *argv, "--resume")  # picks the first run again: complete
    assert code == 0 and "writing the run to outputs/frames\n" in err, err
    assert not (tmp_path / "outputs" / "frames-3").exists()


def test_run_help_shows_the_default_output_folder(capsys):
    text = " ".join(help_text(capsys, "run").split())
    assert str(DEFAULT_OUTPUT_DIR) in text and "laser_run" not in text


# -- help text ------------------------------------------------------------------------------------

PLACEHOLDERS = re.compile(r"\bSTR\b|PATH PATH|\{None\}\|\w+|``|`")


@pytest.mark.parametrize(
    "argv", [("run",), ("demo",), ("export", "nerfstudio"), ("export", "colmap")]
)
def test_help_has_no_placeholder_types_or_internal_names(capsys, argv):
    text = help_text(capsys, *argv)
    assert not PLACEHOLDERS.findall(text), PLACEHOLDERS.findall(text)
    assert "target" not in text and "LaserConfig" not in text
    # One spelling of each flag (export's config kept an --export.overwrite of its own).
    assert "--export.overwrite" not in text


def test_every_demo_flag_has_a_description(capsys):
    # A flag without a description has nothing but "(default: ...)" after it.
    bare = re.findall(r"│ (--[\w-]+ \S+)\s+\(default:", help_text(capsys, "demo"))
    assert not bare, bare


# -- .ci/test.sh ----------------------------------------------------------------------------------


def test_ci_script_runs_every_phase_and_waits_for_apt():
    script = (ROOT / ".ci" / "test.sh").read_text()
    assert not re.search(r"^set -\w*e", script, re.M)
    assert "DPkg::Lock::Timeout" in script
    assert subprocess.run(["bash", "-n", str(ROOT / ".ci" / "test.sh")]).returncode == 0
    if shutil.which("shellcheck"):
        res = subprocess.run(["shellcheck", str(ROOT / ".ci" / "test.sh")], capture_output=True)
        assert res.returncode == 0, res.stdout.decode()


def test_help_does_not_import_torch():
    """`laser --help` took 2-3 s importing torch (issue 21): help of every command, and the
    package itself, import no heavy module."""
    code = (
        "import sys, contextlib, io\n"
        "import laser_plugin\n"
        "from laser_plugin.cli.main import main\n"
        "for argv in ([], ['run'], ['demo'], ['export', 'nerfstudio'], ['export', 'colmap'],"
        " ['eval'], ['view'], ['batch']):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        main([*argv, '--help'])\n"
        "heavy = sorted(m for m in ('torch', 'PIL', 'av', 'scipy', 'rerun', 'viser', 'ray')"
        " if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_run_help_leads_with_everyday_flags_and_prefixes_research_knobs(capsys, monkeypatch):
    """Issue 22: the engine's research knobs are one --laser.* group; the flags a user sets
    (input, output, model, device, resume, outputs, viewers, window size) stay short."""
    import dataclasses

    from laser_plugin.cli.run import RunLaserConfig

    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    flags = set(re.findall(r"(--[a-z][a-z0-9.-]*)", capsys.readouterr().out))
    top = {f for f in flags if not f.startswith("--laser.") and not f.startswith("--no-")}
    assert {"--window-size", "--overlap", "--align-device", "--device", "--resume"} <= top
    knobs = {f.name.replace("_", "-") for f in dataclasses.fields(RunLaserConfig)} - {
        "window-size", "overlap", "device",
    }  # fmt: skip
    assert knobs and all(f"--laser.{k}" in flags for k in knobs), sorted(knobs)
    assert not any(f"--{k}" in top for k in knobs)
    assert len(top) <= 24, sorted(top)
