"""Make a model's window prediction safe to align: invalid depth -> 0, proper rotations, finite K."""

from __future__ import annotations

import torch
from torch import Tensor

from laser_plugin.types import WindowPrediction


def orthonormalise(r: Tensor) -> Tensor:
    """Nearest rotation (det +1) to each (..., 3, 3) matrix, by SVD."""
    u, _, vh = torch.linalg.svd(r.double())
    d = torch.sign(torch.det(u @ vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    fix = torch.ones(*r.shape[:-2], 3, dtype=torch.float64, device=r.device)
    fix[..., 2] = d
    return (u * fix[..., None, :]) @ vh


def sanitize_prediction(pred: WindowPrediction) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str]]:
    """Return (depth, conf, cam_to_world, intrinsics, messages) with every value usable.

    depth: NaN/Inf/<=0 -> 0 (invalid); conf: non-finite or negative -> 0, and 0 where depth is
    invalid; poses: non-finite frames take the nearest finite frame's pose (their depth is dropped),
    rotations are projected onto SO(3) (a reflected or scaled rotation becomes the nearest proper
    one); intrinsics: non-finite or non-positive focal lengths take the window's median.
    """
    msgs: list[str] = []
    # Few full-resolution passes: NaN/±Inf -> 0, then negatives -> 0 in place.
    depth = torch.nan_to_num(pred.depth.float(), nan=0.0, posinf=0.0, neginf=0.0).clamp_min_(0.0)
    good_depth = depth > 0
    if not bool(good_depth.any()):
        msgs.append("no valid depth in this window")
    conf = torch.nan_to_num(pred.conf.float(), nan=0.0, posinf=0.0, neginf=0.0).clamp_min_(0.0)
    conf.mul_(good_depth)

    poses = pred.cam_to_world.float().clone()
    finite = torch.isfinite(poses).flatten(1).all(1)
    # A (near-)singular rotation block carries no orientation: drop it like a non-finite pose
    # rather than let the SVD invent one.
    det = torch.det(torch.nan_to_num(poses[:, :3, :3].double()))
    finite &= det.abs() > 0.1
    if not finite.all():
        msgs.append(
            f"{int((~finite).sum())} non-finite or degenerate camera pose(s); their frames were dropped"
        )
        good = torch.nonzero(finite).squeeze(1)
        n = poses.shape[0]
        for i in torch.nonzero(~finite).squeeze(1).tolist():
            if good.numel():
                poses[i] = poses[good[(good - i).abs().argmin()]]
            else:
                poses[i] = torch.eye(4)
            depth[i] = 0
            conf[i] = 0
        del n
    r = poses[:, :3, :3]
    det = torch.det(r.double())
    if ((det - 1).abs() > 1e-3).any():
        msgs.append("rotations were not proper (det != 1); projected onto SO(3)")
    poses[:, :3, :3] = orthonormalise(r).to(poses.dtype)
    poses[:, 3] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=poses.dtype, device=poses.device)

    intr = pred.intrinsics.float().clone()
    fx, fy = intr[:, 0, 0], intr[:, 1, 1]
    ok = torch.isfinite(intr).flatten(1).all(1) & (fx > 0) & (fy > 0)
    if not ok.all():
        h, w = depth.shape[-2:]
        if ok.any():
            ref = intr[ok].median(0).values
        else:
            f = float(max(h, w))  # a 53-degree field of view: a neutral guess
            ref = torch.tensor(
                [[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]], dtype=intr.dtype
            )
        intr[~ok] = ref.to(intr.device)
        msgs.append(f"{int((~ok).sum())} invalid intrinsics matrix/matrices replaced")
    return depth, conf, poses, intr, msgs
