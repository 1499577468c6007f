"""Place descriptors from π³'s and VGGT's own encoder tokens (loop closure on real backends).

Tiny random networks on the CPU: even untrained, the encoder's tokens describe the frame's
content and layout, so a perturbed copy of a frame of the synthetic loop scene must retrieve its
original above every unrelated frame; and loop closure must stay on and find its candidates when
the stream comes back to where it started.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from laser_plugin import LaserConfig, StreamingReconstructor
from laser_plugin.loop import LoopClosure, LoopConfig
from laser_plugin.models import pi3, vggt
from laser_plugin.models.blocks.place import place_descriptors
from laser_plugin.models.synthetic import make_scene

BACKENDS = {"pi3": pi3, "vggt": vggt}
SIZE = (56, 98)  # multiples of the patch size (14)


@pytest.fixture(scope="module")
def frames():
    scene = make_scene("loop", 48, *SIZE)
    return [np.asarray(f) for f in scene.frames()]


def _perturbed(image: np.ndarray, rng) -> np.ndarray:
    """The same place seen again: shifted a pixel, 8% darker, sensor noise."""
    x = np.roll(image, 1, axis=1).astype(np.float32) * 0.92 + rng.normal(0, 4, image.shape)
    return np.clip(x, 0, 255).astype(np.uint8)


def _describe(model, images) -> np.ndarray:
    out = []
    for i in range(0, len(images), 8):  # windows of 8 frames, as the engine would call it
        x = torch.stack(
            [torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in images[i : i + 8]]
        )
        out.append(model(x).descriptors)
    return torch.cat(out).numpy()


def test_descriptors_are_unit_batched_and_ignore_the_common_component():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(5, 4 * 7, 32, generator=g)
    d = place_descriptors(tokens, (4, 7))
    assert d.shape == (5, 256)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(5))
    # Batched: each frame's descriptor depends on its own tokens only.
    torch.testing.assert_close(place_descriptors(tokens[2:3], (4, 7)), d[2:3])
    # A component shared by every token of a frame (LayerNorm bias, global tint) changes nothing.
    torch.testing.assert_close(place_descriptors(tokens + torch.randn(32, generator=g), (4, 7)), d)
    with pytest.raises(ValueError, match="grid"):
        place_descriptors(tokens, (5, 7))


@pytest.mark.parametrize("name", ["pi3", "vggt"])
def test_a_frame_seen_again_retrieves_itself_above_unrelated_frames(name, frames):
    torch.manual_seed(0)
    model = BACKENDS[name].make_model(size="tiny", random_init=True, seed=0)
    rng = np.random.default_rng(0)
    db = _describe(model, frames)
    queries = _describe(model, [_perturbed(f, rng) for f in frames])
    assert db.shape == (len(frames), 256)
    sim = queries @ db.T
    n = len(frames)
    idx = np.arange(n)
    recall_at_1 = float(np.mean(sim.argmax(1) == idx))
    print(f"{name}: recall@1 {recall_at_1:.2f} on {n} frames of the loop scene")
    # Unrelated: more than 6 frames away along the loop (both ways round).
    gap = np.abs(idx[:, None] - idx[None, :])
    unrelated = np.minimum(gap, n - gap) > 6
    best_unrelated = np.where(unrelated, sim, -np.inf).max(1)
    assert np.all(np.diag(sim) > best_unrelated)
    assert recall_at_1 >= 0.9


@pytest.mark.parametrize("name", ["pi3", "vggt"])
def test_loop_closure_runs_on_a_real_backend(name, tmp_path):
    """Two laps: the second lap's windows find their first-lap keyframes as loop candidates (the
    random network's geometry decides verification, not asserted), and the hook stays on."""
    torch.manual_seed(0)
    model = BACKENDS[name].make_model(size="tiny", random_init=True, seed=0)
    loop = LoopClosure(LoopConfig(spill_dir=str(tmp_path)))
    rec = StreamingReconstructor(model, LaserConfig(window_size=8, overlap=3), hooks=[loop])
    lap = [np.asarray(f) for f in make_scene("loop", 16, 42, 70).frames()]  # small: CPU time
    laps = lap + lap
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random network's windows disagree with each other
        out = rec.reconstruct(laps)
    assert len(out) == len(laps)
    assert loop.enabled
    assert loop.counts["candidates"] > 0, loop.counts
    assert loop.counts["accepted"] + loop.counts["rejected"] == loop.counts["candidates"]
