"""Synthetic scenes with ground truth, and an emulated reconstructor that errs like real ones.

Powers ``laser demo``, the accuracy benchmark and most tests: no weights, no GPU.
"""

from laser_plugin.models.synthetic.emulator import EmulatedModel as EmulatedModel
from laser_plugin.models.synthetic.emulator import EmulatorConfig as EmulatorConfig
from laser_plugin.models.synthetic.scene import SCENES as SCENES
from laser_plugin.models.synthetic.scene import SyntheticScene as SyntheticScene
from laser_plugin.models.synthetic.scene import make_scene as make_scene


def make_model(weights: str | None = None, device: str = "cpu", scene: SyntheticScene | None = None, **kw):
    """Factory for the ``synthetic`` entry point: an emulated model over ``scene``.

    ``weights`` is ignored (nothing to load). Without a scene, the demo scene is used.
    """
    del weights, device
    return EmulatedModel(scene if scene is not None else make_scene("demo"), EmulatorConfig(**kw))


__all__ = ["SCENES", "EmulatedModel", "EmulatorConfig", "SyntheticScene", "make_model", "make_scene"]
