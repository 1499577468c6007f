"""Layer-graph extensions for layer consistency: skip links over a glitched frame, the local
scale of unlabelled pixels, and the accumulated precision of the fused estimate."""

import torch

from laser_plugin.geometry.lsa import align_layers


def _window(n_frames=6, n_overlap=2, h=30, w=40):
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


def test_skip_links_bridge_a_frame_where_segmentation_glitched():
    labels, depth_true, poses, k, n_o = _window()
    labels[3][labels[3] == 1] = -1  # frame 3 lost the near layer (e.g. merged, too small)
    planted = torch.tensor([1.0, 1.3], dtype=torch.float64)
    depth_new = depth_true / planted[labels.clamp_min(0)]
    args = (labels, depth_new, labels[:n_o], depth_true[:n_o], poses, k)
    adjacent = align_layers(*args, intra_hops=1)
    assert not adjacent.reached[4:, 1].any()  # the adjacent-frame chain ends at the glitch
    skip = align_layers(*args, intra_hops=2)
    assert skip.reached[4:, 1].all()
    torch.testing.assert_close(skip.node_scale[4:, 1], planted[1].expand(2), atol=1e-6, rtol=0)


def test_unlabelled_pixels_take_the_scale_of_the_layers_around_them():
    labels, depth_true, poses, k, n_o = _window()
    labels[:, 8:22, 18:22] = -1  # an unlabelled strip inside the near layer
    planted = torch.tensor([1.0, 1.3], dtype=torch.float64)
    near = torch.zeros_like(labels, dtype=torch.bool)
    near[:, 8:22, 10:30] = True
    depth_new = torch.where(near, depth_true / 1.3, depth_true)
    args = (labels, depth_new, labels[:n_o], depth_true[:n_o], poses, k)
    frame_mean = align_layers(*args, fill_radius=0).pixel_scale[:, 15, 20]
    local = align_layers(*args, fill_radius=3).pixel_scale[:, 15, 20]
    assert (frame_mean < 1.2).all()  # the frame's mean is mostly the wall's 1.0
    torch.testing.assert_close(local, planted[1].expand_as(local), atol=1e-6, rtol=0)


