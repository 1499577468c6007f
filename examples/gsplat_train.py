"""Train 3D Gaussians with gsplat on our nerfstudio export of the synthetic scene, and compare
held-out PSNR with LASER's poses against ground-truth poses.

Both datasets go through the same path: frames -> NerfstudioWriter (transforms.json, images,
sparse_pc.ply) -> read back -> gsplat. The LASER one holds the streaming reconstruction of the
emulated model; the reference one holds the scene's true poses, intrinsics and depth. Training is
the plain recipe (L1 loss, Adam, Gaussians initialised from sparse_pc.ply, no densification), the
same for both, so the PSNR gap measures the poses and the point cloud, not the trainer.

    python examples/gsplat_train.py --output-dir outputs/gsplat     # needs CUDA and gsplat

gsplat compiles its CUDA kernels on first use (a minute or two with nvcc).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from laser_plugin.config import LaserConfig
from laser_plugin.geometry.conventions import opengl_to_opencv_c2w
from laser_plugin.integrations.nerfstudio.pipeline import reconstruct_to_nerfstudio
from laser_plugin.integrations.nerfstudio.schema import TransformsFile
from laser_plugin.integrations.nerfstudio.writer import NerfstudioExportConfig, NerfstudioWriter
from laser_plugin.io.ply import read_ply
from laser_plugin.types import ReconstructedFrame


@dataclass
class Args:
    """gsplat on LASER vs ground-truth poses."""

    output_dir: Path = Path("outputs/gsplat")
    """Where the two datasets and results.json go."""
    scene: str = "demo"
    """Synthetic scene name (laser_plugin.models.synthetic.SCENES)."""
    num_frames: int = 60
    """Frames of the scene."""
    height: int = 256
    """Image height."""
    width: int = 448
    """Image width."""
    steps: int = 4000
    """Training steps per dataset."""
    val_every: int = 8
    """Hold out every n-th frame (the middle of each block) for evaluation."""
    seed: int = 0
    """Seed for the image order and initialisation."""


@dataclass
class SplatData:
    """A dataset read back from a nerfstudio export, in gsplat's conventions."""

    images: np.ndarray
    """(N, H, W, 3) uint8."""
    c2w: np.ndarray
    """(N, 4, 4) camera-to-world, OpenCV axes (what gsplat's world-to-camera viewmats invert)."""
    ks: np.ndarray
    """(N, 3, 3) pixels, top-left pixel centre at (0.5, 0.5) (gsplat's and COLMAP's convention)."""
    points: np.ndarray
    """(M, 3) initial Gaussian centres."""
    colors: np.ndarray
    """(M, 3) uint8 initial colours."""
    train: list[int]
    val: list[int]


def load_export(root: Path) -> SplatData:
    """Read our transforms.json, images and sparse_pc.ply."""
    from PIL import Image

    meta = TransformsFile.from_json(json.loads((root / "transforms.json").read_text()))
    images = np.stack(
        [np.asarray(Image.open(root / f.file_path).convert("RGB")) for f in meta.frames]
    )
    c2w = opengl_to_opencv_c2w(np.stack([f.transform_matrix for f in meta.frames]))
    ks = np.stack(
        [
            [
                [f.intrinsics.fl_x, 0, f.intrinsics.cx],
                [0, f.intrinsics.fl_y, f.intrinsics.cy],
                [0, 0, 1],
            ]
            for f in meta.frames
        ]
    ).astype(np.float64)
    points, colors = read_ply(root / meta.ply_file_path)
    names = [f.file_path for f in meta.frames]
    val = [names.index(p) for p in meta.val_filenames]
    return SplatData(
        images, c2w, ks, points, colors, [i for i in range(len(names)) if i not in val], val
    )


def prepare(args: Args) -> tuple[SplatData, SplatData]:
    """Write and read back the LASER export and the ground-truth export of the same frames."""
    from laser_plugin.models.synthetic import make_model, make_scene

    scene = make_scene(
        args.scene, num_frames=args.num_frames, height=args.height, width=args.width, seed=args.seed
    )
    export = NerfstudioExportConfig(
        image_resolution="model", val_every=args.val_every, overwrite=True
    )
    reconstruct_to_nerfstudio(
        list(scene.frames()),
        args.output_dir / "laser",
        model=make_model(scene=scene),
        laser=LaserConfig(),
        export=export,
    )
    truth = NerfstudioWriter(
        args.output_dir / "truth", export, provenance={"poses": "ground truth"}
    )
    for i in range(scene.num_frames):
        r = scene.render(i)
        truth.on_frame(
            ReconstructedFrame(
                index=i,
                timestamp=i / scene.fps,
                image=r.image,
                cam_to_world=scene.gt_cam_to_world[i],
                intrinsics=scene.intrinsics,
                depth=r.depth,
                conf=np.ones_like(r.depth),
            )
        )
    truth.close()
    return load_export(args.output_dir / "laser"), load_export(args.output_dir / "truth")


