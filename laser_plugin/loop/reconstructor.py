"""Streaming reconstruction with loop closure, in bounded memory.

:class:`LoopClosingReconstructor` is a :class:`~laser_plugin.engine.StreamingReconstructor` whose
windows also feed a place-recognition index and a Sim(3) pose graph:

1. every window becomes a graph node (the raw pose of its first finalised frame) joined to the
   previous one by the stream's own registration;
2. its keyframes' global descriptors (``WindowPrediction.descriptors``) go into a
   :class:`~laser_plugin.loop.index.KeyframeIndex`; images and estimates go to disk;
3. the most similar keyframe of a window at least ``min_gap_windows`` back is verified
   (:mod:`laser_plugin.loop.verify`: one model call on candidate + current keyframes, two
   registrations, co-visibility); an accepted loop becomes a robust loop edge and the graph is
   optimised (:mod:`laser_plugin.loop.posegraph`);
4. frames emitted earlier whose correction moved them are re-read from disk, corrected and sent
   to the sinks' ``on_correction(frames)``; new frames are emitted already corrected.

The engine underneath keeps working in its own uncorrected ("raw") world, so registration of
consecutive windows is untouched; corrections are per-window Sim(3)s from raw to corrected.
RAM per window: a node, an edge and K float16 descriptors (~1 KB); everything else spills.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from laser_plugin.config import LaserConfig
from laser_plugin.engine import StreamingReconstructor
from laser_plugin.geometry.sanitize import sanitize_prediction
from laser_plugin.loop.config import LoopConfig
from laser_plugin.loop.index import KeyframeIndex
from laser_plugin.loop.posegraph import EdgeNoise, PoseGraph
from laser_plugin.loop.sim3np import correct_pose, sim3_inverse, sim3_split
from laser_plugin.loop.verify import FrameEstimates, verify_loop
from laser_plugin.prepare import rank_normalise
from laser_plugin.spill import RecordLog, SpillStore
from laser_plugin.types import (
    ReconstructedFrame,
    ReconstructionModel,
    WindowPrediction,
    WindowStats,
)


class LoopEvent(NamedTuple):
    """One verified candidate."""

    window: int
    candidate: int
    similarity: float
    accepted: bool
    reason: str
    covisibility: float
    current_frames: tuple[int, ...] = ()
    """Keyframes of the current window that were verified."""
    candidate_frames: tuple[int, ...] = ()
    """Keyframes of the candidate window."""


class LoopClosingReconstructor(StreamingReconstructor):
    """LASER plus loop closure; same ``run`` API, sinks may add ``on_correction(frames)``."""

    def __init__(
        self,
        model: ReconstructionModel,
        config: LaserConfig | None = None,
        loop: LoopConfig | None = None,
        *,
        keep_source_images: bool = True,
        input_size: tuple[int, int] | None = None,
    ):
        super().__init__(
            model, config, keep_source_images=keep_source_images, input_size=input_size
        )
        self.loop_config = (loop or LoopConfig()).validate()
        self.events: deque[LoopEvent] = deque(maxlen=1000)
        self.counts = {
            "candidates": 0,
            "accepted": 0,
            "rejected": 0,
            "pruned": 0,
            "corrected_frames": 0,
        }
        self.loop_timings = {
            "spill": 0.0,
            "detection": 0.0,
            "verification": 0.0,
            "optimisation": 0.0,
            "correction": 0.0,
        }
        self.rejections: dict[str, int] = {}
        self._stores: list[SpillStore] = []

    # -- public ------------------------------------------------------------------------------
    def run(
        self, source: str | Path | Iterable, sinks: Sequence = (), **kw
    ) -> Iterator[ReconstructedFrame]:
        """As :meth:`StreamingReconstructor.run`; sinks with ``on_correction`` get re-emitted frames."""
        self._reset_loop_state(sinks)
        yield from super().run(source, sinks, **kw)

    @property
    def enabled(self) -> bool:
        """False once a window came without descriptors (the backend cannot recognise places)."""
        return self._enabled

    def correction(self, window: int) -> np.ndarray:
        """Current (4, 4) Sim(3) correction of a window's frames (raw world -> corrected world)."""
        node = self._node_of.get(window)
        if node is None:
            return np.eye(4)
        return self._graph.nodes[node] @ sim3_inverse(self._raw[node])

    def uncorrected_trajectory(self) -> tuple[np.ndarray, np.ndarray]:
        """(frame indices (N,), camera-to-world (N, 4, 4)) as plain LASER gave them (no loop)."""
        if not len(self._log):
            return np.zeros(0, np.int64), np.zeros((0, 4, 4))
        rows = self._log.read()
        out = np.tile(np.eye(4), (len(rows), 1, 1))
        out[:, :3, :] = rows[:, 2:].reshape(-1, 3, 4)
        return rows[:, 0].astype(np.int64), out

    def corrected_trajectory(self) -> tuple[np.ndarray, np.ndarray]:
        """(frame indices (N,), corrected camera-to-world (N, 4, 4)) of every frame emitted so far."""
        if not len(self._log):
            return np.zeros(0, np.int64), np.zeros((0, 4, 4))
        rows = self._log.read()
        idx = rows[:, 0].astype(np.int64)
        out = np.tile(np.eye(4), (len(rows), 1, 1))
        out[:, :3, :] = rows[:, 2:].reshape(-1, 3, 4)
        for win in np.unique(rows[:, 1]).astype(int):
            sel = rows[:, 1] == win
            s, r, t = sim3_split(self.correction(int(win)))
            out[sel, :3, 3] = s * out[sel, :3, 3] @ r.T + t
            out[sel, :3, :3] = r @ out[sel, :3, :3]
        return idx, out

    def cleanup(self) -> None:
        """Delete what this reconstructor spilled to disk."""
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log.path.unlink(missing_ok=True)
        for s in self._stores:
            s.cleanup()
        self._stores = []

    # -- per window --------------------------------------------------------------------------
    def _reset_loop_state(self, sinks: Sequence) -> None:
        self.cleanup()
        cfg = self.loop_config
        self._sinks = list(sinks)
        self._enabled = True
        self._graph: PoseGraph | None = None
        self._raw: list[np.ndarray] = []
        self._emitted: list[np.ndarray] = []
        self._node_of: dict[int, int] = {}
        self._node_frames: list[tuple[int, int]] = []
        self._index = KeyframeIndex()
        self._frames = SpillStore(cfg.spill_dir, "frames")
        self._keyframes = SpillStore(self._frames.dir.parent, "keyframes")
        self._stores = [self._frames, self._keyframes]
        # Per frame (index, window, raw pose 3x4) on disk: nothing per frame stays in RAM.
        self._log = RecordLog(self._frames.dir.parent, "poses", 14)
        self._cooldown_until = 0
        self._seq_noise = EdgeNoise(cfg.seq_scale, cfg.seq_rotation_deg, cfg.seq_translation)
        self._loop_noise = EdgeNoise(cfg.loop_scale, cfg.loop_rotation_deg, cfg.loop_translation)

    def process_window(self, window) -> tuple[list[ReconstructedFrame], WindowStats]:
        t0 = time.perf_counter()
        pred = self.predict(window)
        times: dict[str, float] = {}
        self._timed("model", t0, times)
        finals, stats = self.align(window, pred, times)
        # In "later" mode the window also builds the frames it holds back; all get corrected.
        ids = {id(f) for f in finals}
        held = getattr(self, "_held", [])
        built = finals + [f for f in held if f.window == window.index and id(f) not in ids]
        if not built or not getattr(self, "_enabled", False):
            return finals, stats
        if pred.descriptors is None:
            # "On when the backend provides descriptors": without them, plain LASER, silently
            # (``enabled`` tells, and ``laser run`` reports it).
            self._enabled = False
            return finals, stats
        self._add_window(window, pred, built, times)
        # New frames leave already corrected (their window's correction follows the last loop).
        corr = self.correction(window.index)
        self._emitted[self._node_of[window.index]] = corr
        for f in built:
            _correct_in_place(f, corr)
        return finals, stats

    def _add_window(
        self, window, pred: WindowPrediction, built: list[ReconstructedFrame], times: dict
    ) -> None:
        cfg = self.loop_config
        t = time.perf_counter()
        k = window.index
        anchor = built[0].cam_to_world.copy()
        if self._graph is None:
            med = (
                float(np.median(built[0].depth[built[0].depth > 0]))
                if (built[0].depth > 0).any()
                else 1.0
            )
            self._graph = PoseGraph(length=med, huber=cfg.huber)
        g = self._graph
        if self._raw:
            prev = len(self._raw) - 1
            corr_prev = g.nodes[prev] @ sim3_inverse(self._raw[prev])
            node = g.add_node(corr_prev @ anchor)
            g.add_edge(prev, node, sim3_inverse(self._raw[prev]) @ anchor, self._seq_noise)
        else:
            node = g.add_node(anchor)
        self._raw.append(anchor)
        self._emitted.append(np.eye(4))
        self._node_of[k] = node
        # "later" mode rebuilds the frames the previous window held back: they are this
        # window's now (the trailing entries of the log and of the previous node's range).
        while len(self._log) and self._log.last()[0] >= built[0].index:
            self._log.truncate(len(self._log) - 1)
        if self._node_frames:
            first, last = self._node_frames[-1]
            self._node_frames[-1] = (first, min(last, built[0].index - 1))
        self._node_frames.append((built[0].index, built[-1].index))
        for f in built:
            self._frames.put(
                f.index, image=f.image, depth=f.depth.astype(np.float16),
                conf=(np.clip(f.conf, 0, 1) * 255 + 0.5).astype(np.uint8),
                layers=f.layers if f.layers is not None else np.zeros(0, np.int16),
                layer_scales=f.layer_scales if f.layer_scales is not None else np.zeros(0, np.float32),
                meta=np.array([f.timestamp, f.window]), cam_to_world=f.cam_to_world, intrinsics=f.intrinsics,
            )  # fmt: skip
            self._log.append(np.concatenate([[f.index, k], f.cam_to_world[:3].ravel()]))
        t = self._loop_timed("spill", t, times)

        # Keyframes: K frames spread over the frames this window finalises.
        pos = {it.index: j for j, it in enumerate(window.items)}
        new = [f for f in built if f.index in pos]
        count = min(cfg.keyframes_per_window, len(new))
        pick = np.unique(np.linspace(0, len(new) - 1, count).round().astype(int))
        kf = [new[p] for p in pick]
        desc = pred.descriptors.detach().float().cpu().numpy()[[pos[f.index] for f in kf]]
        t = self._loop_timed("detection", t, times)

        candidate = None
        if k >= self._cooldown_until:
            candidate = self._index.query(desc, k - cfg.min_gap_windows, cfg.min_similarity)
        self._index.add(k, np.array([f.index for f in kf]), desc)
        t = self._loop_timed("detection", t, times)
        self._keyframes.put(
            k, images=np.stack([f.image for f in kf]), depth=np.stack([f.depth for f in kf]).astype(np.float16),
            conf=np.stack([(np.clip(f.conf, 0, 1) * 255 + 0.5).astype(np.uint8) for f in kf]),
            cam_to_world=np.stack([f.cam_to_world for f in kf]), intrinsics=np.stack([f.intrinsics for f in kf]),
            frames=np.array([f.index for f in kf]),
        )  # fmt: skip
        t = self._loop_timed("spill", t, times)
        if candidate is None:
            return
        self.counts["candidates"] += 1
        current = _estimates(
            np.stack([f.depth for f in kf]), np.stack([f.conf for f in kf]),
            np.stack([f.cam_to_world for f in kf]), np.stack([f.intrinsics for f in kf]), self.config,
        )  # fmt: skip
        tensors = [window.items[pos[f.index]].tensor for f in kf]
        result = self._verify(candidate.window, k, current, tensors)
        t = self._loop_timed("verification", t, times)
        frames_q = tuple(f.index for f in kf)
        frames_c = tuple(int(i) for i in self._keyframes.get(candidate.window)["frames"])

        def event(accepted: bool, reason: str) -> LoopEvent:
            return LoopEvent(k, candidate.window, candidate.similarity, accepted, reason, result.covisibility,
                             frames_q, frames_c)  # fmt: skip

        if not result.accepted:
            self._record(event(False, result.reason))
            return
        m = self._node_of[candidate.window]
        z = sim3_inverse(self._raw[m]) @ result.correction @ anchor
        edge = g.add_edge(m, node, z, self._loop_noise, loop=True)
        if g.edge_residuals()[edge] <= 1.0:
            # Already consistent (within one sigma): keep the edge, skip the solve and the
            # re-emission, which keeps a many-lap stream from re-optimising at every revisit.
            self._record(event(True, ""))
            self._cooldown_until = k + 1 + cfg.cooldown_windows
            return
        # Nodes older than the loop's far end stay fixed (see PoseGraph.optimize).
        _, dropped = g.optimize_pruned(cfg.prune, cfg.iterations, fixed_below=m + 1)
        t = self._loop_timed("optimisation", t, times)
        self.counts["pruned"] += len(dropped)
        ok = edge not in dropped
        reason = "" if ok else "inconsistent with the pose graph after optimisation"
        self._record(event(ok, reason))
        if ok:
            self._cooldown_until = k + 1 + cfg.cooldown_windows
        self._reemit(exclude=node)
        self._loop_timed("correction", t, times)

    def _verify(
        self, cand_window: int, window: int, current: FrameEstimates, tensors: list[torch.Tensor]
    ):
        rec = self._keyframes.get(cand_window)
        candidate = _estimates(
            rec["depth"].astype(np.float32), rec["conf"].astype(np.float32) / 255.0,
            rec["cam_to_world"], rec["intrinsics"], self.config,
        )  # fmt: skip
        imgs = torch.from_numpy(rec["images"]).permute(0, 3, 1, 2).float().div(255.0)
        images = torch.cat([imgs, torch.stack(tensors)])
        with torch.inference_mode():
            pred = self.model(images)
            if not isinstance(pred, WindowPrediction):
                raise TypeError(f"model returned {type(pred).__name__}, expected WindowPrediction")
            pred.validate(len(images))
            depth, conf, poses, intr, _ = sanitize_prediction(pred.to(self.device))
            valid = depth > 0
            confident = valid & (rank_normalise(conf, valid) >= 1.0 - self.config.top_conf_fraction)
            joint = FrameEstimates(depth, confident, poses, intr)
            dev = self.device
            return verify_loop(
                FrameEstimates(*(x.to(dev) for x in candidate)), FrameEstimates(*(x.to(dev) for x in current)),
                joint, self.loop_config, self.config.registration, self.config.huber_delta, self.config.irls_iterations,
                candidate_correction=self.correction(cand_window), current_correction=self.correction(window),
            )  # fmt: skip

    def _reemit(self, exclude: int) -> None:
        """Send every earlier frame whose correction changed to the sinks, in bounded chunks."""
        cfg = self.loop_config
        length = self._graph.length
        chunk: list[ReconstructedFrame] = []
        for node in range(exclude):
            corr = self.correction(self._window_of(node))
            delta = corr @ sim3_inverse(self._emitted[node])
            s, r, _ = sim3_split(delta)
            c = self._raw[node][:3, 3]
            c_old = (self._emitted[node] @ np.append(c, 1.0))[:3]
            move = np.linalg.norm((delta @ np.append(c_old, 1.0))[:3] - c_old) / length
            angle = np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))
            if max(move, angle, abs(np.log(s))) <= cfg.reemit_tolerance:
                continue
            self._emitted[node] = corr
            first, last = self._node_frames[node]
            for i in range(first, last + 1):
                if i in self._frames:
                    chunk.append(self._load_frame(i, corr))
                if len(chunk) >= cfg.correction_chunk:
                    self._send(chunk)
                    chunk = []
        if chunk:
            self._send(chunk)

    def _window_of(self, node: int) -> int:
        # Nodes are added in window order, one per window: the inverse map is a lookup.
        if not hasattr(self, "_window_by_node") or len(self._window_by_node) != len(self._node_of):
            self._window_by_node = {v: w for w, v in self._node_of.items()}
        return self._window_by_node[node]

    def _send(self, frames: list[ReconstructedFrame]) -> None:
        self.counts["corrected_frames"] += len(frames)
        self._sinks = self._emit(self._sinks, "on_correction", frames)

    def _load_frame(self, index: int, corr: np.ndarray) -> ReconstructedFrame:
        rec = self._frames.get(index)
        frame = ReconstructedFrame(
            index=index,
            timestamp=float(rec["meta"][0]),
            image=rec["image"],
            cam_to_world=rec["cam_to_world"],
            intrinsics=rec["intrinsics"],
            depth=rec["depth"].astype(np.float32),
            conf=rec["conf"].astype(np.float32) / 255.0,
            window=int(rec["meta"][1]),
            layers=rec["layers"] if rec["layers"].size else None,
            layer_scales=rec["layer_scales"] if rec["layers"].size else None,
            extras={"corrected": True},
        )
        _correct_in_place(frame, corr)
        return frame

    def _record(self, event: LoopEvent) -> None:
        self.events.append(event)
        self.counts["accepted" if event.accepted else "rejected"] += 1
        if not event.accepted:  # by the reason's first words ("co-visibility", "pose residual")
            key = " ".join(event.reason.split(" ")[:2])
            self.rejections[key] = self.rejections.get(key, 0) + 1

    def _loop_timed(self, name: str, start: float, times: dict) -> float:
        now = time.perf_counter()
        self.loop_timings[name] += now - start
        key = f"loop_{name}"
        times[key] = times.get(key, 0.0) + now - start
        self.timings[key] = self.timings.get(key, 0.0) + now - start
        return now


def _correct_in_place(frame: ReconstructedFrame, corr: np.ndarray) -> None:
    pose, s = correct_pose(corr, frame.cam_to_world)
    frame.cam_to_world = pose
    if s != 1.0:
        frame.depth = (frame.depth * np.float32(s)).astype(np.float32)


def _estimates(depth, conf, poses, intr, config: LaserConfig) -> FrameEstimates:
    d = torch.as_tensor(np.asarray(depth, np.float32))
    c = torch.as_tensor(np.asarray(conf, np.float32))
    return FrameEstimates(
        d,
        (d > 0) & (c >= 1.0 - config.top_conf_fraction),
        torch.as_tensor(np.asarray(poses, np.float32)),
        torch.as_tensor(np.asarray(intr, np.float32)),
    )


__all__ = ["LoopClosingReconstructor", "LoopConfig", "LoopEvent"]