def test_a_small_unlabelled_object_does_not_take_the_walls_correction():
    """Issue 20: an object too small for a layer of its own, in front of a layer that the
    alignment corrects, keeps the Sim(3) scale (as an unreached layer would) instead of the
    wall's correction; the wall's own unlabelled rim still takes the wall's scale."""
    labels, depth_true, poses, k, n_o = _window()
    labels[labels == 1] = 0  # the near square is not used here: one wall layer
    depth_true[:] = 5.0
    depth_true[:, 3:6, 3:6] = 1.5  # a small object, unlabelled
    labels[:, 3:6, 3:6] = -1
    labels[:, 20:23, 30:33] = -1  # an unlabelled patch of the wall itself
    planted = 1.4  # the new window's wall is 1.4x too near; the object's error is its own
    depth_new = depth_true / planted
    depth_new[:, 3:6, 3:6] = 1.5 / 1.1
    args = (labels, depth_new, labels[:n_o], depth_true[:n_o], poses, k)
    la = align_layers(*args, fill_radius=3)
    torch.testing.assert_close(
        la.node_scale[:, 0], torch.full((6,), planted, dtype=torch.float64), atol=1e-6, rtol=0
    )
    assert torch.equal(la.pixel_scale[:, 4, 4], torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(
        la.pixel_scale[:, 21, 31], torch.full((6,), planted, dtype=torch.float64), atol=1e-6, rtol=0
    )


def test_fusion_reports_the_earlier_estimates_precision():
    labels, depth_true, poses, k, n_o = _window()
    planted = torch.tensor([1.0, 1.3], dtype=torch.float64)
    depth_new = depth_true / planted[labels]
    conf_prev = torch.full((n_o, 30, 40), 3.0, dtype=torch.float64)  # accumulated over 3 windows
    conf_new = torch.ones(6, 30, 40, dtype=torch.float64)
    la = align_layers(
        labels,
        depth_new,
        labels[:n_o],
        depth_true[:n_o],
        poses,
        k,
        conf_prev=conf_prev,
        conf_new=conf_new,
    )
    # s ** (3 / 4): the earlier estimate weighs three times the new one, on every frame
    torch.testing.assert_close(
        la.node_scale[:, 1], (planted[1] ** 0.75).expand(6), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        la.node_prior[:, :2], torch.full((6, 2), 3.0, dtype=la.node_prior.dtype)
    )


def test_the_dense_warp_path_gives_the_same_scales():
    """``dense_warp`` (the GPU's way: the skip links warped through one landing map per hop)
    must give the default CPU path's result exactly, on a window
    whose skip links do work (a glitched frame) and on a moving camera over the synthetic scene
    with real segmentation."""
    from laser_plugin import LaserConfig
    from laser_plugin.geometry.layers import segment_depth_layers
    from laser_plugin.models.synthetic import make_model, make_scene

    labels, depth_true, poses, k, n_o = _window()
    labels[3][labels[3] == 1] = -1
    depth_new = depth_true / torch.tensor([1.0, 1.3], dtype=torch.float64)[labels.clamp_min(0)]
    cases = [((labels, depth_new, labels[:n_o], depth_true[:n_o], poses, k), {})]

    cfg = LaserConfig()
    scene = make_scene("demo", 30, 64, 112)
    model = make_model(scene=scene)
    prev, new = model.predict(list(range(12))), model.predict(list(range(8, 20)))
    stride = cfg.stride_for(64, 112)
    lp = segment_depth_layers(prev.depth.double(), stride, cfg.crease, cfg.depth_jump)
    ln = segment_depth_layers(new.depth.double() * 1.1, stride, cfg.crease, cfg.depth_jump)
    k_s = new.intrinsics.double().clone()
    k_s[:, :2] /= stride
    args = (ln.labels, ln.depth, lp.labels[-4:], lp.depth[-4:], new.cam_to_world.double(), k_s)
    cases.append((args, {"conf_prev": lp.depth[-4:] * 0 + 0.7, "conf_new": ln.depth * 0 + 0.4}))
    for args, kw in cases:
        ref = align_layers(*args, intra_hops=3, fill_radius=2, dense_warp=False, **kw)
        assert ref.num_intra_edges > 0
        # The GPU path, run here on the CPU: one landing map per hop.
        for variant in ({"dense_warp": True},):
            out = align_layers(*args, intra_hops=3, fill_radius=2, **variant, **kw)
            assert (out.num_inter_edges, out.num_intra_edges) == (
                ref.num_inter_edges,
                ref.num_intra_edges,
            )
            for name in ("node_scale", "reached", "pixel_scale"):
                assert torch.equal(getattr(out, name), getattr(ref, name)), (variant, name)


def test_dense_label_warp_equals_the_subset_warp():
    from laser_plugin.geometry.lsa import _warp_subset

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(-1, 4, (20, 30), generator=g)
    depth = torch.rand(20, 30, generator=g, dtype=torch.float64) * 3 + 1
    depth[0, :5] = 0  # invalid depth never lands
    k = torch.tensor([[25.0, 0, 14.5], [0, 25.0, 9.5], [0, 0, 1]], dtype=torch.float64)
    pose_dst = torch.eye(4, dtype=torch.float64)
    pose_dst[:3, 3] = torch.tensor([0.1, -0.05, 0.2])
    args = (labels, depth, torch.eye(4, dtype=torch.float64), pose_dst, k, k)
    sub = _warp_subset(*args, dense=False)
    assert (sub >= 0).sum() > 300  # most pixels land somewhere
    assert torch.equal(_warp_subset(*args, dense=True), sub)
