"""π³ and VGGT backends drive the streaming engine end to end (tiny random weights, CPU)."""

import numpy as np
import pytest

from laser_plugin import LaserConfig, StreamingReconstructor, load_model
from laser_plugin.models.weights import save_weights


def _frames(n=7, h=60, w=90, seed=0):
    """A textured scene panning sideways, uint8 frames of 60x90."""
    rng = np.random.default_rng(seed)
    canvas = (rng.random((h, w + 4 * n, 3)) * 255).astype(np.uint8)
    return [canvas[:, 4 * i : 4 * i + w].copy() for i in range(n)]


@pytest.mark.parametrize("name", ["pi3", "vggt"])
def test_registry_loads_checkpoint_and_engine_streams_all_frames(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    random_model = load_model(name, size="tiny", random_init=True, seed=2)
    path = save_weights(random_model.net, tmp_path / "tiny.safetensors")
    model = load_model(name, weights=str(path), device="cpu", size="tiny")
    assert model.input_size(60, 90)[0] % 14 == 0
    rec = StreamingReconstructor(model, LaserConfig(window_size=4, overlap=2), input_size=(42, 56))
    frames = rec.reconstruct(_frames())
    assert [f.index for f in frames] == list(range(7))
    for f in frames:
        assert f.depth.shape == (42, 56) and f.image.shape == (42, 56, 3)
        assert np.isfinite(f.cam_to_world).all() and np.isfinite(f.intrinsics).all()
        np.testing.assert_allclose(f.cam_to_world[3], [0, 0, 0, 1])
    # the first frame defines the global frame
    np.testing.assert_allclose(frames[0].cam_to_world, np.eye(4), atol=1e-5)