def _psnr(a, b) -> float:
    import torch

    return float(-10.0 * torch.log10(torch.mean((a - b) ** 2)))


def train_and_eval(data: SplatData, args: Args) -> dict[str, float]:
    """Plain 3DGS training with gsplat; returns held-out and training PSNR (dB)."""
    import torch
    from gsplat import rasterization
    from scipy.spatial import cKDTree

    dev = torch.device("cuda")
    torch.manual_seed(args.seed)
    pts = data.points.astype(np.float32)
    # initial scale: mean distance to the 3 nearest neighbours (the usual 3DGS start)
    dist, _ = cKDTree(pts).query(pts, k=4)
    scale0 = np.clip(dist[:, 1:].mean(1), 1e-4, None)
    n = len(pts)
    params = {
        "means": torch.tensor(pts, device=dev),
        "log_scales": torch.log(torch.tensor(scale0, device=dev, dtype=torch.float32))[
            :, None
        ].repeat(1, 3),
        "quats": torch.nn.functional.normalize(torch.randn(n, 4, device=dev), dim=-1),
        "opacity_logits": torch.logit(torch.full((n,), 0.5, device=dev)),
        "color_logits": torch.logit(
            torch.tensor(data.colors / 255.0, device=dev, dtype=torch.float32).clamp(0.02, 0.98)
        ),
    }
    for p in params.values():
        p.requires_grad_(True)
    extent = (
        float(np.linalg.norm(data.c2w[:, :3, 3] - data.c2w[:, :3, 3].mean(0), axis=1).max()) or 1.0
    )
    lrs = {
        "means": 1.6e-4 * extent,
        "log_scales": 5e-3,
        "quats": 1e-3,
        "opacity_logits": 5e-2,
        "color_logits": 2.5e-3 * 4,
    }
    opt = torch.optim.Adam([{"params": [params[k]], "lr": lrs[k]} for k in params], eps=1e-15)
    images = torch.tensor(data.images, device=dev, dtype=torch.float32) / 255.0
    viewmats = torch.linalg.inv(torch.tensor(data.c2w, device=dev, dtype=torch.float32))
    ks = torch.tensor(data.ks, device=dev, dtype=torch.float32)
    h, w = data.images.shape[1:3]

    def render(idx: list[int]):
        out, _, _ = rasterization(
            params["means"],
            torch.nn.functional.normalize(params["quats"], dim=-1),
            torch.exp(params["log_scales"]),
            torch.sigmoid(params["opacity_logits"]),
            torch.sigmoid(params["color_logits"]),
            viewmats[idx],
            ks[idx],
            w,
            h,
        )
        return out.clamp(0, 1)

    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        render([data.train[0]])  # the first call may compile gsplat's kernels: keep it untimed
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        i = data.train[int(torch.randint(len(data.train), (1,), generator=gen))]
        loss = (render([i])[0] - images[i]).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        val = float(np.mean([_psnr(render([i])[0], images[i]) for i in data.val]))
        train = float(np.mean([_psnr(render([i])[0], images[i]) for i in data.train]))
    return {
        "val_psnr": val,
        "train_psnr": train,
        "gaussians": n,
        "train_seconds": seconds,
        "ms_per_step": 1000 * seconds / args.steps,
    }


def main(args: Args) -> dict:
    from laser_plugin.metrics import ate_rmse

    laser, truth = prepare(args)
    results = {
        "scene": args.scene,
        "frames": len(laser.images),
        "size": [args.height, args.width],
        "val_frames": laser.val,
        "ate_rmse_sim3": ate_rmse(laser.c2w, truth.c2w),
        "laser": train_and_eval(laser, args),
        "ground_truth": train_and_eval(truth, args),
    }
    (args.output_dir / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
