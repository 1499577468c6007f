"""Point-map reconstruction metrics (7-Scenes, NRGBD): accuracy, completeness, normal consistency.

The protocol of this line of work (CUT3R's ``eval/mv_recon``, reused by π³ and LASER), restated
from reading the official evaluation code, not copied:

1. Per test sequence, keyframes every ``kf_every`` frames (CUT3R: 200 for 7-Scenes and 500 for
   NRGBD, the "sparse" setting; π³ also reports a "dense" one with 40 and 100); the predicted
   and ground-truth point maps of those frames, on the pixels with valid ground-truth depth
   (CUT3R also keeps only a central 224x224 crop of its 512x384 inputs).
2. Predicted points are brought to ground-truth scale (CUT3R normalises both point sets by their
   mean distance to the first camera, then expresses both in the first ground-truth camera's
   world frame), then refined by point-to-point ICP with a 0.1 (metre) correspondence
   threshold from the identity.
3. Normals of both clouds come from Open3D's default estimate (PCA over the 30 nearest
   neighbours); their sign is arbitrary, so only |cos| counts.
4. Accuracy = mean distance from each predicted point to its nearest ground-truth point;
   completeness = mean distance from each ground-truth point to its nearest predicted point;
   NC1 = mean |n_pred · n_gt(nearest)| over predicted points, NC2 the same over ground-truth
   points, NC = (NC1 + NC2) / 2; medians likewise. The dataset score is the plain mean over
   sequences.

Our implementation (numpy + scipy, no Open3D): step 2 fits one Sim(3) by Umeyama on the
pixel-wise correspondences (our predictions are dense per pixel, so correspondences are exact)
instead of the mean-distance normalisation, then runs the same rigid point-to-point ICP with the
same threshold; normals by the same 30-neighbour PCA. Everything else follows the list above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from laser_plugin.metrics import Sim3, umeyama_alignment


def backproject(depth: np.ndarray, intrinsics: np.ndarray, cam_to_world: np.ndarray) -> np.ndarray:
    """(H, W) z-depth, (3, 3) pixel intrinsics, (4, 4) camera-to-world → (H, W, 3) world points.

    Pixel (u, v) is the centre of column u, row v (OpenCV).
    """
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    k = np.asarray(intrinsics, dtype=np.float64)
    z = np.asarray(depth, dtype=np.float64)
    x = (u - k[0, 2] - k[0, 1] * (v - k[1, 2]) / k[1, 1]) / k[0, 0] * z
    y = (v - k[1, 2]) / k[1, 1] * z
    pts_cam = np.stack([x, y, z], axis=-1)
    c2w = np.asarray(cam_to_world, dtype=np.float64)
    return pts_cam @ c2w[:3, :3].T + c2w[:3, 3]


def estimate_normals(points: np.ndarray, k: int = 30) -> np.ndarray:
    """(N, 3) unit normals by PCA over each point's ``k`` nearest neighbours (sign arbitrary)."""
    points = np.asarray(points, dtype=np.float64)
    k = min(k, len(points))
    _, idx = cKDTree(points).query(points, k=k)
    nbrs = points[idx]  # (N, k, 3)
    centred = nbrs - nbrs.mean(axis=1, keepdims=True)
    cov = np.einsum("nki,nkj->nij", centred, centred)
    _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
    return vecs[:, :, 0]


def icp_rigid(
    src: np.ndarray, dst: np.ndarray, threshold: float, iterations: int = 30, tol: float = 1e-6
) -> Sim3:
    """Point-to-point ICP (rigid) of ``src`` onto ``dst`` from the identity.

    Each round pairs every source point with its nearest destination point within
    ``threshold`` and refits R, t (Kabsch); stops when the inlier RMSE changes by < ``tol``.
    Returns the accumulated transform (scale 1).
    """
    tree = cKDTree(dst)
    rot, trans = np.eye(3), np.zeros(3)
    prev = np.inf
    for _ in range(iterations):
        moved = src @ rot.T + trans
        dist, idx = tree.query(moved, distance_upper_bound=threshold)
        inl = np.isfinite(dist)
        if inl.sum() < 3:
            break
        rmse = float(np.sqrt(np.mean(dist[inl] ** 2)))
        _, r, t = umeyama_alignment(moved[inl], dst[idx[inl]], with_scale=False)
        rot, trans = r @ rot, r @ trans + t
        if abs(prev - rmse) < tol:
            break
        prev = rmse
    return Sim3(1.0, rot, trans)


