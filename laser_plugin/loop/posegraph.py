"""A Sim(3) pose graph over windows, optimised by Levenberg-Marquardt with a robust kernel.

Nodes are windows: node ``k`` is the (uncorrected, "raw") world pose of an anchor camera of
window ``k`` as a Sim(3) of scale 1. Edges are relative Sim(3) measurements ``Z_ij ≈ T_i^-1 T_j``:
sequential edges from the stream's own window-to-window registration, loop edges from verified
revisits. The residual of an edge is ``log(Z_ij^-1 T_i^-1 T_j)`` in the local coordinates of
:func:`~laser_plugin.loop.sim3np.sim3_log` (log scale, rotation vector, translation over a
length), whitened by per-edge standard deviations.

Why our own solver on ``scipy.sparse`` rather than pypose or theseus: the problem is tiny (7
unknowns per window: a 20,000-frame stream has ~1,300 windows) and sparse (block-tridiagonal
plus a few loop edges), so a sparse direct solve takes milliseconds on the CPU; we need exactly
one manifold, a fixed gauge node and a robust kernel on loop edges only, about 150 lines with
numpy/scipy (already dependencies), while pypose or theseus would add a heavy dependency pinned
to torch versions for a CPU-side job. The Jacobians are central differences of the batched
residual (28 batched evaluations per iteration), which avoids hand-derived Sim(3) adjoints that
would need their own tests; their accuracy (~1e-8) is far below the measurement noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from laser_plugin.loop.sim3np import sim3_exp, sim3_inverse, sim3_log


@dataclass
class EdgeNoise:
    """Standard deviations of one edge's residual (what 1 sigma means)."""

    scale: float = 0.01
    """Std of the log relative scale."""
    rotation_deg: float = 0.5
    """Std of the relative rotation, degrees."""
    translation: float = 0.01
    """Std of the relative translation, as a fraction of the graph's length unit."""

    def sqrt_info(self) -> np.ndarray:
        """(7,) whitening factors."""
        r = np.radians(self.rotation_deg)
        return 1.0 / np.array(
            [self.scale, r, r, r, self.translation, self.translation, self.translation]
        )


@dataclass
class OptimizeResult:
    initial_cost: float
    final_cost: float
    iterations: int
    loop_residuals: dict[int, float] = field(default_factory=dict)
    """Edge id -> whitened residual norm of each loop edge after optimisation."""


