"""Camera paths (camera-to-world, OpenCV axes, world y pointing down) for the synthetic scenes.

Each returns (N, 4, 4). Speeds are in metres per frame of a 30 frame/s walk-through.
"""

from __future__ import annotations

import numpy as np


def look_rotation(yaw: np.ndarray, pitch: np.ndarray | float = 0.0) -> np.ndarray:
    """(N,) yaw (about world -y, 0 = looking along +z, positive turns right) -> (N, 3, 3)."""
    yaw = np.asarray(yaw, dtype=np.float64)
    pitch = np.broadcast_to(np.asarray(pitch, dtype=np.float64), yaw.shape)
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    # camera z (forward), x (right), y (down) expressed in world coordinates
    fwd = np.stack([sy * cp, sp, cy * cp], -1)
    right = np.stack([cy, np.zeros_like(cy), -sy], -1)
    down = np.cross(fwd, right)
    return np.stack([right, down, fwd], -1)


def poses(positions: np.ndarray, yaw: np.ndarray, pitch: np.ndarray | float = 0.0) -> np.ndarray:
    n = len(positions)
    out = np.tile(np.eye(4), (n, 1, 1))
    out[:, :3, :3] = look_rotation(yaw, pitch)
    out[:, :3, 3] = positions
    return out


def _speed_profile(n: int, segments: list[tuple[float, float]]) -> np.ndarray:
    """Per-frame speed from (fraction of frames, speed) segments, smoothly blended."""
    fr = np.array([f for f, _ in segments])
    edges = np.concatenate([[0], np.cumsum(fr / fr.sum())]) * n
    speed = np.zeros(n)
    for (_, s), a, b in zip(segments, edges[:-1], edges[1:]):
        speed[int(a) : int(np.ceil(b))] = s
    k = max(1, n // 25)
    return np.convolve(
        np.pad(speed, k, mode="edge"), np.ones(2 * k + 1) / (2 * k + 1), mode="same"
    )[k:-k]


def lateral(n: int) -> np.ndarray:
    """Sideways walk looking ahead: strong parallax throughout."""
    x = np.linspace(-3.0, 3.0, n)
    z = 1.0 + 0.3 * np.sin(np.linspace(0, np.pi, n))
    return poses(np.stack([x, np.zeros(n), z], -1), 0.1 * np.sin(np.linspace(0, 2 * np.pi, n)))


def forward(n: int) -> np.ndarray:
    """Walk down the corridor with a gentle sway; parallax from the sway and the walk."""
    s = np.linspace(0, 1, n)
    z = 0.5 + 14.0 * s
    x = 1.0 * np.sin(2 * np.pi * s * 1.5)
    yaw = 0.15 * np.cos(2 * np.pi * s * 1.5)
    return poses(np.stack([x, 0.1 * np.sin(9 * s), z], -1), yaw)


def turn(n: int) -> np.ndarray:
    """Walk forward while turning left then right: rotation-dominated windows."""
    s = np.linspace(0, 1, n)
    yaw = 0.9 * np.sin(2 * np.pi * s)
    step = 0.06
    pos = np.zeros((n, 3))
    pos[0] = [0.0, 0.0, 0.5]
    for i in range(1, n):
        pos[i] = pos[i - 1] + step * np.array([np.sin(yaw[i]) * 0.6, 0.0, np.cos(yaw[i])])
    pos[:, 0] = np.clip(pos[:, 0], -1.1, 1.1)
    return poses(pos, yaw)


def pure_rotation(n: int) -> np.ndarray:
    """Standing still, panning: no parallax at all."""
    yaw = 0.7 * np.sin(np.linspace(0, 2 * np.pi, n))
    return poses(np.tile([[0.0, 0.0, 1.0]], (n, 1)), yaw)


def low_parallax(n: int) -> np.ndarray:
    """Tiny hand-held drift."""
    s = np.linspace(0, 1, n)
    pos = np.stack([0.05 * np.sin(6 * s), 0.02 * np.sin(11 * s), 1.0 + 0.05 * s], -1)
    return poses(pos, 0.05 * np.sin(4 * s))


def demo(n: int) -> np.ndarray:
    """A hand-held capture: a sideways start, a walk, pauses (low parallax) and turns.

    The pauses are where feed-forward models misjudge relative depth; the sideways start gives the
    first windows good parallax.
    """
    speed = _speed_profile(
        n, [(0.25, 0.09), (0.15, 0.006), (0.2, 0.07), (0.15, 0.004), (0.25, 0.06)]
    )
    s = np.linspace(0, 1, n)
    heading = np.where(s < 0.25, np.pi / 2, 0.25 * np.sin(2 * np.pi * (s - 0.25) * 1.3))
    pos = np.zeros((n, 3))
    pos[0] = [-3.0, 0.0, 0.5]
    for i in range(1, n):
        pos[i] = pos[i - 1] + speed[i] * np.array([np.sin(heading[i]), 0.0, np.cos(heading[i])])
    yaw = 0.3 * np.sin(2 * np.pi * s * 1.2)
    return poses(pos, yaw)


def stop_and_go(n: int) -> np.ndarray:
    """Walk down the corridor with two stops (low-parallax windows) and a slow pan while stopped."""
    speed = _speed_profile(
        n, [(0.15, 0.09), (0.3, 0.003), (0.15, 0.08), (0.25, 0.003), (0.15, 0.08)]
    )
    s = np.linspace(0, 1, n)
    pos = np.zeros((n, 3))
    pos[0] = [-0.6, 0.0, 0.3]
    x_sway = 0.8 * np.sin(2 * np.pi * s)
    for i in range(1, n):
        pos[i] = pos[i - 1] + speed[i] * np.array([0.0, 0.0, 1.0])
    pos[:, 0] = x_sway * (speed / speed.max())  # sway only while walking
    yaw = 0.35 * np.sin(2 * np.pi * s * 2.0)
    return poses(pos, yaw)


def loop(n: int, laps: float = 1.0) -> np.ndarray:
    """A closed oval around the room, back to the start: revisits for loop closure."""
    a = np.linspace(0, 2 * np.pi * laps, n, endpoint=False)
    pos = np.stack([1.1 * np.sin(a), np.zeros(n), 9.0 - 5.0 * np.cos(a)], -1)
    yaw = a + np.pi / 2  # tangent direction, looking along the path
    return poses(pos, yaw)


def figure8(n: int) -> np.ndarray:
    """A figure-eight through the room's middle: crossing revisits."""
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pos = np.stack([1.1 * np.sin(2 * a), np.zeros(n), 9.0 + 5.0 * np.sin(a)], -1)
    vel = np.stack([2.2 * np.cos(2 * a), np.zeros(n), 5.0 * np.cos(a)], -1)
    yaw = np.arctan2(vel[:, 0], vel[:, 2])
    return poses(pos, yaw)


TRAJECTORIES = {
    "demo": demo,
    "lateral": lateral,
    "forward": forward,
    "turn": turn,
    "stop_and_go": stop_and_go,
    "pure_rotation": pure_rotation,
    "low_parallax": low_parallax,
    "loop": loop,
    "figure8": figure8,
}
