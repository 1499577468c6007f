"""Shared by the batch tests: synthetic clips written as lossless PNG folders, and direct runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from laser_plugin.config import LaserConfig
from laser_plugin.engine import StreamingReconstructor
from laser_plugin.models.synthetic import make_model, make_scene

SCENE = {"scene": "demo", "num_frames": 40, "height": 64, "width": 112, "seed": 0}
CONFIG = LaserConfig(window_size=8, overlap=3)
CLIPS = {"hall": (0, 20), "desk": (10, 34), "door": (24, 40)}


def scene():
    return make_scene(
        SCENE["scene"], SCENE["num_frames"], SCENE["height"], SCENE["width"], seed=SCENE["seed"]
    )


def write_clip(folder: Path, start: int, stop: int) -> Path:
    """Frames start..stop-1 of the synthetic scene as PNGs (lossless: the emulated model finds
    its frames by exact image match)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(scene().frames()):
        if start <= i < stop:
            Image.fromarray(image).save(folder / f"{i - start:04d}.png")
    return folder


def direct_run(folder: Path):
    """The same clip through the engine in this process (the reference for the batch's files)."""
    return StreamingReconstructor(make_model(scene=scene()), CONFIG).reconstruct(folder)


def assert_run_matches(run, reference, folder: Path) -> None:
    """A batch run directory holds exactly the frames of a direct run of the same clip."""
    from PIL import Image

    from laser_plugin.io.run_dir import IMAGE_QUALITY, _decode_jpg, _jpg_bytes, depth_as_saved

    inputs = sorted(folder.glob("*.png"))
    assert run.status == "complete"
    assert [f.index for f in run.frames] == [f.index for f in reference] == list(range(len(inputs)))
    assert run.summary["frames"] == len(inputs)
    for k, ref in enumerate(reference):
        got = run.load_frame(k)
        # Run-directory format 2: JPEG images, float16 depth (exactly the reference rounded),
        # layers only when asked for.
        image = np.asarray(Image.open(inputs[k]).convert("RGB"))
        np.testing.assert_array_equal(got.image, _decode_jpg(_jpg_bytes(image, IMAGE_QUALITY)))
        np.testing.assert_allclose(got.cam_to_world, ref.cam_to_world, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got.intrinsics, ref.intrinsics, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(got.depth, depth_as_saved(ref.depth).astype(np.float32))
        if got.layers is not None:
            np.testing.assert_array_equal(got.layers, ref.layers)
    assert run.points_ply.stat().st_size > 1000
    traj = (run.path / "trajectory.txt").read_text().splitlines()
    assert len(traj) == len(inputs)