class PoseGraph:
    """Sim(3) nodes (4x4, float64) and relative-Sim(3) edges; node 0 fixes the gauge."""

    def __init__(self, length: float = 1.0, huber: float = 2.0):
        self.length = float(length)
        """Length unit of translation residuals (e.g. the scene's median depth)."""
        self.huber = float(huber)
        """Huber threshold on the whitened residual norm of loop edges."""
        self.nodes: list[np.ndarray] = []
        self._i: list[int] = []
        self._j: list[int] = []
        self._z: list[np.ndarray] = []
        self._w: list[np.ndarray] = []
        self._loop: list[bool] = []
        self._active: list[bool] = []

    # -- building ----------------------------------------------------------------------------
    def add_node(self, pose: np.ndarray) -> int:
        self.nodes.append(np.asarray(pose, dtype=np.float64).copy())
        return len(self.nodes) - 1

    def add_edge(
        self, i: int, j: int, measurement: np.ndarray, noise: EdgeNoise, loop: bool = False
    ) -> int:
        """Constraint ``T_i^-1 T_j ≈ measurement``; returns the edge id."""
        if not (0 <= i < len(self.nodes) and 0 <= j < len(self.nodes)) or i == j:
            raise ValueError(f"edge ({i}, {j}) needs two distinct existing nodes")
        self._i.append(i)
        self._j.append(j)
        self._z.append(np.asarray(measurement, dtype=np.float64).copy())
        self._w.append(noise.sqrt_info())
        self._loop.append(loop)
        self._active.append(True)
        return len(self._i) - 1

    def deactivate(self, edge: int) -> None:
        """Drop an edge from future optimisations (a loop that proved inconsistent)."""
        self._active[edge] = False

    @property
    def num_edges(self) -> int:
        return len(self._i)

    @property
    def loop_edges(self) -> list[int]:
        return [e for e, (lp, a) in enumerate(zip(self._loop, self._active)) if lp and a]

    # -- saving (resume) ---------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Nodes and edges as arrays (``from_arrays`` rebuilds the same graph)."""
        n, e = len(self.nodes), len(self._i)
        return {
            "nodes": np.array(self.nodes, np.float64).reshape(n, 4, 4),
            "i": np.array(self._i, np.int64),
            "j": np.array(self._j, np.int64),
            "z": np.array(self._z, np.float64).reshape(e, 4, 4),
            "w": np.array(self._w, np.float64).reshape(e, 7),
            "loop": np.array(self._loop, np.bool_),
            "active": np.array(self._active, np.bool_),
        }

    @classmethod
    def from_arrays(cls, length: float, huber: float, a: dict[str, np.ndarray]) -> PoseGraph:
        g = cls(length, huber)
        g.nodes = [m.astype(np.float64).copy() for m in a["nodes"]]
        g._i = [int(v) for v in a["i"]]
        g._j = [int(v) for v in a["j"]]
        g._z = [m.astype(np.float64).copy() for m in a["z"]]
        g._w = [m.astype(np.float64).copy() for m in a["w"]]
        g._loop = [bool(v) for v in a["loop"]]
        g._active = [bool(v) for v in a["active"]]
        return g

    # -- residuals ---------------------------------------------------------------------------
    def _arrays(self):
        act = np.flatnonzero(self._active)
        ii = np.asarray(self._i)[act]
        jj = np.asarray(self._j)[act]
        zinv = sim3_inverse(np.stack([self._z[e] for e in act]))
        w = np.stack([self._w[e] for e in act])
        loop = np.asarray(self._loop)[act]
        return act, ii, jj, zinv, w, loop

    def _residual(
        self, ti: np.ndarray, tj: np.ndarray, zinv: np.ndarray, w: np.ndarray
    ) -> np.ndarray:
        """Whitened residuals (E, 7) of edges with node poses ti, tj (E, 4, 4)."""
        return w * sim3_log(zinv @ sim3_inverse(ti) @ tj, self.length)

    def _robust_weights(self, r: np.ndarray, loop: np.ndarray) -> np.ndarray:
        """IRLS weights per edge: Huber on loop edges, 1 (plain least squares) on sequential ones.

        Sequential edges come from the stream's own registration and are the backbone; a wrong
        loop is the failure that ruins a map, so only loop edges get the robust kernel.
        """
        norm = np.linalg.norm(r, axis=1)
        w = np.ones(len(r))
        big = loop & (norm > self.huber)
        w[big] = self.huber / norm[big]
        return w

    def _cost(self, r: np.ndarray, loop: np.ndarray) -> float:
        norm = np.linalg.norm(r, axis=1)
        quad = 0.5 * norm**2
        lin = self.huber * (norm - 0.5 * self.huber)
        return float(np.where(loop & (norm > self.huber), lin, quad).sum())

    def edge_residuals(self) -> np.ndarray:
        """Whitened residual norms of all edges (inactive ones too), (E,)."""
        if not self._i:
            return np.zeros(0)
        t = np.stack(self.nodes)
        zinv = sim3_inverse(np.stack(self._z))
        r = self._residual(t[self._i], t[self._j], zinv, np.stack(self._w))
        return np.linalg.norm(r, axis=1)

    # -- solving -----------------------------------------------------------------------------
    def optimize(
        self, iterations: int = 20, fixed_below: int = 1, tol: float = 1e-9
    ) -> OptimizeResult:
        """Levenberg-Marquardt over the nodes ``>= fixed_below``; updates ``self.nodes`` in place.

        Node 0 always fixes the gauge. A larger ``fixed_below`` (the oldest node a new loop
        reaches) keeps the older map as it is and bounds the cost of one optimisation by the
        loop's length instead of the stream's.
        """
        n = len(self.nodes)
        fixed_below = max(1, int(fixed_below))
        if n < 2 or not any(self._active) or fixed_below >= n:
            return OptimizeResult(0.0, 0.0, 0)
        act, ii, jj, zinv, w, loop = self._arrays()
        touch = (ii >= fixed_below) | (jj >= fixed_below)  # edges between fixed nodes are constant
        act, ii, jj, zinv, w, loop = (
            act[touch],
            ii[touch],
            jj[touch],
            zinv[touch],
            w[touch],
            loop[touch],
        )
        if len(ii) == 0:
            return OptimizeResult(0.0, 0.0, 0)
        t = np.stack(self.nodes)
        r = self._residual(t[ii], t[jj], zinv, w)
        cost = cost0 = self._cost(r, loop)
        lam = 1e-4
        h = 1e-6
        eye7 = np.eye(7)
        steps_p = sim3_exp(h * eye7, self.length)  # (7, 4, 4) right perturbations
        steps_m = sim3_exp(-h * eye7, self.length)
        free = np.arange(n) >= fixed_below
        col_of = np.full(n, -1)
        col_of[free] = np.arange(free.sum())
        it = 0
        while it < iterations:
            it += 1
            # Central-difference Jacobian blocks d r_e / d delta_i and d delta_j, (E, 7, 7) each.
            ji = np.empty((len(ii), 7, 7))
            jj_ = np.empty((len(ii), 7, 7))
            for p in range(7):
                ji[:, :, p] = (
                    self._residual(t[ii] @ steps_p[p], t[jj], zinv, w)
                    - self._residual(t[ii] @ steps_m[p], t[jj], zinv, w)
                ) / (2 * h)
                jj_[:, :, p] = (
                    self._residual(t[ii], t[jj] @ steps_p[p], zinv, w)
                    - self._residual(t[ii], t[jj] @ steps_m[p], zinv, w)
                ) / (2 * h)
            rw = np.sqrt(self._robust_weights(r, loop))
            rows, cols, vals = [], [], []
            base = np.arange(len(ii))[:, None, None] * 7 + np.arange(7)[None, :, None]
            for blocks, nodes in ((ji, ii), (jj_, jj)):
                keep = free[nodes]
                c = col_of[nodes][:, None, None] * 7 + np.arange(7)[None, None, :]
                rows.append(np.broadcast_to(base, blocks.shape)[keep].ravel())
                cols.append(np.broadcast_to(c, blocks.shape)[keep].ravel())
                vals.append((blocks * rw[:, None, None])[keep].ravel())
            jac = sp.csr_matrix(
                (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                shape=(len(ii) * 7, int(free.sum()) * 7),
            )
            rv = (r * rw[:, None]).ravel()
            hess = (jac.T @ jac).tocsc()
            grad = jac.T @ rv
            diag = hess.diagonal()
            improved = False
            for _ in range(10):
                damped = hess + sp.diags(lam * np.maximum(diag, 1e-9))
                delta = -spla.spsolve(damped, grad)
                t_new = t.copy()
                t_new[free] = t[free] @ sim3_exp(delta.reshape(-1, 7), self.length)
                r_new = self._residual(t_new[ii], t_new[jj], zinv, w)
                cost_new = self._cost(r_new, loop)
                if np.isfinite(cost_new) and cost_new <= cost:
                    improved = True
                    lam = max(lam / 3.0, 1e-9)
                    break
                lam *= 4.0
            if not improved:
                break
            done = cost - cost_new <= tol * max(cost, 1e-12) or np.abs(delta).max() < 1e-10
            t, r, cost = t_new, r_new, cost_new
            if done:
                break
        self.nodes = list(t)
        norms = np.linalg.norm(r, axis=1)
        loops = {int(e): float(norms[k]) for k, e in enumerate(act) if loop[k]}
        return OptimizeResult(cost0, cost, it, loops)

    def optimize_pruned(
        self, prune: float, iterations: int = 20, max_rounds: int = 5, fixed_below: int = 1
    ) -> tuple[OptimizeResult, list[int]]:
        """Optimise; while a loop edge keeps a whitened residual above ``prune``, drop the worst
        one and re-optimise from the starting poses. Returns the result and the dropped edges.

        The Huber kernel bounds a wrong loop's pull but does not remove it; a loop that the
        rest of the graph cannot agree with after optimisation is treated as false.
        """
        start = [n.copy() for n in self.nodes]
        dropped: list[int] = []
        for _ in range(max_rounds):
            res = self.optimize(iterations, fixed_below)
            bad = {e: v for e, v in res.loop_residuals.items() if v > prune}
            if not bad:
                return res, dropped
            worst = max(bad, key=bad.get)
            self.deactivate(worst)
            dropped.append(worst)
            self.nodes = [n.copy() for n in start]
        return self.optimize(iterations, fixed_below), dropped
