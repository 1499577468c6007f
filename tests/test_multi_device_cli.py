"""``laser run --devices``: the multi-device runner behind the CLI writes the same run."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from laser_plugin.cli.main import main
from laser_plugin.config import LaserConfig
from laser_plugin.engine import StreamingReconstructor
from laser_plugin.io.run_dir import load_run
from laser_plugin.models.synthetic import make_model, make_scene


@pytest.mark.slow  # each synthetic replica renders the whole 120-frame demo scene to index it
def test_laser_run_devices_equals_single_device(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    # The registry's synthetic model knows the default demo scene, so the clip is its frames.
    for i, image in enumerate(make_scene("demo").frames()):
        if i == 24:
            break
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    # The reference: the plain single-device engine on the same folder (the CLI's single-device
    # run may add stages of its own, e.g. loop closure).
    config = LaserConfig(window_size=8, overlap=3)
    reference = StreamingReconstructor(make_model(), config).reconstruct(folder)
    args = ["run", str(folder), "--model", "synthetic", "--window-size", "8", "--overlap", "3"]
    assert (
        main([*args, "--quiet", "--devices", "cpu,cpu", "--output-dir", str(tmp_path / "two")]) == 0
    )
    two = load_run(tmp_path / "two")
    assert two.status == "complete" and two.summary["settings"]["device"] == "cpu,cpu"
    assert [f.index for f in two.frames] == [f.index for f in reference] == list(range(24))
    np.testing.assert_array_equal(two.cam_to_world(), np.stack([f.cam_to_world for f in reference]))
    for k in range(0, 24, 5):
        # The compact run directory keeps depth as float16.
        saved = reference[k].depth.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(two.load_frame(k).depth, saved)


def test_laser_run_devices_user_errors(tmp_path, capsys):
    folder = tmp_path / "clip"
    folder.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "0.png")
    import torch

    bad = ["gpu0"] if torch.cuda.is_available() else ["gpu0", "cuda:0,cuda:1", "all"]
    for spec in bad:
        with pytest.raises(SystemExit) as exit_info:
            main(
                [
                    "run",
                    str(folder),
                    "--model",
                    "synthetic",
                    "--devices",
                    spec,
                    "--output-dir",
                    str(tmp_path / "o"),
                ]
            )
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: --devices") and len(err) == 1
