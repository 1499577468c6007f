"""A procedural indoor scene rendered by ray casting, with exact depth, poses and object ids.

World axes follow OpenCV cameras at the identity: x right, y down, z forward. The room is a box
(floor, ceiling, four walls: the background); boxes stand on the floor and spheres rest on it or
float, at near and far depths, with textures so the images look like something.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from laser_plugin.models.synthetic.trajectories import TRAJECTORIES

ROOM_LO = np.array([-4.0, -2.2, -3.0])
ROOM_HI = np.array([4.0, 1.5, 20.0])
NUM_ROOM_IDS = 6  # 0 x-, 1 x+, 2 ceiling (y-), 3 floor (y+), 4 z-, 5 z+


@dataclass
class Render:
    image: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 z-depth
    object_id: np.ndarray  # (H, W) int16; < NUM_ROOM_IDS = room (background)


@dataclass
class SceneObjects:
    box_lo: np.ndarray  # (B, 3)
    box_hi: np.ndarray  # (B, 3)
    sph_c: np.ndarray  # (S, 3)
    sph_r: np.ndarray  # (S,)
    colors: np.ndarray  # (NUM_ROOM_IDS + B + S, 3) float in [0, 1]
    room_lo: np.ndarray = field(default_factory=lambda: ROOM_LO.copy())
    room_hi: np.ndarray = field(default_factory=lambda: ROOM_HI.copy())

    @property
    def num_ids(self) -> int:
        return len(self.colors)


def make_objects(seed: int) -> SceneObjects:
    """Boxes and spheres along the walls, near the start and at the back of the room."""
    rng = np.random.default_rng(seed)
    floor = ROOM_HI[1]
    lo, hi = [], []

    def box(x, z, w, h, d):
        lo.append([x - w / 2, floor - h, z - d / 2])
        hi.append([x + w / 2, floor, z + d / 2])

    for side in (-1, 1):  # along the walls, leaving the middle (|x| < 1.5) free for the camera
        for z in np.array([3.0, 5.5, 8.0, 10.5, 13.0, 15.5]) + rng.uniform(-0.6, 0.6, 6):
            w = rng.uniform(0.7, 1.2)
            box(
                side * rng.uniform(1.6 + w / 2, 3.4),
                z,
                w,
                rng.uniform(0.8, 2.4),
                rng.uniform(0.7, 1.2),
            )
    for x in (-2.0, 2.0):  # near objects
        box(x + rng.uniform(-0.2, 0.2), 2.5 + rng.uniform(0, 0.3), 0.6, rng.uniform(0.9, 1.3), 0.5)
    for x in (-2.0, 0.2, 2.2):  # far objects at the back
        box(
            x,
            rng.uniform(17.0, 18.5),
            rng.uniform(0.8, 1.5),
            rng.uniform(1.0, 2.5),
            rng.uniform(0.6, 1.2),
        )
    sc = [[-1.6, -0.8, 7.0], [2.2, floor - 0.6, 11.8], [0.0, -1.2, 15.5], [-2.3, 0.2, 12.2]]
    sr = [0.5, 0.6, 0.7, 0.5]
    n_ids = NUM_ROOM_IDS + len(lo) + len(sc)
    colors = rng.uniform(0.25, 0.95, size=(n_ids, 3))
    colors[:NUM_ROOM_IDS] = [
        [0.75, 0.72, 0.65],
        [0.65, 0.7, 0.75],
        [0.9, 0.9, 0.88],
        [0.55, 0.45, 0.35],
        [0.7, 0.75, 0.65],
        [0.8, 0.7, 0.6],
    ]
    return SceneObjects(np.array(lo), np.array(hi), np.array(sc), np.array(sr), colors)


DEEP_ROOM_HI = np.array([4.0, 1.5, 90.0])


def make_deep_objects(seed: int) -> SceneObjects:
    """A 90 m hall (the far wall 30-60x farther than the nearest object) with small objects: boxes
    and balls of 0.3-0.6 m on the floor at 3-12 m (0.5-2% of a 70-degree frame each), a few
    large ones far down the hall, and one near box (issue 20: deep scenes where merging regions
    by a threshold relative to the depth range folds objects into the floor)."""
    rng = np.random.default_rng(seed + 1000)
    floor = DEEP_ROOM_HI[1]
    lo, hi = [], []

    def box(x, z, w, h, d):
        lo.append([x - w / 2, floor - h, z - d / 2])
        hi.append([x + w / 2, floor, z + d / 2])

    box(-1.8, 2.6, 0.6, 1.0, 0.5)  # the nearest object, about 2 m from the start
    for i, z in enumerate(np.linspace(4.0, 12.0, 7) + rng.uniform(-0.3, 0.3, 7)):
        s = rng.uniform(0.35, 0.6)
        box((-1) ** i * rng.uniform(1.2, 2.6), z, s, s * rng.uniform(0.8, 1.4), s)
    for x, z in ((-2.5, 35.0), (2.0, 50.0), (-0.5, 70.0)):
        box(x, z, rng.uniform(1.5, 2.5), rng.uniform(2.0, 3.2), rng.uniform(1.0, 2.0))
    sc = [[1.5, floor - 0.3, 6.5], [-1.2, floor - 0.25, 9.5], [0.6, floor - 0.35, 14.0]]
    sr = [0.3, 0.25, 0.35]
    n_ids = NUM_ROOM_IDS + len(lo) + len(sc)
    colors = rng.uniform(0.25, 0.95, size=(n_ids, 3))
    colors[:NUM_ROOM_IDS] = make_objects(seed).colors[:NUM_ROOM_IDS]
    return SceneObjects(
        np.array(lo),
        np.array(hi),
        np.array(sc),
        np.array(sr),
        colors,
        ROOM_LO.copy(),
        DEEP_ROOM_HI.copy(),
    )


def cast(origin: np.ndarray, dirs: np.ndarray, objs: SceneObjects):
    """Nearest hit along rays ``origin + t * dirs``: returns (t (N,), id (N,), normal (N, 3))."""
    n = len(dirs)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dirs
        # Room: we are inside, so the exit distance along each axis.
        t_axis = np.where(dirs > 0, (objs.room_hi - origin) * inv, (objs.room_lo - origin) * inv)
        t_axis = np.where(np.isfinite(t_axis), t_axis, np.inf)
        axis = np.argmin(t_axis, 1)
        t_best = t_axis[np.arange(n), axis]
        ids = 2 * axis + (dirs[np.arange(n), axis] > 0)
        normal = np.zeros((n, 3))
        normal[np.arange(n), axis] = -np.sign(dirs[np.arange(n), axis])
        # Boxes: slab test, (N, B).
        t1 = (objs.box_lo[None] - origin) * inv[:, None]
        t2 = (objs.box_hi[None] - origin) * inv[:, None]
        tmin = np.minimum(t1, t2)
        tmax = np.maximum(t1, t2)
        tn = np.nanmax(tmin, axis=2)
        tf = np.nanmin(tmax, axis=2)
        hit = (tn <= tf) & (tn > 1e-6)
        tb = np.where(hit, tn, np.inf)
        if tb.size:
            j = np.argmin(tb, 1)
            tj = tb[np.arange(n), j]
            better = tj < t_best
            t_best = np.where(better, tj, t_best)
            ids = np.where(better, NUM_ROOM_IDS + j, ids)
            ax = np.argmax(tmin[np.arange(n), j], 1)
            nb = np.zeros((n, 3))
            nb[np.arange(n), ax] = -np.sign(dirs[np.arange(n), ax])
            normal = np.where(better[:, None], nb, normal)
        # Spheres, (N, S).
        oc = origin[None, None] - objs.sph_c[None]  # (1, S, 3)
        a = (dirs * dirs).sum(1)[:, None]
        b = 2 * (dirs[:, None] * oc).sum(2)
        c = (oc * oc).sum(2) - objs.sph_r[None] ** 2
        disc = b * b - 4 * a * c
        ts = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
        ts = np.where((disc > 0) & (ts > 1e-6), ts, np.inf)
        if ts.size:
            j = np.argmin(ts, 1)
            tj = ts[np.arange(n), j]
            better = tj < t_best
            t_best = np.where(better, tj, t_best)
            ids = np.where(better, NUM_ROOM_IDS + len(objs.box_lo) + j, ids)
            p = origin + tj[:, None] * dirs
            ns = (p - objs.sph_c[j]) / objs.sph_r[j][:, None]
            normal = np.where(better[:, None], ns, normal)
    return t_best, ids, normal


@dataclass
class SyntheticScene:
    """Ground truth for one synthetic sequence; frames render lazily and deterministically."""

    name: str
    cam_to_world: np.ndarray  # (N, 4, 4)
    intrinsics: np.ndarray  # (3, 3)
    height: int
    width: int
    seed: int = 0
    fps: float = 30.0
    objects: SceneObjects = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        if self.objects is None:
            self.objects = make_objects(self.seed)
        self._hashes: dict[bytes, int] = {}
        self._render = lru_cache(maxsize=64)(self._render_uncached)

    @property
    def num_frames(self) -> int:
        return len(self.cam_to_world)

    @property
    def gt_cam_to_world(self) -> np.ndarray:
        return self.cam_to_world

    def render(self, i: int) -> Render:
        return self._render(int(i))

    def _render_uncached(self, i: int) -> Render:
        h, w = self.height, self.width
        v, u = np.mgrid[0:h, 0:w].astype(np.float64)
        k = self.intrinsics
        dirs_cam = np.stack(
            [(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1
        ).reshape(-1, 3)
        pose = self.cam_to_world[i]
        dirs = dirs_cam @ pose[:3, :3].T  # unnormalised: t along it is the z-depth
        t, ids, normal = cast(pose[:3, 3], dirs, self.objects)
        p = pose[:3, 3] + t[:, None] * dirs
        base = self.objects.colors[ids]
        checker = ((np.floor(p[:, 0] * 2) + np.floor(p[:, 1] * 2) + np.floor(p[:, 2] * 2)) % 2)[
            :, None
        ]
        light = np.array([0.4, -0.8, -0.45])
        light /= np.linalg.norm(light)
        shade = 0.55 + 0.45 * np.clip((normal * light).sum(1), 0, 1)[:, None]
        img = base * (0.8 + 0.2 * checker) * shade
        image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(h, w, 3)
        self._hashes[image_key(image)] = i
        return Render(image, t.reshape(h, w).astype(np.float32), ids.reshape(h, w).astype(np.int16))

    def frames(self):
        """Iterate the sequence's images (H, W, 3) uint8."""
        for i in range(self.num_frames):
            yield self.render(i).image

    def index_of(self, image: np.ndarray) -> int | None:
        """Which frame an image is (exact match), if this scene rendered it."""
        return self._hashes.get(image_key(image))


