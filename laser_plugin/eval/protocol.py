"""Per-dataset evaluation settings and the published numbers we print beside ours.

Depth caps, clamping and the alignment follow shared/reference/metrics.md (CUT3R's video-depth
protocol). Frame selections are defaults a user overrides with ``--start/--stride/--max-frames``:
the 7-Scenes/NRGBD keyframe strides are our choice for a streaming setting (CUT3R's "sparse"
protocol uses 200/500, which leaves a handful of frames: one window); the others use every frame.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Protocol:
    depth: bool
    """Score video depth (AbsRel, δ<1.25)."""
    pose: bool
    """Score camera poses (ATE, RPE)."""
    pointmap: bool = False
    """Score the fused point map (Acc, Comp, NC)."""
    depth_cap: float | None = None
    """Ignore ground-truth depth at or beyond this (metres / scene units)."""
    clip_max: float | None = None
    """Clamp aligned predictions to this before scoring."""
    stride: int = 1
    """Default frame stride: the engine sees frames 0, stride, 2·stride, ... (keyframes)."""


PROTOCOLS: dict[str, Protocol] = {
    "sintel": Protocol(depth=True, pose=True, depth_cap=70.0, clip_max=70.0),
    "bonn": Protocol(depth=True, pose=True, depth_cap=70.0, clip_max=70.0),
    "kitti": Protocol(depth=True, pose=True),
    "tum": Protocol(depth=True, pose=True),
    "scannet": Protocol(depth=True, pose=True),
    "7scenes": Protocol(depth=True, pose=True, pointmap=True, stride=20),
    "nrgbd": Protocol(depth=True, pose=True, pointmap=True, stride=40),
    "synthetic": Protocol(depth=True, pose=True, pointmap=True),
}

# The LASER paper's figures (DESIGN.md §1), π³ backbone. Keys: dataset → metric → value.
PAPER: dict[str, dict[str, dict[str, float]]] = {
    "π³ + LASER (paper)": {
        "sintel": {"abs_rel": 0.247, "ate": 0.061},
        "bonn": {"abs_rel": 0.048},
        "kitti": {"abs_rel": 0.054},
        "scannet": {"ate": 0.031},
        "tum": {"ate": 0.016},
    },
    "π³ offline (paper)": {
        "sintel": {"abs_rel": 0.245, "ate": 0.073},
        "bonn": {"abs_rel": 0.050},
        "kitti": {"abs_rel": 0.038},
        "scannet": {"ate": 0.030},
        "tum": {"ate": 0.014},
    },
}

# KITTI odometry (poses over whole sequences): mean ATE in metres.
PAPER_KITTI_ODOMETRY_ATE = {"LASER (π³)": 24.17, "VGGT-Long": 27.64, "π³-Long": 30.72}

# Ablation on Sintel AbsRel (DESIGN.md §1): variant name → value.
PAPER_ABLATION_SINTEL_ABS_REL = {
    "full": 0.247,
    "no_layer_alignment": 0.328,
    "no_intra_edges": 0.261,
}


def paper_rows(dataset: str, layout: str | None = None) -> dict[str, dict[str, float]]:
    """Published rows for ``dataset`` (empty when the paper has none)."""
    if dataset == "kitti" and layout == "odometry":
        return {f"{k} (paper)": {"ate": v} for k, v in PAPER_KITTI_ODOMETRY_ATE.items()}
    return {name: rows[dataset] for name, rows in PAPER.items() if dataset in rows}
