"""Every runner treats a sink that fails in ``close()`` alike: an essential sink (the run writer:
its files are incomplete) fails a finished run with its error; any other sink gets a warning and
the run stands. The other sinks are closed either way."""

from __future__ import annotations

import pytest
from sink_helpers import Recorder

from laser_plugin import LaserConfig, StreamingReconstructor
from laser_plugin.models.synthetic import make_model, make_scene
from laser_plugin.predictors import Pipelined, Replicas, Workers
from laser_plugin.worker import WorkerPool, model_factory

SCENE = dict(scene="demo", num_frames=24, height=48, width=80)
CFG = LaserConfig(window_size=8, overlap=3)


class FailsToClose:
    def __init__(self, essential: bool) -> None:
        self.essential = essential
        self.frames = 0

    def on_frame(self, frame) -> None:
        self.frames += 1

    def close(self) -> None:
        raise OSError(28, "No space left on device")


@pytest.fixture(scope="module")
def scene():
    return make_scene("demo", 24, 48, 80)


def _runners(scene, pool):
    model = make_model(scene=scene)
    return {
        "engine": StreamingReconstructor(model, CFG),
        "pipelined": StreamingReconstructor(model, CFG, predictor=Pipelined()),
        "multi_device": StreamingReconstructor(
            model, CFG, predictor=Replicas([model, make_model(scene=scene)])
        ),
        "process": StreamingReconstructor(pool, CFG, predictor=Workers(pool)),
    }


@pytest.mark.parametrize("essential", [True, False])
def test_a_sink_failing_to_close(scene, essential):
    with WorkerPool(model_factory("synthetic", **SCENE), ["cpu"], threads=1) as pool:
        for name, runner in _runners(scene, pool).items():
            bad, other = FailsToClose(essential), Recorder()
            if essential:
                with pytest.raises(OSError, match="No space"):
                    list(runner.run(scene.frames(), [bad, other]))
            else:
                frames = list(runner.run(scene.frames(), [bad, other]))
                assert len(frames) == 24, name
            assert bad.frames == 24, name  # every frame reached it before close
            assert other.closed, name
