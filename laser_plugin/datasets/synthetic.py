"""The engine's synthetic scenes (``laser_plugin.models.synthetic``) as evaluation sequences.

There is no directory: the "root" names the scenes (``demo``, ``lateral``, ..., comma-separated,
or ``all``). Frames and depth render lazily and deterministically; poses and intrinsics are
exact. ``meta["scene"]`` holds the scene so the ``synthetic`` model can emulate a
reconstructor over it.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from laser_plugin.datasets.base import Sequence

DEFAULT_SCENES = ("demo",)


def _image(scene, i: int) -> np.ndarray:
    return scene.render(i).image


def _depth(scene, i: int) -> np.ndarray:
    return scene.render(i).depth


def scene_sequence(scene) -> Sequence:
    """Wrap one ``SyntheticScene``."""
    n = scene.num_frames
    return Sequence(
        "synthetic",
        scene.name,
        [partial(_image, scene, i) for i in range(n)],
        np.arange(n) / scene.fps,
        np.asarray(scene.gt_cam_to_world, dtype=np.float64),
        scene.intrinsics,
        [partial(_depth, scene, i) for i in range(n)],
        meta={"scene": scene},
    )


def load(
    root: str | None = None,
    num_frames: int | None = None,
    height: int = 128,
    width: int = 224,
    seed: int = 0,
) -> list[Sequence]:
    """Scenes named by ``root`` (comma-separated; ``all`` = every scene; default ``demo``)."""
    from laser_plugin.models.synthetic import SCENES, make_scene

    names = DEFAULT_SCENES if not root else tuple(n for n in str(root).split(",") if n)
    if names == ("all",):
        names = tuple(SCENES)
    return [
        scene_sequence(make_scene(n, num_frames=num_frames, height=height, width=width, seed=seed))
        for n in names
    ]
