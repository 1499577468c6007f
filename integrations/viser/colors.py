"""Point colouring for the viewer: RGB, depth layer, confidence or depth (numpy only)."""

from __future__ import annotations

from typing import Literal

import numpy as np

ColorMode = Literal["rgb", "layer", "confidence", "depth"]
COLOR_MODES: tuple[ColorMode, ...] = ("rgb", "layer", "confidence", "depth")

# A dark-blue -> teal -> green -> yellow ramp: monotonic in lightness, so it stays readable
# for colour-blind users and in greyscale screenshots.
_RAMP = np.array(
    [
        [38, 16, 96],
        [40, 70, 140],
        [30, 130, 140],
        [60, 180, 110],
        [170, 215, 60],
        [250, 235, 40],
    ],
    dtype=np.float32,
)
_NO_LAYER = np.array([128, 128, 128], np.uint8)
_GOLDEN = 0.618033988749895


def ramp_colors(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map (N,) values linearly from [lo, hi] onto the ramp -> (N, 3) uint8."""
    span = hi - lo if hi > lo else 1.0
    t = np.clip((np.asarray(values, np.float32) - lo) / span, 0.0, 1.0) * (len(_RAMP) - 1)
    i = np.minimum(t.astype(np.int64), len(_RAMP) - 2)
    frac = (t - i)[:, None]
    return (_RAMP[i] * (1 - frac) + _RAMP[i + 1] * frac + 0.5).astype(np.uint8)


def label_colors(labels: np.ndarray) -> np.ndarray:
    """Distinct colours for (N,) integer labels (golden-ratio hues); -1 is grey -> (N, 3) uint8."""
    labels = np.asarray(labels, np.int64)
    hue = (labels * _GOLDEN) % 1.0
    out = _hsv_to_rgb(hue, 0.75, 0.95)
    out[labels < 0] = _NO_LAYER
    return out


def _hsv_to_rgb(h: np.ndarray, s: float, v: float) -> np.ndarray:
    h6 = h * 6.0
    sector = np.floor(h6).astype(np.int64) % 6
    f = h6 - np.floor(h6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    vv = np.full_like(h, v)
    pp = np.full_like(h, p)
    table = [(vv, t, pp), (q, vv, pp), (pp, vv, t), (pp, q, vv), (t, pp, vv), (vv, pp, q)]
    rgb = np.zeros((h.size, 3), np.float64)
    for k, (r, g, b) in enumerate(table):
        sel = sector == k
        rgb[sel] = np.stack([r[sel], g[sel], b[sel]], axis=-1)
    return (rgb * 255 + 0.5).astype(np.uint8)


def point_colors(
    mode: ColorMode,
    rgb: np.ndarray,
    conf: np.ndarray,
    depth: np.ndarray,
    layer: np.ndarray,
) -> np.ndarray:
    """(N, 3) uint8 colours for N points under ``mode``.

    Depth uses the 2nd-98th percentile range, so a few far outliers do not flatten the ramp.
    Layer labels are per frame (not tracked across frames), so a colour marks a layer of the
    frame that saw the point.
    """
    if mode == "rgb":
        return np.asarray(rgb, np.uint8)
    if mode == "confidence":
        return ramp_colors(conf, 0.0, 1.0)
    if mode == "depth":
        if depth.size == 0:
            return np.zeros((0, 3), np.uint8)
        lo, hi = np.percentile(depth, [2.0, 98.0])
        return ramp_colors(depth, float(lo), float(hi))
    if mode == "layer":
        return label_colors(layer)
    raise ValueError(f"unknown colour mode {mode!r}; choose one of {', '.join(COLOR_MODES)}")
