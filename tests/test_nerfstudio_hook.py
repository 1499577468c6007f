"""`ns-process-data laser`: the start-up hook, nerfstudio's own subcommands beside it, and a
real wheel install and uninstall that leaves nerfstudio intact."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Union

import numpy as np
import pytest

from laser_plugin.geometry.conventions import opengl_to_opencv_c2w

pytestmark = pytest.mark.nerfstudio

BUILTIN = ["images", "video", "polycam", "metashape", "realitycapture", "record3d", "odm"]
ROOT = Path(__file__).resolve().parents[1]


def _ns_process_data() -> str:
    script = Path(sys.executable).with_name("ns-process-data")
    if not script.exists():
        pytest.fail(f"nerfstudio's console script is missing next to {sys.executable}")
    return str(script)


def _subcommands(stdout: str) -> set[str]:
    """The subcommand names in a usage line (`usage: PROG [-h] {images,video,...}`): the program
    path may itself contain "laser" (a clone named `laser-plugin`), so look only inside the braces."""
    usage = stdout.splitlines()[0]
    choices = re.findall(r"\{([^{}]*)\}", usage)
    assert choices, usage
    return set(choices[-1].split(","))


def _run(args, env=None, timeout=300):
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def test_help_lists_laser_and_every_builtin():
    res = _run([_ns_process_data(), "--help"])
    assert res.returncode == 0, res.stderr
    names = _subcommands(res.stdout)
    assert {*BUILTIN, "laser"} <= names, names
    assert "laser-plugin" not in res.stderr  # the hook reported no failure


def test_builtin_subcommand_still_parses():
    res = _run([_ns_process_data(), "images", "--help"])
    assert res.returncode == 0 and "--data" in res.stdout and "--sfm-tool" in res.stdout


def test_hook_can_be_disabled_and_costs_nothing_at_startup():
    res = _run([_ns_process_data(), "--help"], env={"LASER_PLUGIN_NO_NS_HOOK": "1"})
    assert res.returncode == 0 and "laser" not in _subcommands(res.stdout)
    probe = "import sys; print(sorted(m for m in ('torch', 'laser_plugin', 'nerfstudio', '_laser_plugin_ns_hook') if m in sys.modules))"
    res = _run([sys.executable, "-c", probe])
    assert res.stdout.strip() == "['_laser_plugin_ns_hook']"  # the hook is loaded; nothing heavy is


def test_extend_commands_is_a_noop_when_nerfstudio_changes_shape():
    from laser_plugin.integrations.nerfstudio.process_data import extend_commands

    @dataclass
    class Other:
        def main(self) -> None: ...

    not_a_union = types.ModuleType("fake")
    not_a_union.Commands = Other
    assert extend_commands(not_a_union) is False and not_a_union.Commands is Other
    assert extend_commands(types.ModuleType("no_commands")) is False
    import tyro

    union = types.ModuleType("fake_union")
    union.Commands = Union[  # noqa: UP007
        Annotated[Other, tyro.conf.subcommand(name="a")],
        Annotated[Other, tyro.conf.subcommand(name="b")],
    ]
    assert extend_commands(union) is True
    first = union.Commands
    assert extend_commands(union) is False and union.Commands is first  # idempotent


_PLUGIN_MODEL = """
from laser_plugin.models.synthetic import make_model as _make_model, make_scene

def make_model(weights=None, device="cpu", **kw):
    scene = make_scene("demo", num_frames=16)
    for _ in scene.frames():  # render once, so the emulator recognises frames read from disk
        pass
    return _make_model(scene=scene)
"""


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """A third-party backend ``demo16`` registered through the ``laser_plugin.models`` entry-point
    group (a module plus a dist-info on PYTHONPATH), and the demo scene's frames as PNGs."""
    from PIL import Image

    from laser_plugin.models.synthetic import make_scene

    site = tmp_path_factory.mktemp("plugin_site")
    (site / "laser_test_demo16.py").write_text(_PLUGIN_MODEL)
    info = site / "laser_test_demo16-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: laser-test-demo16\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[laser_plugin.models]\ndemo16 = laser_test_demo16:make_model\n"
    )
    folder = tmp_path_factory.mktemp("frames")
    for i, rgb in enumerate(make_scene("demo", num_frames=16).frames()):
        Image.fromarray(rgb).save(folder / f"{i:05d}.png")
    return {"PYTHONPATH": str(site)}, folder


