"""Synthetic scenes with ground truth, and an emulated reconstructor that errs like real ones.

Powers ``laser demo``, the accuracy benchmark and most tests: no weights, no GPU.
"""

from laser_plugin.models.synthetic.emulator import EmulatedModel as EmulatedModel
from laser_plugin.models.synthetic.emulator import EmulatorConfig as EmulatorConfig
from laser_plugin.models.synthetic.scene import SCENES as SCENES
from laser_plugin.models.synthetic.scene import SyntheticScene as SyntheticScene
from laser_plugin.models.synthetic.scene import make_scene as make_scene


def make_model(
    weights: str | None = None,
    device: str = "cpu",
    scene: SyntheticScene | str | None = None,
    num_frames: int | None = None,
    height: int = 128,
    width: int = 224,
    seed: int = 0,
    **kw,
):
    """Factory for the ``synthetic`` entry point: an emulated model over a synthetic scene.

    ``scene`` is a :class:`SyntheticScene` or the name of one (default "demo", built with
    ``num_frames``, ``height``, ``width``, ``seed``). ``weights`` is ignored (nothing to load);
    other keyword arguments set :class:`EmulatorConfig`.
    """
    del weights, device
    if not isinstance(scene, SyntheticScene):
        scene = make_scene(scene or "demo", num_frames, height, width, seed=seed)
    return EmulatedModel(scene, EmulatorConfig(**kw))


__all__ = [
    "SCENES",
    "EmulatedModel",
    "EmulatorConfig",
    "SyntheticScene",
    "make_model",
    "make_scene",
]
