"""Sim(3) helpers and the robust pose graph, against planted ground truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from laser_plugin.loop.posegraph import EdgeNoise, PoseGraph
from laser_plugin.loop.sim3np import (
    correct_pose,
    sim3_exp,
    sim3_from,
    sim3_inverse,
    sim3_log,
    sim3_split,
)


def random_sim3(rng, batch=()) -> np.ndarray:
    n = int(np.prod(batch)) if batch else 1
    r = Rotation.random(n, random_state=rng.integers(1 << 31)).as_matrix()
    out = sim3_from(np.exp(rng.normal(0, 0.5, n)), r, rng.normal(0, 2, (n, 3)))
    return out.reshape((*batch, 4, 4)) if batch else out[0]


@pytest.mark.parametrize("batch", [(), (5,), (2, 3)])
def test_sim3_inverse_log_exp_roundtrip(batch):
    rng = np.random.default_rng(0)
    m = random_sim3(rng, batch)
    np.testing.assert_allclose(m @ sim3_inverse(m), np.broadcast_to(np.eye(4), m.shape), atol=1e-10)
    np.testing.assert_allclose(sim3_exp(sim3_log(m, 2.0), 2.0), m, atol=1e-10)
    s, r, t = sim3_split(m)
    np.testing.assert_allclose(sim3_from(s, r, t), m, atol=1e-12)


def test_correct_pose_moves_camera_and_scales_depth():
    rng = np.random.default_rng(1)
    corr = random_sim3(rng)
    pose = sim3_from(1.0, Rotation.random(random_state=2).as_matrix(), np.array([1.0, 2.0, 3.0]))
    new, s = correct_pose(corr, pose)
    # A point at depth d along the camera's axis lands where the corrected camera sees it at s*d.
    x_world = pose @ np.array([0.1, -0.2, 2.0, 1.0])
    x_corr = corr @ x_world
    x_cam_new = sim3_inverse(new) @ x_corr
    np.testing.assert_allclose(x_cam_new[:3], s * np.array([0.1, -0.2, 2.0]), atol=1e-10)
    np.testing.assert_allclose(new[:3, :3] @ new[:3, :3].T, np.eye(3), atol=1e-12)


def circle(n: int) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rot = Rotation.from_rotvec(np.stack([np.zeros(n), a, np.zeros(n)], 1)).as_matrix()
    return sim3_from(np.ones(n), rot, np.stack([5 * np.sin(a), np.zeros(n), 5 * np.cos(a)], 1))


NOISE = EdgeNoise(0.005, 0.2, 0.005)


def drifted_graph(n=120, seed=0, noise=NOISE):
    rng = np.random.default_rng(seed)
    gt = circle(n)
    odo = []
    for k in range(n - 1):
        z = sim3_inverse(gt[k]) @ gt[k + 1]
        err = np.concatenate(
            [rng.normal(0, 0.005, 1), rng.normal(0, 0.004, 3), rng.normal(0, 0.005, 3)]
        )
        odo.append(z @ sim3_exp(err))
    est = [gt[0]]
    for z in odo:
        est.append(est[-1] @ z)
    g = PoseGraph(length=1.0, huber=3.0)
    for e in est:
        g.add_node(e)
    for k, z in enumerate(odo):
        g.add_edge(k, k + 1, z, noise)
    return g, gt


def position_rmse(nodes, gt) -> float:
    return float(np.sqrt(np.mean([np.sum((a[:3, 3] - b[:3, 3]) ** 2) for a, b in zip(nodes, gt)])))


def test_sequential_only_graph_is_already_optimal():
    g, _ = drifted_graph()
    before = [n.copy() for n in g.nodes]
    res = g.optimize()
    assert res.initial_cost < 1e-12
    np.testing.assert_allclose(np.stack(g.nodes), np.stack(before), atol=1e-9)


def test_true_loop_removes_most_drift_and_keeps_the_gauge():
    g, gt = drifted_graph()
    before = position_rmse(g.nodes, gt)
    first = g.nodes[0].copy()
    g.add_edge(
        0, len(gt) - 1, sim3_inverse(gt[0]) @ gt[-1], EdgeNoise(0.005, 0.2, 0.005), loop=True
    )
    res = g.optimize(30)
    after = position_rmse(g.nodes, gt)
    assert before > 0.2  # the planted drift is real
    assert after < 0.5 * before
    assert res.final_cost < res.initial_cost
    np.testing.assert_array_equal(g.nodes[0], first)


def test_false_loop_is_pruned_and_does_not_bend_the_map():
    g_ok, gt = drifted_graph()
    g_ok.add_edge(
        0, len(gt) - 1, sim3_inverse(gt[0]) @ gt[-1], EdgeNoise(0.005, 0.2, 0.005), loop=True
    )
    g_ok.optimize(30)
    g, _ = drifted_graph()
    g.add_edge(
        0, len(gt) - 1, sim3_inverse(gt[0]) @ gt[-1], EdgeNoise(0.005, 0.2, 0.005), loop=True
    )
    bad = g.add_edge(
        30,
        90,
        sim3_exp(np.array([0.3, 0.5, 0.0, 0.0, 2.0, 0.0, 0.0])),
        EdgeNoise(0.005, 0.2, 0.005),
        loop=True,
    )
    _, dropped = g.optimize_pruned(prune=8.0, iterations=30)
    assert dropped == [bad]
    assert g.loop_edges == [g.num_edges - 2]
    np.testing.assert_allclose(position_rmse(g.nodes, gt), position_rmse(g_ok.nodes, gt), atol=1e-6)


def test_edge_needs_existing_distinct_nodes():
    g = PoseGraph()
    g.add_node(np.eye(4))
    with pytest.raises(ValueError, match="distinct existing"):
        g.add_edge(0, 1, np.eye(4), EdgeNoise())


def test_nodes_below_fixed_below_do_not_move():
    g, gt = drifted_graph()
    before = [n.copy() for n in g.nodes]
    g.add_edge(40, len(gt) - 1, sim3_inverse(gt[40]) @ gt[-1], NOISE, loop=True)
    res = g.optimize(30, fixed_below=41)
    assert res.final_cost < res.initial_cost
    np.testing.assert_array_equal(np.stack(g.nodes[:41]), np.stack(before[:41]))
    assert np.abs(np.stack(g.nodes[41:]) - np.stack(before[41:])).max() > 1e-3
