"""Depth-layer segmentation and the layer graph: ground truth from the synthetic renderer and
planted layer scales."""

import numpy as np
import pytest
import torch

from laser_plugin.geometry.layers import (
    connected_components_scipy,
    connected_components_torch,
    cut_mask,
    segment_depth_layers,
    upsample_labels,
)
from laser_plugin.geometry.lsa import align_layers
from laser_plugin.models.synthetic import make_scene
from laser_plugin.models.synthetic.scene import NUM_ROOM_IDS


def test_torch_components_equal_scipy_reference():
    gen = torch.Generator().manual_seed(0)
    depth = torch.rand(3, 40, 50, generator=gen) + 1.0
    member = torch.rand(3, 40, 50, generator=gen) < 0.6
    conn_r = member[:, :, :-1] & member[:, :, 1:] & (torch.rand(3, 40, 49, generator=gen) < 0.8)
    conn_d = member[:, :-1, :] & member[:, 1:, :] & (torch.rand(3, 39, 50, generator=gen) < 0.8)
    del depth
    a = connected_components_torch(member, conn_r, conn_d)
    b = connected_components_scipy(member, conn_r, conn_d)
    assert torch.equal(a, b)
    assert (a >= 0).sum() == member.sum()


def test_planes_are_not_cut_however_steep():
    """Inverse depth is affine on a plane: a floor receding to the horizon stays one layer."""
    h, w = 60, 80
    v = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w)
    depth = 1.5 * 60.0 / (v - 10.0 + 0.5)  # floor below a camera with f=60, horizon at row 10
    depth = torch.where(v > 12, depth, torch.full_like(depth, 50.0))  # a far wall above
    member, _, _ = cut_mask(depth[None], crease=0.012, max_step=0.25)
    floor = member[0, 14:, 1:-1]
    assert floor.float().mean() > 0.98
    layers = segment_depth_layers(depth[None], stride=1)
    assert int(layers.num_layers[0]) == 2


@pytest.mark.parametrize(
    "name,frames", [("lateral", [0, 40]), ("demo", [60, 100]), ("forward", [50])]
)
def test_objects_get_their_own_layers(name, frames):
    """Objects are covered by layers that belong to them (an object may be several layers, one per
    face; it must not share a layer with the floor it stands on). Scored over every sizeable
    object: most must be well separated."""
    scene = make_scene(name, height=128, width=224)
    separated = []
    for i in frames:
        r = scene.render(i)
        lab = segment_depth_layers(torch.from_numpy(r.depth)[None], stride=1).labels[0].numpy()
        for o in np.unique(r.object_id):
            m = r.object_id == o
            if o < NUM_ROOM_IDS or m.sum() < 400:
                continue
            pure = [
                lbl
                for lbl in np.unique(lab[m])
                if lbl >= 0 and (r.object_id[lab == lbl] == o).mean() > 0.85
            ]
            separated.append(np.isin(lab[m], pure).mean())
    assert len(separated) >= 3
    assert np.mean(np.array(separated) > 0.6) >= 0.75, separated
    assert np.median(separated) > 0.8, separated


def test_upsample_labels_shape():
    lab = torch.arange(12).reshape(1, 3, 4)
    up = upsample_labels(lab, 2, 7, 9)
    assert up.shape == (1, 7, 9)
    assert up[0, 6, 8] == lab[0, 2, 3] and up[0, 0, 0] == lab[0, 0, 0]


def _two_layer_window(n_frames=4, n_overlap=2, h=30, w=40):
    """Static camera; a near square (label 1) in front of a wall (label 0)."""
    labels = torch.zeros(n_frames, h, w, dtype=torch.long)
    labels[:, 8:22, 10:30] = 1
    depth = torch.full((n_frames, h, w), 5.0, dtype=torch.float64)
    depth[labels == 1] = 2.0
    poses = torch.eye(4, dtype=torch.float64).repeat(n_frames, 1, 1)
    k = torch.tensor(
        [[40.0, 0, (w - 1) / 2], [0, 40.0, (h - 1) / 2], [0, 0, 1]], dtype=torch.float64
    )
    return labels, depth, poses, k.expand(n_frames, 3, 3).clone(), n_overlap


@pytest.mark.parametrize("warp", [True, False])
def test_planted_layer_scales_are_recovered_and_propagated(warp):
    labels, depth_true, poses, k, n_o = _two_layer_window()
    planted = torch.tensor([1.0, 1.3], dtype=torch.float64)  # the near layer is 30% too shallow
    depth_new = depth_true / planted[labels]
    la = align_layers(labels, depth_new, labels[:n_o], depth_true[:n_o], poses, k, intra_warp=warp)
    torch.testing.assert_close(la.node_scale[:, :2], planted.expand(4, 2), atol=1e-6, rtol=0)
    assert la.reached[:, :2].all()
    torch.testing.assert_close(depth_new * la.pixel_scale, depth_true, atol=1e-6, rtol=0)
    assert la.num_inter_edges == 2 * n_o


def test_without_intra_edges_scales_stay_on_the_overlap():
    labels, depth_true, poses, k, n_o = _two_layer_window()
    planted = torch.tensor([1.0, 1.3], dtype=torch.float64)
    la = align_layers(
        labels,
        depth_true / planted[labels],
        labels[:n_o],
        depth_true[:n_o],
        poses,
        k,
        intra_edges=False,
    )
    assert la.reached[:n_o, :2].all() and not la.reached[n_o:].any()
    torch.testing.assert_close(la.node_scale[n_o:], torch.ones_like(la.node_scale[n_o:]))


def test_iou_threshold_blocks_unrelated_layers():
    labels, depth_true, poses, k, n_o = _two_layer_window()
    shifted = torch.zeros_like(labels)
    shifted[:, 8:22, 0:8] = 1  # the new window's layer 1 no longer overlaps the old one
    la = align_layers(shifted, depth_true, labels[:n_o], depth_true[:n_o], poses, k)
    assert not la.reached[:, 1].any()
