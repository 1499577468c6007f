"""An emulated feed-forward reconstructor that makes the mistakes real ones make.

Given a window of frames of a :class:`SyntheticScene`, it returns a :class:`WindowPrediction` in a
random per-window Sim(3) gauge whose depth is wrong in the ways π³/VGGT are wrong:

- **layer scale errors**: each object's depth is scaled relative to the room by a factor drawn per
  window. Its spread depends on the window's parallax (baseline over scene depth): windows with
  good parallax are nearly right, low-parallax windows (pauses, pure rotation) are wrong. This is
  what makes layer alignment useful and honest: it makes each surface consistent with the window
  that first saw it, which helps on average only because some windows are better than others.
- optionally a smooth depth-dependent distortion ``d * (d / d_ref) ** gamma`` (``error_mode``);
- smooth multiplicative noise plus a little per-pixel noise, and outliers;
- lower confidence where the estimate is unreliable (bad windows, depth edges, most outliers);
- small pose and focal-length errors.

Everything is deterministic from the seed and the window's frame indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from laser_plugin.errors import InputError
from laser_plugin.models.synthetic.scene import NUM_ROOM_IDS, SyntheticScene
from laser_plugin.types import WindowPrediction


@dataclass
class EmulatorConfig:
    """How wrong the emulated model is."""

    error_mode: Literal["layers", "distortion", "both", "none"] = "layers"
    """Which depth errors to emulate ("none": only noise, outliers and gauge)."""
    layer_sigma_bad: float = 0.3
    """Std of log object-vs-room scale in a window without parallax."""
    layer_sigma_good: float = 0.01
    """Std of log object-vs-room scale in a window with good parallax."""
    good_parallax: float = 0.12
    """Baseline / median depth at which a window counts as fully good."""
    noise: float = 0.01
    """Std of the smooth multiplicative depth noise."""
    pixel_noise: float = 0.002
    """Std of the per-pixel multiplicative depth noise."""
    outliers: float = 0.01
    """Fraction of outlier pixels (depth off by a factor of up to 3)."""
    rot_noise_deg: float = 0.1
    """Per-frame rotation noise."""
    trans_noise: float = 0.003
    """Per-frame translation noise, relative to the median depth."""
    focal_noise: float = 0.005
    """Relative focal-length error per window."""
    random_gauge: bool = True
    """Express each window in a random Sim(3) gauge, as real models do."""
    drift_rot_deg: float = 0.0
    """Std (degrees per frame, per axis) of a per-window rotation bias that accumulates along the
    window's relative poses. Real models err systematically within a window, so stitched
    trajectories drift over long sequences (what loop closure corrects); 0 = off."""
    flying_pixels: float = 0.0
    """Probability that a pixel beside an occlusion edge of the truth (a depth jump) gets a depth
    mixed between the two sides, as networks smear depth across silhouettes; 0 = off."""
    gamma_max: float = 0.0
    """Smooth depth-dependent distortion on top of ``error_mode``: each window's depth is
    multiplied by ``(d / d_median) ** gamma`` with gamma uniform in [-gamma_max, gamma_max]
    (0.05: the +-5% of issue 20); 0 = off."""
    drift_scale: float = 0.0
    """Std of a per-window log-scale bias of the camera translations relative to the depth (a
    trajectory-length drift that depth-based registration cannot see); 0 = off."""
    seed: int = 0


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence([seed, *[int(k) & 0xFFFFFFFF for k in keys]])
    )


def _random_rotation(rng: np.random.Generator, max_angle: float = np.pi) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(-max_angle, max_angle)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _biased_poses(
    c2w: np.ndarray, rng: np.random.Generator, rot_deg: float, log_scale: float
) -> np.ndarray:
    """(n, 4, 4) poses relative to the first frame -> the same with a per-window systematic bias:
    frame j is rotated about the first camera by j steps of one random small rotation and its
    translation is scaled by one random factor."""
    omega = rng.normal(0.0, np.radians(rot_deg), size=3)
    scale = float(np.exp(rng.normal(0.0, log_scale))) if log_scale > 0 else 1.0
    out = c2w.copy()
    for j in range(1, len(c2w)):
        angle = j * float(np.linalg.norm(omega))
        axis = omega / max(float(np.linalg.norm(omega)), 1e-12)
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
        out[j, :3, :3] = rot @ c2w[j, :3, :3]
        out[j, :3, 3] = scale * rot @ c2w[j, :3, 3]
    return out


def _flying_pixels(
    depth: np.ndarray, depth_gt: np.ndarray, prob: float, rng: np.random.Generator
) -> np.ndarray:
    """(L, H, W) depth -> the same with pixels beside occlusion edges of ``depth_gt`` mixed
    between the nearest and farthest depth of their 3x3 neighbourhood (each with probability
    ``prob``, at a uniform random mix): the smeared silhouettes of feed-forward depth."""
    from scipy import ndimage

    size = (1, 3, 3)
    near = ndimage.minimum_filter(depth, size=size, mode="nearest")
    far = ndimage.maximum_filter(depth, size=size, mode="nearest")
    lo = ndimage.minimum_filter(depth_gt, size=size, mode="nearest")
    hi = ndimage.maximum_filter(depth_gt, size=size, mode="nearest")
    edge = np.log(hi / lo) > 0.1  # a depth jump of more than 10% within the neighbourhood
    hit = edge & (rng.random(depth.shape) < prob)
    alpha = rng.random(depth.shape)
    return np.where(hit, near + alpha * (far - near), depth)


class EmulatedModel:
    """A :class:`ReconstructionModel` over a synthetic scene (finds frames by exact image match)."""

    name = "synthetic"
    license = "built-in emulator (no weights)"

    def __init__(self, scene: SyntheticScene, config: EmulatorConfig | None = None):
        self.scene = scene
        self.config = config or EmulatorConfig()
        self._indexed_all = False

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        return self.scene.height, self.scene.width

    def window_quality(self, indices: list[int]) -> float:
        """0 = no parallax (bad), 1 = good parallax."""
        c = self.scene.cam_to_world[indices, :3, 3]
        baseline = float(np.linalg.norm(c[:, None] - c[None], axis=-1).max()) if len(c) > 1 else 0.0
        depth = float(np.median(self.scene.render(indices[len(indices) // 2]).depth))
        return float(np.clip(baseline / (depth * self.config.good_parallax), 0.0, 1.0))

    def _indices(self, images: torch.Tensor) -> list[int]:
        arr = (
            (images.detach().cpu().clamp(0, 1) * 255.0 + 0.5)
            .to(torch.uint8)
            .permute(0, 2, 3, 1)
            .numpy()
        )
        out = []
        for a in arr:
            i = self.scene.index_of(a)
            if i is None and not self._indexed_all:
                # Frames read back from disk in another process: render the scene once to learn
                # every frame's fingerprint.
                for j in range(self.scene.num_frames):
                    self.scene.render(j)
                self._indexed_all = True
                i = self.scene.index_of(a)
            if i is None:
                raise InputError(
                    "the synthetic model only reconstructs frames of its own synthetic scene "
                    "(use `laser demo`, or --model pi3/vggt for real input)"
                )
            out.append(i)
        return out

    def __call__(self, images: torch.Tensor) -> WindowPrediction:
        return self.predict(self._indices(images))

    def predict(self, indices: list[int]) -> WindowPrediction:
        cfg = self.config
        scene = self.scene
        n = len(indices)
        key = (indices[0], indices[-1], n)
        rng = _rng(cfg.seed, *key)
        renders = [scene.render(i) for i in indices]
        depth_gt = np.stack([r.depth for r in renders]).astype(np.float64)
        ids = np.stack([r.object_id for r in renders])
        h, w = depth_gt.shape[1:]
        quality = self.window_quality(indices)
        bad = 1.0 - quality

        depth = depth_gt.copy()
        if cfg.error_mode in ("layers", "both"):
            sigma = cfg.layer_sigma_good + (cfg.layer_sigma_bad - cfg.layer_sigma_good) * bad
            obj_log = rng.normal(0.0, sigma, size=scene.objects.num_ids)
            obj_log[:NUM_ROOM_IDS] = 0.0  # the room is the reference surface
            depth *= np.exp(obj_log)[ids]
        if cfg.error_mode in ("distortion", "both"):
            gamma = rng.normal(
                0.0,
                0.5 * (cfg.layer_sigma_good + (cfg.layer_sigma_bad - cfg.layer_sigma_good) * bad),
            )
            d_ref = np.median(depth_gt)
            depth *= (depth_gt / d_ref) ** gamma
        if cfg.gamma_max > 0:
            gamma_w = rng.uniform(-cfg.gamma_max, cfg.gamma_max)
            depth *= (depth_gt / np.median(depth_gt)) ** gamma_w
        # Smooth multiplicative noise: a coarse random field, upsampled.
        coarse = torch.from_numpy(rng.normal(0.0, cfg.noise, size=(n, 1, 5, 8)))
        smooth = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[
            :, 0
        ].numpy()
        depth *= np.exp(smooth + rng.normal(0.0, cfg.pixel_noise, size=depth.shape))
        # Confidence: lower in bad windows and at depth edges of the truth.
        ld = np.log(depth_gt)
        edge = np.zeros_like(ld, dtype=bool)
        edge[:, :, 1:] |= np.abs(np.diff(ld, axis=2)) > 0.05
        edge[:, 1:, :] |= np.abs(np.diff(ld, axis=1)) > 0.05
        conf = (1.0 / (1.0 + 4.0 * bad)) * np.exp(rng.normal(0.0, 0.1, size=depth.shape))
        conf = np.where(edge, conf * 0.3, conf)
        if cfg.flying_pixels > 0:
            depth = _flying_pixels(depth, depth_gt, cfg.flying_pixels, rng)
        out = rng.random(depth.shape) < cfg.outliers
        depth = np.where(out, depth * np.exp(rng.uniform(-1.1, 1.1, size=depth.shape)), depth)
        conf = np.where(out & (rng.random(depth.shape) < 0.7), conf * 0.1, conf)

        # Poses: ground truth relative to the window's first frame, with noise.
        med = float(np.median(depth_gt))
        c2w = scene.cam_to_world[indices].copy()
        ref_inv = np.linalg.inv(c2w[0])
        c2w = ref_inv[None] @ c2w
        if cfg.drift_rot_deg > 0 or cfg.drift_scale > 0:
            c2w = _biased_poses(c2w, _rng(cfg.seed, *key, 1), cfg.drift_rot_deg, cfg.drift_scale)
        for j in range(1, n):
            c2w[j, :3, :3] = (
                _random_rotation(rng, np.radians(cfg.rot_noise_deg) * (1 + bad)) @ c2w[j, :3, :3]
            )
            c2w[j, :3, 3] += rng.normal(0.0, cfg.trans_noise * med * (1 + bad), size=3)
        k = np.repeat(scene.intrinsics[None], n, 0).copy()
        k[:, 0, 0] *= 1 + rng.normal(0, cfg.focal_noise)
        k[:, 1, 1] = k[:, 0, 0] * scene.intrinsics[1, 1] / scene.intrinsics[0, 0]

        if cfg.random_gauge:  # X_w = s R X + t, applied to poses; depths scale by s
            s = float(np.exp(rng.uniform(np.log(0.3), np.log(3.0))))
            r = _random_rotation(rng)
            t = rng.normal(0.0, 2.0, size=3)
            g = np.eye(4)
            g[:3, :3], g[:3, 3] = r, t
            c2w[:, :3, 3] *= s
            c2w = g[None] @ c2w
            depth *= s
        return WindowPrediction(
            depth=torch.from_numpy(depth.astype(np.float32)),
            conf=torch.from_numpy(conf.astype(np.float32)),
            cam_to_world=torch.from_numpy(c2w.astype(np.float32)),
            intrinsics=torch.from_numpy(k.astype(np.float32)),
            descriptors=self.descriptors(renders),
        )

    @staticmethod
    def descriptors(renders) -> torch.Tensor:
        """(L, 192) appearance descriptors: normalised 8x8 colour thumbnails (for loop closure)."""
        imgs = (
            torch.from_numpy(np.stack([r.image[::4, ::4] for r in renders]))
            .permute(0, 3, 1, 2)
            .float()
            / 255.0
        )
        thumb = F.adaptive_avg_pool2d(imgs, (8, 8)).flatten(1)
        thumb = thumb - thumb.mean(1, keepdim=True)
        return thumb / thumb.norm(dim=1, keepdim=True).clamp_min(1e-6)