def test_ns_process_data_laser_end_to_end(plugin_env, tmp_path):
    env, folder = plugin_env
    out = tmp_path / "dataset"
    args = ["laser", "--data", str(folder), "--output-dir", str(out), "--model", "demo16"]
    args += [
        "--device",
        "cpu",
        "--laser.window-size",
        "8",
        "--laser.overlap",
        "3",
        "--export.num-downscales",
        "1",
    ]
    args += ["--run-dir", str(tmp_path / "run")]
    res = _run([_ns_process_data(), *args], env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    meta = json.loads((out / "transforms.json").read_text())
    assert len(meta["frames"]) == 16 and meta["laser"]["command"] == "ns-process-data laser"
    assert (out / "sparse_pc.ply").stat().st_size > 1000
    assert len(list((out / "images_2").iterdir())) == len(list((out / "depths_2").iterdir())) == 16
    assert "ns-train splatfacto" in res.stderr
    from laser_plugin.io.run_dir import load_run

    run = load_run(tmp_path / "run")  # the run kept beside the dataset, same poses
    assert run.status == "complete" and len(run.frames) == 16
    fifth = np.array(meta["frames"][5]["transform_matrix"])
    np.testing.assert_allclose(opengl_to_opencv_c2w(fifth), run.frames[5].cam_to_world, atol=1e-9)


def test_ns_process_data_laser_bad_input_is_one_line(tmp_path):
    res = _run(
        [
            _ns_process_data(),
            "laser",
            "--data",
            str(tmp_path / "nope.mp4"),
            "--output-dir",
            str(tmp_path / "o"),
            "--model",
            "synthetic",
            "--device",
            "cpu",
        ]
    )
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "input not found" in lines[0], res.stderr


@pytest.mark.slow
def test_wheel_install_then_uninstall_leaves_nerfstudio_intact(tmp_path):
    """Build our wheel, install it into a fresh target directory, check `laser` appears, pip
    uninstall it, check nerfstudio's command works as before. Python runs with -S, so only the
    target's .pth files are processed (not this environment's own editable install)."""
    pytest.importorskip("hatchling")
    from hatchling.build import build_wheel

    wheel = Path(tmp_path / "dist") / build_wheel(str(tmp_path / "dist"))  # run from the repo root
    target = tmp_path / "site"
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-index",
        "--target",
        str(target),
        str(wheel),
    ]
    assert _run(pip).returncode == 0
    assert (target / "laser_plugin_nerfstudio.pth").is_file() and (
        target / "_laser_plugin_ns_hook.py"
    ).is_file()

    site_packages = sysconfig.get_paths()["purelib"]
    help_cmd = (
        f"import sys, site; sys.path.append({site_packages!r}); site.addsitedir({str(target)!r}); "
        "sys.argv = ['ns-process-data', '--help']; "
        "from nerfstudio.scripts.process_data import entrypoint; entrypoint()"
    )
    with_us = _run([sys.executable, "-S", "-c", help_cmd], env={"PYTHONPATH": ""})
    assert with_us.returncode == 0, with_us.stderr[-2000:]
    assert "laser" in _subcommands(with_us.stdout)

    uninstall = (
        f"import sys; sys.path.insert(0, {str(target)!r}); sys.path.append({site_packages!r}); "
        "from pip._internal.cli.main import main; sys.exit(main(['uninstall', '-y', 'laser-plugin']))"
    )
    res = _run([sys.executable, "-S", "-c", uninstall])
    assert res.returncode == 0, res.stderr[-2000:]
    assert not (target / "laser_plugin_nerfstudio.pth").exists()
    assert (
        not (target / "_laser_plugin_ns_hook.py").exists()
        and not (target / "laser_plugin").exists()
    )

    without_us = _run([sys.executable, "-S", "-c", help_cmd], env={"PYTHONPATH": ""})
    assert without_us.returncode == 0, without_us.stderr[-2000:]
    names = _subcommands(without_us.stdout)
    assert "laser" not in names and set(BUILTIN) <= names, names
    assert "laser-plugin" not in without_us.stderr and "Error processing" not in without_us.stderr


def test_module_entrypoint_works_without_the_hook():
    """`python -m laser_plugin.integrations.nerfstudio.process_data` is the documented fallback."""
    module = "laser_plugin.integrations.nerfstudio.process_data"
    res = _run([sys.executable, "-m", module, "--help"], env={"LASER_PLUGIN_NO_NS_HOOK": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    names = _subcommands(res.stdout)
    assert "laser" in names and set(BUILTIN) <= names, names