@dataclass
class PointmapScores:
    acc: float
    acc_med: float
    comp: float
    comp_med: float
    nc: float
    nc_med: float
    nc1: float
    nc2: float
    num_pred: int
    num_gt: int

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def reconstruction_metrics(
    pts_pred: np.ndarray,
    pts_gt: np.ndarray,
    normals_k: int = 30,
) -> PointmapScores:
    """Accuracy, completeness and normal consistency of two aligned clouds, (N, 3) and (M, 3)."""
    pts_pred = np.asarray(pts_pred, dtype=np.float64)
    pts_gt = np.asarray(pts_gt, dtype=np.float64)
    if len(pts_pred) < 3 or len(pts_gt) < 3:
        raise ValueError("point-map metrics need at least 3 points on each side")
    n_pred = estimate_normals(pts_pred, normals_k)
    n_gt = estimate_normals(pts_gt, normals_k)
    d_acc, i_acc = cKDTree(pts_gt).query(pts_pred)  # predicted → nearest ground truth
    d_comp, i_comp = cKDTree(pts_pred).query(pts_gt)  # ground truth → nearest predicted
    nc1 = np.abs(np.sum(n_pred * n_gt[i_acc], axis=1))
    nc2 = np.abs(np.sum(n_gt * n_pred[i_comp], axis=1))
    return PointmapScores(
        acc=float(d_acc.mean()),
        acc_med=float(np.median(d_acc)),
        comp=float(d_comp.mean()),
        comp_med=float(np.median(d_comp)),
        nc=float((nc1.mean() + nc2.mean()) / 2),
        nc_med=float((np.median(nc1) + np.median(nc2)) / 2),
        nc1=float(nc1.mean()),
        nc2=float(nc2.mean()),
        num_pred=len(pts_pred),
        num_gt=len(pts_gt),
    )


def evaluate_pointmaps(
    pts_pred: np.ndarray,
    pts_gt: np.ndarray,
    icp_threshold: float | None = 0.1,
    max_points: int | None = 200_000,
    seed: int = 0,
) -> tuple[PointmapScores, Sim3]:
    """The protocol above on pixel-corresponding clouds: Sim(3), ICP, then the metrics.

    Args:
        pts_pred: (N, 3) predicted world points.
        pts_gt: (N, 3) ground-truth world points of the same pixels.
        icp_threshold: ICP correspondence distance in ground-truth units (None = no ICP).
        max_points: random subsample for speed (the metrics are means, so a large sample is
            unbiased); None keeps all.

    Returns:
        The scores and the Sim(3) applied to the prediction (ICP composed with Umeyama).
    """
    pts_pred = np.asarray(pts_pred, dtype=np.float64)
    pts_gt = np.asarray(pts_gt, dtype=np.float64)
    if pts_pred.shape != pts_gt.shape or pts_pred.ndim != 2 or pts_pred.shape[1] != 3:
        raise ValueError(
            f"need two (N, 3) arrays of corresponding points, got {pts_pred.shape}, {pts_gt.shape}"
        )
    if max_points is not None and len(pts_pred) > max_points:
        keep = np.random.default_rng(seed).choice(len(pts_pred), max_points, replace=False)
        pts_pred, pts_gt = pts_pred[keep], pts_gt[keep]
    sim = umeyama_alignment(pts_pred, pts_gt, with_scale=True)
    aligned = sim.scale * pts_pred @ sim.rotation.T + sim.translation
    if icp_threshold is not None:
        icp = icp_rigid(aligned, pts_gt, icp_threshold)
        aligned = aligned @ icp.rotation.T + icp.translation
        sim = Sim3(
            sim.scale, icp.rotation @ sim.rotation, icp.rotation @ sim.translation + icp.translation
        )
    return reconstruction_metrics(aligned, pts_gt), sim
