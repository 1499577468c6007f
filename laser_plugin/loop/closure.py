"""Loop closure as a hook of the streaming engine, in bounded memory.

:class:`LoopClosure` is called by :meth:`StreamingReconstructor.align
<laser_plugin.engine.StreamingReconstructor.align>`, the one place windows are aligned, so every
way of predicting windows (inline, pipelined, replicas per device, worker processes) gets it.
After each aligned window:

1. the window becomes a graph node (the raw pose of its first finalised frame) joined to the
   previous one by the stream's own registration;
2. its keyframes' global descriptors (``WindowPrediction.descriptors``) go into a
   :class:`~laser_plugin.loop.index.KeyframeIndex`; the keyframes' images and estimates go to
   disk, and so do the frames unless a run directory already keeps them (the frame archive,
   :mod:`laser_plugin.loop.archive`);
3. the most similar keyframe of a window at least ``min_gap_windows`` back is verified
   (:mod:`laser_plugin.loop.verify`: one model call on candidate + current keyframes, two
   registrations, co-visibility); an accepted loop becomes a robust loop edge and the graph is
   optimised (:mod:`laser_plugin.loop.posegraph`);
4. frames emitted earlier whose correction moved them are read back from the archive, corrected
   and handed to the run loop (:meth:`corrections`), which sends them to the sinks'
   ``on_correction`` before the window's own frames; new frames leave already corrected.

The engine keeps working in its own uncorrected ("raw") world, so registration of consecutive
windows is untouched; corrections are per-window Sim(3)s from raw to corrected. RAM per window:
a node, an edge and K float16 descriptors (~1 KB); everything else is on disk (per frame, a row
of the pose log: index, window, raw pose, timestamp, intrinsics). :meth:`capture` and
:meth:`restore` carry the state through a resume (the spilled records stay on disk, in
``LoopConfig.spill_dir``, which a resumable run must therefore keep).
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from laser_plugin.errors import OutputError
from laser_plugin.geometry.sanitize import sanitize_prediction
from laser_plugin.loop.archive import FrameArchive, SpilledFrames
from laser_plugin.loop.config import LoopConfig
from laser_plugin.loop.index import KeyframeIndex
from laser_plugin.loop.posegraph import EdgeNoise, PoseGraph
from laser_plugin.loop.sim3np import correct_pose, sim3_inverse, sim3_split
from laser_plugin.loop.verify import FrameEstimates, verify_loop
from laser_plugin.prepare import rank_normalise
from laser_plugin.spill import RecordLog, SpillStore
from laser_plugin.types import ReconstructedFrame, WindowPrediction

if TYPE_CHECKING:
    from laser_plugin.config import LaserConfig


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


_LOG_WIDTH = 24
"""A pose-log row: frame index, window, raw camera-to-world (3x4), timestamp, intrinsics (3x3)."""
_COUNTS = ("candidates", "accepted", "rejected", "pruned", "corrected_frames")
_TIMINGS = ("spill", "detection", "verification", "optimisation", "correction")


class LoopClosure:
    """The loop-closure hook (see module doc). ``name`` keys its part of a resume state."""

    name = "loop"

    def __init__(self, loop: LoopConfig | None = None, archive: FrameArchive | None = None):
        """``archive``: where emitted frames are found again after a loop moved them (a run
        directory's, :class:`~laser_plugin.loop.archive.RunDirFrames`); None spills them."""
        self.config = (loop or LoopConfig()).validate()
        self._archive = archive
        self._stores: list[SpillStore] = []
        self._log: RecordLog | None = None
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.events: deque[LoopEvent] = deque(maxlen=1000)
        self.counts = dict.fromkeys(_COUNTS, 0)
        self.loop_timings = dict.fromkeys(_TIMINGS, 0.0)
        self.rejections: dict[str, int] = {}

    def settings(self) -> dict[str, Any]:
        """What changes the result (for the resume fingerprint): every setting but where to spill."""
        out = dataclasses.asdict(self.config)
        out.pop("spill_dir", None)
        return out

    # -- stream ------------------------------------------------------------------------------
    def start(self, state: dict[str, Any] | None = None) -> None:
        """Reset for a new stream, or (``state`` from :meth:`capture`) continue a saved one."""
        if state is None:
            self.cleanup()
        else:  # the spilled records are the saved stream's: keep them
            if self._log is not None:
                self._log.close()
            self._log, self._stores = None, []
        self._reset_counters()
        cfg = self.config
        self._enabled = True
        self._graph: PoseGraph | None = None
        self._raw: list[np.ndarray] = []
        self._emitted: list[np.ndarray] = []
        self._node_of: dict[int, int] = {}
        self._window_by_node: dict[int, int] = {}
        self._node_frames: list[tuple[int, int]] = []
        self._index = KeyframeIndex()
        self._cooldown_until = 0
        # Until a loop moves the graph, every correction is exactly the identity: a stream without
        # loops then gives the plain engine's frames bit for bit (not up to Sim(3) round-off).
        self._moved = False
        self._pending: dict[int, None] = {}  # nodes whose frames wait to be re-emitted, in order
        self._seq_noise = EdgeNoise(cfg.seq_scale, cfg.seq_rotation_deg, cfg.seq_translation)
        self._loop_noise = EdgeNoise(cfg.loop_scale, cfg.loop_rotation_deg, cfg.loop_translation)
        if state is not None and cfg.spill_dir is None:
            raise OutputError(
                "cannot resume loop closure: its records were spilled to a temporary directory "
                "(set LoopConfig.spill_dir to a kept directory)"
            )
        if state is not None and state["meta"].get("log_width") != _LOG_WIDTH:
            raise OutputError(
                "cannot resume loop closure: its saved state was written by an older version "
                "(start the run again without --resume)"
            )
        # Kept beside a run's own files (a resumable run): compressed, as the run's are, and
        # flat ("loop-keyframes-KEY.npz"): a run directory's state/ holds files only.
        # Written by a thread of their own, so that alignment does not wait for the encoder.
        kept = cfg.spill_dir is not None
        self._keyframes = SpillStore(
            cfg.spill_dir, "loop-keyframes", compress=kept, flat=True, background=True
        )
        root = self._keyframes.dir  # (owns the temporary directory when spill_dir is None)
        self._stores = [self._keyframes]
        self._frames: FrameArchive
        if self._archive is not None:
            self._frames = self._archive
        else:
            spilled = SpilledFrames(root, compress=kept)
            self._frames = spilled
            self._stores.insert(0, spilled.store)
        # Per frame, a row of the pose log on disk: nothing per frame stays in RAM.
        keep = None if state is None else int(state["meta"]["log_rows"])
        self._log = RecordLog(root, "loop-poses", _LOG_WIDTH, keep=keep)
        if state is not None:
            self._restore(state)

    @property
    def enabled(self) -> bool:
        """False once a window came without descriptors (the backend cannot recognise places)."""
        return getattr(self, "_enabled", True)

    def correction(self, window: int) -> np.ndarray:
        """Current (4, 4) Sim(3) correction of a window's frames (raw world -> corrected world)."""
        node = self._node_of.get(window)
        if node is None or not self._moved:
            return np.eye(4)
        return self._graph.nodes[node] @ sim3_inverse(self._raw[node])

    def uncorrected_trajectory(self) -> tuple[np.ndarray, np.ndarray]:
        """(frame indices (N,), camera-to-world (N, 4, 4)) as plain LASER gave them (no loop)."""
        if self._log is None or not len(self._log):
            return np.zeros(0, np.int64), np.zeros((0, 4, 4))
        rows = self._log.read()
        out = np.tile(np.eye(4), (len(rows), 1, 1))
        out[:, :3, :] = rows[:, 2:14].reshape(-1, 3, 4)
        return rows[:, 0].astype(np.int64), out

    def corrected_trajectory(self) -> tuple[np.ndarray, np.ndarray]:
        """(frame indices (N,), corrected camera-to-world (N, 4, 4)) of every frame emitted so far."""
        if self._log is None or not len(self._log):
            return np.zeros(0, np.int64), np.zeros((0, 4, 4))
        rows = self._log.read()
        idx = rows[:, 0].astype(np.int64)
        out = np.tile(np.eye(4), (len(rows), 1, 1))
        out[:, :3, :] = rows[:, 2:14].reshape(-1, 3, 4)
        for win in np.unique(rows[:, 1]).astype(int):
            sel = rows[:, 1] == win
            s, r, t = sim3_split(self.correction(int(win)))
            out[sel, :3, 3] = s * out[sel, :3, 3] @ r.T + t
            out[sel, :3, :3] = r @ out[sel, :3, :3]
        return idx, out

    def disk_bytes(self) -> int:
        """Bytes this hook has spilled to disk (keyframes, and frames where it keeps them)."""
        return sum(store.disk_bytes() for store in self._stores)

    def cleanup(self) -> None:
        """Delete what this hook spilled to disk."""
        if self._log is not None:
            self._log.close()
            self._log.path.unlink(missing_ok=True)
            self._log = None
        for s in self._stores:  # the keyframes' store (last) may own the temporary directory
            s.cleanup()
        self._stores = []

    # -- per window --------------------------------------------------------------------------
    def after_window(
        self,
        window,
        descriptors: torch.Tensor | None,
        built: list[ReconstructedFrame],
        times: dict[str, float],
        engine,
    ) -> None:
        """Add an aligned window (``built``: every frame it finalised, also those "later" mode
        holds back) and correct those frames in place; may queue re-emissions (:meth:`corrections`)."""
        if not built or not self._enabled:
            return
        if descriptors is None:
            # "On when the backend provides descriptors": without them, plain LASER (``enabled``
            # tells, and ``laser run`` reports it).
            self._enabled = False
            return
        self._add_window(window, descriptors, built, times, engine)
        # New frames leave already corrected (their window's correction follows the last loop).
        corr = self.correction(window.index)
        self._emitted[self._node_of[window.index]] = corr
        if self._moved:
            for f in built:
                _correct_in_place(f, corr)

    def has_corrections(self) -> bool:
        """Whether :meth:`corrections` has frames to give (the run loop then first hands the
        sinks every frame emitted so far: a run directory archive reads them back)."""
        return bool(self._pending)

    def corrections(self) -> Iterator[list[ReconstructedFrame]]:
        """Earlier frames a loop moved, corrected, in chunks of ``correction_chunk`` (read from
        disk lazily, so memory stays bounded); the run loop sends them before the window's frames."""
        pending, self._pending = list(self._pending), {}
        if not pending or self._log is None:
            return
        self._frames.flush()
        rows = self._log.read()  # (frames so far, 24): transient, ~200 bytes a frame
        chunk: list[ReconstructedFrame] = []
        for node in pending:
            corr = self.correction(self._window_by_node[node])
            first, last = self._node_frames[node]
            lo, hi = np.searchsorted(rows[:, 0], [first, last + 0.5])
            for row in rows[lo:hi]:
                frame = self._load_frame(row, corr)
                if frame is not None:
                    chunk.append(frame)
                if len(chunk) >= self.config.correction_chunk:
                    self.counts["corrected_frames"] += len(chunk)
                    yield chunk
                    chunk = []
        if chunk:
            self.counts["corrected_frames"] += len(chunk)
            yield chunk

    def _add_window(self, window, descriptors, built, times: dict, engine) -> None:
        cfg = self.config
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
            corr_prev = self.correction(self._window_by_node[prev])
            node = g.add_node(corr_prev @ anchor)
            g.add_edge(prev, node, sim3_inverse(self._raw[prev]) @ anchor, self._seq_noise)
        else:
            node = g.add_node(anchor)
        self._raw.append(anchor)
        self._emitted.append(np.eye(4))
        self._node_of[k] = node
        self._window_by_node[node] = k
        # "later" mode rebuilds the frames the previous window held back: they are this
        # window's now (the trailing entries of the log and of the previous node's range).
        while len(self._log) and self._log.last()[0] >= built[0].index:
            self._log.truncate(len(self._log) - 1)
        if self._node_frames:
            first, last = self._node_frames[-1]
            self._node_frames[-1] = (first, min(last, built[0].index - 1))
        self._node_frames.append((built[0].index, built[-1].index))
        for f in built:
            self._spill(self._frames.put, f.index, f)
            self._log.append(
                np.concatenate(
                    [[f.index, k], f.cam_to_world[:3].ravel(), [f.timestamp], f.intrinsics.ravel()]
                )
            )
        t = self._timed("spill", t, times, engine)

        # Keyframes: K frames spread over the frames this window finalises.
        pos = {it.index: j for j, it in enumerate(window.items)}
        new = [f for f in built if f.index in pos]
        count = min(cfg.keyframes_per_window, len(new))
        pick = np.unique(np.linspace(0, len(new) - 1, count).round().astype(int))
        kf = [new[p] for p in pick]
        desc = descriptors.detach().float().cpu().numpy()[[pos[f.index] for f in kf]]
        t = self._timed("detection", t, times, engine)

        candidate = None
        if k >= self._cooldown_until:
            candidate = self._index.query(desc, k - cfg.min_gap_windows, cfg.min_similarity)
        self._index.add(k, np.array([f.index for f in kf]), desc)
        t = self._timed("detection", t, times, engine)
        self._spill(
            self._keyframes.put,
            k, images=np.stack([f.image for f in kf]), depth=np.stack([f.depth for f in kf]).astype(np.float16),
            conf=np.stack([(np.clip(f.conf, 0, 1) * 255 + 0.5).astype(np.uint8) for f in kf]),
            cam_to_world=np.stack([f.cam_to_world for f in kf]), intrinsics=np.stack([f.intrinsics for f in kf]),
            frames=np.array([f.index for f in kf]),
        )  # fmt: skip
        t = self._timed("spill", t, times, engine)
        if candidate is None:
            return
        self.counts["candidates"] += 1
        current = _estimates(
            np.stack([f.depth for f in kf]), np.stack([f.conf for f in kf]),
            np.stack([f.cam_to_world for f in kf]), np.stack([f.intrinsics for f in kf]), engine.config,
        )  # fmt: skip
        # The keyframes' model-size uint8 images, as the candidate's come back from disk: every
        # predictor (worker processes have no float tensors here) verifies the same input.
        result = self._verify(candidate.window, k, current, [f.image for f in kf], engine)
        t = self._timed("verification", t, times, engine)
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
        self._moved = True
        t = self._timed("optimisation", t, times, engine)
        self.counts["pruned"] += len(dropped)
        ok = edge not in dropped
        reason = "" if ok else "inconsistent with the pose graph after optimisation"
        self._record(event(ok, reason))
        if ok:
            self._cooldown_until = k + 1 + cfg.cooldown_windows
        self._plan_reemit(exclude=node)
        self._timed("correction", t, times, engine)

    def _spill(self, put: Callable[..., None], *args: Any, **arrays: np.ndarray) -> None:
        try:
            put(*args, **arrays)
        except OutputError as exc:
            if self.config.spill_dir is None:
                raise
            # Kept with a resumable run's state (e.g. a full disk): the run continues from there.
            raise OutputError(
                f"{exc} (the frames saved so far are kept; the run can be resumed with --resume)"
            ) from None

    def _verify(self, cand_window: int, window: int, current: FrameEstimates, images, engine):
        rec = self._keyframes.get(cand_window)
        config = engine.config
        candidate = _estimates(
            rec["depth"].astype(np.float32), rec["conf"].astype(np.float32) / 255.0,
            rec["cam_to_world"], rec["intrinsics"], config,
        )  # fmt: skip
        both = np.concatenate([rec["images"], np.stack(images)])
        x = torch.from_numpy(both).permute(0, 3, 1, 2).float().div(255.0)
        call: Callable = engine.side_model_call
        with torch.inference_mode():
            pred = call(x)
            if not isinstance(pred, WindowPrediction):
                raise TypeError(f"model returned {type(pred).__name__}, expected WindowPrediction")
            pred.validate(len(x))
            dev = engine.device
            depth, conf, poses, intr, _ = sanitize_prediction(pred.to(dev))
            valid = depth > 0
            confident = valid & (rank_normalise(conf, valid) >= 1.0 - config.top_conf_fraction)
            joint = FrameEstimates(depth, confident, poses, intr)
            return verify_loop(
                FrameEstimates(*(x.to(dev) for x in candidate)), FrameEstimates(*(x.to(dev) for x in current)),
                joint, self.config, config.registration, config.huber_delta, config.irls_iterations,
                candidate_correction=self.correction(cand_window), current_correction=self.correction(window),
            )  # fmt: skip

    def _plan_reemit(self, exclude: int) -> None:
        """Queue every earlier node whose correction moved it beyond the tolerance."""
        length = self._graph.length
        for node in range(exclude):
            corr = self.correction(self._window_by_node[node])
            delta = corr @ sim3_inverse(self._emitted[node])
            s, r, _ = sim3_split(delta)
            c = self._raw[node][:3, 3]
            c_old = (self._emitted[node] @ np.append(c, 1.0))[:3]
            move = np.linalg.norm((delta @ np.append(c_old, 1.0))[:3] - c_old) / length
            angle = np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))
            if max(move, angle, abs(np.log(s))) <= self.config.reemit_tolerance:
                continue
            self._emitted[node] = corr
            self._pending[node] = None

    def _load_frame(self, row: np.ndarray, corr: np.ndarray) -> ReconstructedFrame | None:
        """The frame of a pose-log row, from the archive, corrected by ``corr`` (None: the
        archive has no such frame)."""
        index = int(row[0])
        got = self._frames.get(index)
        if got is None:
            return None
        pose = np.eye(4)
        pose[:3] = row[2:14].reshape(3, 4)
        frame = ReconstructedFrame(
            index=index,
            timestamp=float(row[14]),
            image=got.image,
            cam_to_world=pose,
            intrinsics=row[15:24].reshape(3, 3).copy(),
            depth=got.depth,
            conf=got.conf,
            window=int(row[1]),
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

    def _timed(self, name: str, start: float, times: dict, engine) -> float:
        now = time.perf_counter()
        self.loop_timings[name] += now - start
        key = f"loop_{name}"
        times[key] = times.get(key, 0.0) + now - start
        engine.timings[key] = engine.timings.get(key, 0.0) + now - start
        return now

    # -- resume ------------------------------------------------------------------------------
    def capture(self) -> dict[str, Any]:
        """The state after the last window: ``{"meta": JSON-able, "arrays": {name: array}}``
        (small: a node, an edge and K descriptors per window; the spilled records stay on disk)."""
        g = self._graph
        n = len(self._raw)
        self._log.flush()  # the rows this state counts must outlive a kill of the process
        for store in self._stores:  # and so must the records it refers to
            store.flush()
        arrays: dict[str, np.ndarray] = {
            "raw": np.array(self._raw).reshape(n, 4, 4),
            "emitted": np.array(self._emitted).reshape(n, 4, 4),
            "node_window": np.array([self._window_by_node[i] for i in range(n)], np.int64),
            "node_frames": np.array(self._node_frames, np.int64).reshape(n, 2),
        }
        if self._index.size:
            desc, windows, frames = self._index.to_arrays()
            arrays.update(index_desc=desc, index_window=windows, index_frame=frames)
        meta: dict[str, Any] = {
            "enabled": self._enabled,
            "cooldown_until": self._cooldown_until,
            "moved": self._moved,
            "log_rows": len(self._log),
            "log_width": _LOG_WIDTH,
            "counts": dict(self.counts),
            "rejections": dict(self.rejections),
            "events": [[*e[:6], list(e[6]), list(e[7])] for e in self.events],
            "graph": None,
        }
        if g is not None:
            meta["graph"] = {"length": g.length, "huber": g.huber}
            arrays.update({f"graph_{k}": v for k, v in g.to_arrays().items()})
        return {"meta": meta, "arrays": arrays}

    def _restore(self, state: dict[str, Any]) -> None:
        meta, a = state["meta"], state["arrays"]
        self._enabled = bool(meta["enabled"])
        self._cooldown_until = int(meta["cooldown_until"])
        self._moved = bool(meta["moved"])
        self.counts.update(meta["counts"])
        self.rejections = dict(meta["rejections"])
        for e in meta["events"]:
            self.events.append(LoopEvent(*e[:6], tuple(e[6]), tuple(e[7])))
        self._raw = [m.copy() for m in a["raw"]]
        self._emitted = [m.copy() for m in a["emitted"]]
        self._node_of = {int(w): i for i, w in enumerate(a["node_window"])}
        self._window_by_node = {i: w for w, i in self._node_of.items()}
        self._node_frames = [(int(f), int(la)) for f, la in a["node_frames"]]
        if "index_desc" in a:
            self._index = KeyframeIndex.from_arrays(
                a["index_desc"], a["index_window"], a["index_frame"]
            )
        if meta["graph"] is not None:
            self._graph = PoseGraph.from_arrays(
                meta["graph"]["length"],
                meta["graph"]["huber"],
                {k[len("graph_") :]: v for k, v in a.items() if k.startswith("graph_")},
            )
        missing = [k for k in self._node_of if k not in self._keyframes]
        if missing:
            raise OutputError(
                f"cannot resume loop closure: the keyframes of window {missing[0]} are missing "
                f"from {self._keyframes.dir}"
            )


def _correct_in_place(frame: ReconstructedFrame, corr: np.ndarray) -> None:
    """Move a raw frame by ``corr``; a scaled depth map says by how much (``depth_scale``: the
    run writer saves it, and the frame archive divides it out when a later loop moves it again)."""
    pose, s = correct_pose(corr, frame.cam_to_world)
    frame.cam_to_world = pose
    if s != 1.0:
        frame.depth = (frame.depth * np.float32(s)).astype(np.float32)
        frame.extras["depth_scale"] = float(s)


def _estimates(depth, conf, poses, intr, config: LaserConfig) -> FrameEstimates:
    d = torch.as_tensor(np.asarray(depth, np.float32))
    c = torch.as_tensor(np.asarray(conf, np.float32))
    return FrameEstimates(
        d,
        (d > 0) & (c >= 1.0 - config.top_conf_fraction),
        torch.as_tensor(np.asarray(poses, np.float32)),
        torch.as_tensor(np.asarray(intr, np.float32)),
    )