def image_key(image: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=12).digest()


SCENES = {
    # name: (trajectory, default frames)
    "demo": ("demo", 120),
    "lateral": ("lateral", 80),
    "forward": ("forward", 120),
    "turn": ("turn", 120),
    "stop_and_go": ("stop_and_go", 120),
    "pure_rotation": ("pure_rotation", 60),
    "low_parallax": ("low_parallax", 60),
    "loop": ("loop", 300),
    "figure8": ("figure8", 300),
    # A deep hall with small objects (make_deep_objects), walked with the demo's pauses.
    "deep": ("demo", 120),
}


@lru_cache(
    maxsize=4
)  # deterministic, so model replicas and tests share one scene (and its renders)
def make_scene(
    name: str = "demo",
    num_frames: int | None = None,
    height: int = 128,
    width: int = 224,
    fov_deg: float = 70.0,
    seed: int = 0,
) -> SyntheticScene:
    """A named synthetic sequence (see ``SCENES``) at the given resolution."""
    if name not in SCENES:
        from laser_plugin.errors import ConfigError

        raise ConfigError(f"unknown synthetic scene {name!r}; choose from {', '.join(SCENES)}")
    traj, default_n = SCENES[name]
    n = num_frames or default_n
    f = (width / 2) / np.tan(np.radians(fov_deg) / 2)
    k = np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])
    objects = make_deep_objects(seed) if name == "deep" else None
    return SyntheticScene(name, TRAJECTORIES[traj](n), k, height, width, seed, objects=objects)
