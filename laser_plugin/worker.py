"""Model worker processes: the network runs in its own process, one per device.

In one process the network thread shares the Python interpreter (the GIL) with decoding,
alignment and the sinks, and runs measurably slower in the pipeline than alone (the network
thread's time per window, run 3 of ``benchmarks/archive/SPEED_NOTES.md``). A :class:`WorkerPool`
starts one process per device (``torch.multiprocessing``, spawn); each builds its own model and
then, per window:

1. reads the window's frames as uint8 from a shared-memory slot the caller filled (source size,
   no resizing in the caller; the slot can be page-locked so the upload is a plain DMA);
2. resizes and scales them on its device exactly as ``StreamingReconstructor`` does on the CPU
   (bilinear, antialiased, clamped) and returns the model-size uint8 images with the prediction;
3. runs the model, passing frame keys (stream, frame index) so the fast path reuses the overlap
   frames' encoder tokens without comparing frame contents;
4. optionally prepares it (:meth:`WorkerPool.set_prepare`: sanitise, rank the confidences,
   segment the depth layers; the half of alignment that needs no earlier window) on a
   high-priority CUDA stream, before the next window (preparing during the next window's network
   was measured slower and removed: ``benchmarks/DECISIONS.md``, "workers prepare concurrently
   with the next network");
5. hands the result back packed into one buffer: on its GPU through CUDA IPC
   (``transfer="ipc"``: the caller maps the worker's memory, nothing crosses the bus) or through
   host shared memory (``transfer="host"``).

The caller (the run loop with the ``laser_plugin.predictors.Workers`` predictor) keeps the stream state and
aligns the windows in order; the pool is only "predict this window somewhere".

With ``in_process_first`` the first device is served by a thread of the caller's process instead
(the same request loop, on a CUDA stream of its own). Two processes on one GPU are two CUDA
contexts, which the GPU time-slices: the aligner's many small kernels and syncs then wait for the
worker's slices (``benchmarks/DECISIONS.md``, "the network in its own process per device"). In
one context the two streams interleave, and the whole pipeline runs at the network's rate ("the
first GPU's network as a thread of the aligning process", same file).
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from laser_plugin.errors import ConfigError, LaserError
from laser_plugin.prepare import PreparedWindow, non_finite_model_error
from laser_plugin.types import WindowPrediction

_FIELDS = ("depth", "conf", "cam_to_world", "intrinsics", "descriptors")


class WorkerError(RuntimeError):
    """A worker process failed (its traceback is in the message) or died."""


def preprocess_frames(
    frames: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, H0, W0, 3) uint8 -> model input (n, 3, H, W) float in [0, 1] and (n, H, W, 3) uint8.

    The same operations as ``StreamingReconstructor._prepared`` (per frame there, batched here),
    on whatever device ``frames`` is on."""
    t = frames.permute(0, 3, 1, 2).float().div_(255.0)
    if tuple(t.shape[-2:]) != tuple(size):
        t = F.interpolate(t, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
        t = t.clamp_(0, 1)
    images = (t.permute(0, 2, 3, 1) * 255.0 + 0.5).to(torch.uint8)
    return t, images


def _pin(t: torch.Tensor, dev: torch.device) -> bool:
    """Page-lock a shared host tensor in this process (CUDA uploads from it become DMA)."""
    try:
        err = torch.cuda.cudart().cudaHostRegister(t.data_ptr(), t.numel() * t.element_size(), 0)
    except Exception:
        return False
    if int(getattr(err, "value", err)) == 0:
        return True
    # A failed registration leaves its error in this thread's CUDA runtime, where the next kernel
    # launch's check would find it and fail an unrelated window: consume it with a launch here.
    with contextlib.suppress(Exception):
        torch.zeros(1, device=dev).add_(1)
    return False


def _unpin(t: torch.Tensor) -> None:
    """Undo :func:`_pin` before ``t`` is dropped: a registration outlives the mapping, and new
    slots mapped at the same addresses could then not be registered."""
    with contextlib.suppress(Exception):
        torch.cuda.cudart().cudaHostUnregister(t.data_ptr())


def _error_payload(exc: BaseException) -> tuple[str, object]:
    text = "".join(traceback.format_exception(exc))
    try:  # keep user-facing errors (LaserError) as they are: the CLI prints them in one line
        import pickle

        pickle.loads(pickle.dumps(exc))
        return text, exc
    except Exception:
        return text, None


def _worker_main(
    rank: int,
    device: str,
    factory: Callable[..., Any],
    inbox,
    outbox,
    transfer: str,
    pin: bool,
    threads: int | None,
) -> None:
    """The worker process: build the model, then serve requests until told to stop."""
    if threads or torch.device(device).type == "cuda":
        # A GPU worker does next to nothing on the CPU: idle OpenMP threads spinning in every
        # worker would only take cores from the caller's alignment and copies.
        torch.set_num_threads(threads or 1)
    _serve(rank, device, factory, inbox, outbox, transfer, pin)


class _Local:
    """Marker for a reply of the in-process worker: the payload stays in this process (its CUDA
    tensors cannot be mapped through CUDA IPC into the process that made them)."""

    def __init__(self, key: int) -> None:
        self.key = key


class _LocalOutbox:
    """The in-process worker's side of the pool's reply queue: stores the payload, sends a marker
    through the shared queue so one wait in the caller covers every worker."""

    def __init__(self, outbox, store: dict[int, Any]) -> None:
        self.outbox, self.store = outbox, store
        # Only the request loop puts; ``next`` on a count and a dict store are each atomic under
        # the GIL anyway.
        self._keys = itertools.count()

    def put(self, msg: tuple) -> None:
        kind, rank, wid, payload = msg
        key = next(self._keys)
        self.store[key] = payload
        # A window still running when the pool closed (join timed out) finds the queue closed:
        # nobody waits for it any more.
        with contextlib.suppress(ValueError, OSError):
            self.outbox.put((kind, rank, wid, _Local(key)))


def _serve(
    rank: int,
    device: str,
    factory: Callable[..., Any],
    inbox,
    outbox,
    transfer: str,
    pin: bool,
) -> None:
    """Build the model, then serve requests until told to stop (a worker process's main loop, or
    the in-process worker's thread with ``transfer="local"``)."""
    dev = torch.device(device)
    try:
        if dev.type == "cuda":
            torch.cuda.set_device(dev.index or 0)  # "cuda" alone: this process's first GPU
        model = factory(device=device)
        keys_ok = bool(getattr(model, "accepts_frame_keys", False))
    except BaseException as exc:
        outbox.put(("failed", rank, None, _error_payload(exc)))
        return
    outbox.put(("ready", rank, None, {"device": device, "model": type(model).__name__}))
    slots = None
    pinned = False
    post: _Post | None = None  # prepares windows once a "prepare" request set the function
    # In process, the network gets a stream of its own so the caller's alignment (on its
    # high-priority stream) runs between the network's kernels: one CUDA context, no time slices.
    own_stream = (
        torch.cuda.Stream(device=dev) if transfer == "local" and dev.type == "cuda" else None
    )
    try:
        while True:
            msg = inbox.get()
            if msg is None:
                break
            kind, wid = msg[0], msg[1]
            try:
                if kind == "slots":  # new slots (another size or count) replace the old ones
                    if pinned:
                        _unpin(slots)
                    slots = msg[2]
                    pinned = dev.type == "cuda" and pin and _pin(slots, dev)
                    outbox.put(("slots", rank, wid, {"pinned": pinned}))
                elif kind == "prepare":
                    fn = msg[2]
                    post = None if fn is None else _Post(rank, dev, fn, outbox, transfer)
                    outbox.put(("prepare", rank, wid, None))
                elif kind == "input_size":
                    h, w = msg[2]
                    size = model.input_size(h, w) if hasattr(model, "input_size") else (h, w)
                    outbox.put(("input_size", rank, wid, tuple(int(v) for v in size)))
                elif kind == "stats":  # GPU memory and token-cache counters (then reset the peak)
                    info: dict[str, Any] = {"device": device}
                    cache = getattr(model, "cache", None)
                    if cache is not None:
                        info["cache_hits"], info["cache_misses"] = cache.hits, cache.misses
                    if dev.type == "cuda":
                        info["gpu_peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
                        info["gpu_allocated_mb"] = torch.cuda.memory_allocated(dev) / 2**20
                        torch.cuda.reset_peak_memory_stats(dev)
                    outbox.put(("stats", rank, wid, info))
                elif kind in ("window", "images"):
                    start = time.perf_counter()
                    with torch.cuda.stream(own_stream):  # a no-op for None
                        pred, images = _predict(model, keys_ok, msg, slots, pinned, dev)
                        if dev.type == "cuda":
                            # Wait for the network with a stream sync (no copy queued behind
                            # it, see _predict): ``seconds`` is then the network's time, and an
                            # in-process caller may read the tensors on another stream.
                            torch.cuda.current_stream(dev).synchronize()
                        seconds = time.perf_counter() - start
                        if post is not None and kind == "window":
                            # The next window's network starts now; this one is prepared
                            # meanwhile.
                            post.submit(wid, pred, images, seconds)
                            continue
                    out = ship(_prediction_tensors(pred), transfer)
                    out.update(images=images, seconds=seconds)
                    outbox.put(("pred", rank, wid, out))
                else:
                    raise ValueError(f"unknown request {kind!r}")
            except BaseException as exc:
                # Broken weights (NaN) make π³'s SVD raise on the CPU: one line, as in the
                # engine, not a worker traceback.
                exc = non_finite_model_error(exc, f"window {wid}") or exc
                outbox.put(("error", rank, wid, _error_payload(exc)))
    finally:
        if pinned:
            _unpin(slots)


class _Post:
    """Runs ``prepare(prediction)`` (sanitise, rank, segment: :mod:`laser_plugin.prepare`) on a
    high-priority CUDA stream, then sends the reply, in the request loop before the next window
    (the GPU is then idle for it: its many syncs do not wait behind the network's kernels)."""

    def __init__(self, rank: int, dev: torch.device, prepare, outbox, transfer: str) -> None:
        self.rank, self.prepare, self.outbox, self.transfer = rank, prepare, outbox, transfer
        # High priority, as the aligner's: its many small kernels and syncs would otherwise
        # queue behind the network's long kernels (measured several times slower per window;
        # benchmarks/DECISIONS.md, "workers prepare concurrently with the next network").
        self.stream = torch.cuda.Stream(device=dev, priority=-1) if dev.type == "cuda" else None

    def submit(self, wid: int, pred: WindowPrediction, images, seconds: float) -> None:
        ready = None
        if self.stream is not None:
            # The prediction was made on the request loop's stream: the preparing stream waits
            # for it, and the allocator must not hand its memory to the next window meanwhile.
            ready = torch.cuda.current_stream(self.stream.device).record_event()
            pred.record_stream(self.stream)
        self._run(wid, pred, images, seconds, ready)

    def _run(self, wid: int, pred: WindowPrediction, images, seconds: float, ready) -> None:
        try:
            start = time.perf_counter()
            with torch.cuda.stream(self.stream):
                if ready is not None:
                    self.stream.wait_event(ready)
                prep = self.prepare(pred)
                del pred
                out = ship(prep.tensors(), self.transfer)
            if self.stream is not None:
                self.stream.synchronize()  # the caller reads the tensors on another stream
            out.update(
                images=images,
                seconds=seconds,
                prepare_seconds=time.perf_counter() - start,
                prepared={"stride": prep.stride, "messages": prep.messages},
            )
            self.outbox.put(("pred", self.rank, wid, out))
        except BaseException as exc:
            self.outbox.put(("error", self.rank, wid, _error_payload(exc)))


def _predict(
    model, keys_ok: bool, msg: tuple, slots, pinned: bool, dev
) -> tuple[WindowPrediction, torch.Tensor | None]:
    """One window request -> (its prediction on ``dev``, the model-size uint8 images on the host)."""
    if msg[0] == "window":
        _, _, slot, count, extra, size, keys = msg
        if extra is not None:  # frames of another size than the slots'
            parts = [preprocess_frames(f[None].to(dev), size) for f in extra]
            x = torch.cat([p[0] for p in parts])
            images = torch.cat([p[1] for p in parts])
        else:
            frames = slots[slot, :count].to(dev, non_blocking=pinned)
            x, images = preprocess_frames(frames, size)
    else:  # preprocessed float images (the pool used as a plain model)
        x, images, keys = msg[2].to(dev), None, None
    host_images = None
    if images is not None and IMAGES_BEFORE_NETWORK:
        # Copied out before the network is queued, so this copy waits for the resize only.
        # Queued after the network it waited for the whole network, and so did every
        # device-to-host copy the aligning thread queued meanwhile (VGGT faster end to end;
        # benchmarks/DECISIONS.md, "the worker copies its images to the host before queuing the
        # network").
        host_images = images.cpu()
    with torch.inference_mode():
        pred = model(x, frame_keys=keys) if keys_ok and keys else model(x)
    if not isinstance(pred, WindowPrediction):
        raise TypeError(f"model returned {type(pred).__name__}, expected WindowPrediction")
    pred.validate(x.shape[0])
    if images is not None and host_images is None:
        host_images = images.cpu()
    return pred, host_images


IMAGES_BEFORE_NETWORK = True
"""Where :func:`_predict` copies the model-size images to the host (benchmarks compare)."""


def _prediction_tensors(pred: WindowPrediction) -> dict[str, torch.Tensor | None]:
    return {name: getattr(pred, name) for name in _FIELDS}


def ship(tensors: dict[str, torch.Tensor | None], transfer: str) -> dict:
    """Tensors -> the part of a reply payload that carries them.

    "local" (same process): the tensors as they are. Otherwise they are packed into one byte
    buffer, so a window crosses processes as one shared allocation (one CUDA IPC handle to open,
    one host shared-memory segment, one peer copy to the aligning device) instead of one per
    field. "ipc" keeps the buffer on the worker's GPU, "host" moves it to host memory.
    """
    if transfer == "local":
        return {"tensors": dict(tensors), "local": True}
    layout, offset, present = [], 0, []
    for name, t in tensors.items():
        if t is None:
            layout.append((name, None, None, 0))
            continue
        t = t.detach().contiguous()
        offset = -(-offset // 16) * 16  # 16-byte aligned, so every dtype can view its slice
        layout.append((name, t.dtype, tuple(t.shape), offset))
        present.append((t, offset))
        offset += t.numel() * t.element_size()
    device = next((t.device for t, _ in present), torch.device("cpu"))
    buf = torch.empty(max(offset, 1), dtype=torch.uint8, device=device)
    for t, off in present:
        n = t.numel() * t.element_size()
        buf[off : off + n].view(t.dtype).view(t.shape).copy_(t)
    if transfer != "ipc" or not buf.is_cuda:
        buf = buf.cpu()
    return {"packed": buf, "layout": layout, "local": False}


def unship(
    payload: dict, device: torch.device | str | None = None
) -> dict[str, torch.Tensor | None]:
    """The tensors of a reply payload (views into its packed buffer, moved to ``device`` in one
    copy first when given; a "local" payload's tensors stay where they are)."""
    if "tensors" in payload:
        return dict(payload["tensors"])
    buf = payload["packed"]
    if device is not None:
        buf = buf.to(device, non_blocking=True)
    out: dict[str, torch.Tensor | None] = {}
    for name, dtype, shape, off in payload["layout"]:
        if dtype is None:
            out[name] = None
            continue
        n = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        out[name] = buf[off : off + n].view(dtype).view(shape)
    return out


class WorkerPool:
    """One model worker process per device (see module doc).

    ``factory(device=...)`` builds the model inside the worker; it must be picklable (a
    module-level function or a ``functools.partial`` of one, e.g. :func:`model_factory`).
    ``transfer``: "ipc" (CUDA tensors shared with the caller; CUDA workers only), "host"
    (host shared memory) or "auto" (ipc on CUDA). ``pin``: page-lock the frame slots in CUDA
    workers. ``threads``: torch threads per worker (None: torch's default).
    ``in_process_first``: serve the first device from a thread of this process instead of a
    worker process, on its own CUDA stream. The caller's alignment then shares that GPU inside
    one CUDA context (kernels interleave) rather than time-slicing with a worker's context, and
    its predictions need no IPC. Its ``stats`` are this process's (alignment included).
    """

    def __init__(
        self,
        factory: Callable[..., Any],
        devices: Sequence[str],
        *,
        transfer: str = "auto",
        pin: bool = True,
        threads: int | None = None,
        start_timeout: float = 900.0,
        in_process_first: bool = False,
    ) -> None:
        devices = [str(d) for d in devices]
        if not devices:
            raise ConfigError("a worker pool needs at least one device")
        if transfer not in ("auto", "ipc", "host"):
            raise ConfigError(f"transfer must be auto, ipc or host, got {transfer!r}")
        self.factory = factory
        self.devices = devices
        self.transfer = transfer
        self.pin = pin
        self.threads = threads
        self.start_timeout = start_timeout
        self.in_process_first = in_process_first
        self._procs: list = []  # worker processes (and the in-process worker's thread)
        self._local_store: dict[int, Any] = {}
        self._inboxes: list = []
        self._outbox = None
        self._slots: torch.Tensor | None = None
        self._slots_np: np.ndarray | None = None
        self._free_slots: list[int] = []
        self._slot_of: dict[int, int] = {}
        self._rank_of: dict[int, int] = {}
        self._done: dict[int, tuple] = {}
        self._replies: dict[tuple[str, int], Any] = {}
        self.in_flight = [0] * len(devices)
        self.windows_per_worker = [0] * len(devices)
        self.pinned: list[bool] = []
        self._next_id = -1  # ids of internal requests (windows use their own, >= 0)

    # -- life cycle ----------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return bool(self._procs)

    def start(self) -> WorkerPool:
        """Spawn the workers and wait until every model is built (idempotent)."""
        if self._procs:
            return self
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._outbox = ctx.Queue()
        for rank, device in enumerate(self.devices):
            transfer = self.transfer
            if transfer == "auto":
                transfer = "ipc" if device.startswith("cuda") else "host"
            if transfer == "ipc" and not device.startswith("cuda"):
                raise ConfigError(f"transfer 'ipc' needs CUDA workers, got {device}")
            if rank == 0 and self.in_process_first:
                inbox = queue.Queue()
                proc = threading.Thread(
                    target=_serve,
                    args=(
                        rank,
                        device,
                        self.factory,
                        inbox,
                        _LocalOutbox(self._outbox, self._local_store),
                        "local",
                        self.pin,
                    ),
                    name="laser-worker-0-in-process",
                    daemon=True,
                )
                proc.start()
                self._procs.append(proc)
                self._inboxes.append(inbox)
                continue
            inbox = ctx.Queue()
            proc = ctx.Process(
                target=_worker_main,
                args=(
                    rank,
                    device,
                    self.factory,
                    inbox,
                    self._outbox,
                    transfer,
                    self.pin,
                    self.threads,
                ),
                name=f"laser-worker-{rank}",
                daemon=True,
            )
            proc.start()
            self._procs.append(proc)
            self._inboxes.append(inbox)
        ready = 0
        try:
            while ready < len(self._procs):
                kind, rank, _, payload = self._get(self.start_timeout, "start")
                if kind == "ready":
                    ready += 1
                elif kind == "failed":
                    self._raise(
                        payload, f"worker {rank} ({self.devices[rank]}) could not build its model"
                    )
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the workers (waits briefly, then terminates)."""
        for inbox in self._inboxes:
            with contextlib.suppress(Exception):
                inbox.put(None)
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive() and hasattr(proc, "terminate"):  # a thread can only be waited for
                proc.terminate()
                proc.join(timeout=5)
        for q in [*self._inboxes, self._outbox]:
            if q is not None and hasattr(q, "join_thread"):
                with contextlib.suppress(Exception):
                    q.close()
                    q.join_thread()
        self._procs, self._inboxes, self._outbox = [], [], None
        self._slots = self._slots_np = None
        self._free_slots, self._slot_of, self._rank_of, self._done = [], {}, {}, {}
        self._local_store.clear()
        self.in_flight = [0] * len(self.devices)

    def __enter__(self) -> WorkerPool:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- messages ------------------------------------------------------------------------------
    def _get(self, timeout: float, what: str) -> tuple:
        """Next message from any worker; raises WorkerError if a worker died meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self._outbox.get(timeout=0.5)
                if isinstance(msg[3], _Local):
                    msg = (*msg[:3], self._local_store.pop(msg[3].key))
                return msg
            except queue.Empty:
                pass
            for rank, proc in enumerate(self._procs):
                if not proc.is_alive():
                    code = getattr(proc, "exitcode", "none: a thread")
                    raise WorkerError(
                        f"model worker {rank} ({self.devices[rank]}) died (exit code {code}) "
                        f"while waiting for {what}"
                    )
            if time.monotonic() > deadline:
                raise WorkerError(
                    f"no answer from the model workers after {timeout:.0f} s ({what})"
                )

    @staticmethod
    def _raise(payload, context: str):
        text, exc = payload
        if isinstance(exc, LaserError):
            raise exc
        raise WorkerError(f"{context}:\n{text}") from None

    def _dispatch(self, msg: tuple) -> None:
        kind, rank, wid, payload = msg
        if kind == "pred":
            self._done[wid] = ("pred", payload)
            self._release(wid)
        elif kind == "error":
            self._done[wid] = ("error", payload)
            self._release(wid)
        else:
            self._replies[(kind, wid)] = (rank, payload)

    def _release(self, wid: int) -> None:
        rank = self._rank_of.pop(wid, None)
        if rank is not None:
            self.in_flight[rank] -= 1
        slot = self._slot_of.pop(wid, None)
        if slot is not None:
            self._free_slots.append(slot)

    def _request(self, rank: int, kind: str, *args, timeout: float = 120.0):
        rid = self._next_id
        self._next_id -= 1
        self._inboxes[rank].put((kind, rid, *args))
        while (kind, rid) not in self._replies:
            msg = self._get(timeout, kind)
            if msg[0] == "error" and msg[2] == rid:
                self._raise(msg[3], f"worker {rank} failed")
            self._dispatch(msg)
        return self._replies.pop((kind, rid))[1]

    # -- the model side ------------------------------------------------------------------------
    def set_prepare(
        self,
        prepare: Callable | None,
        ranks: Sequence[int] | None = None,
    ) -> None:
        """Have workers prepare each window after predicting it: ``prepare(prediction)`` ->
        :class:`~laser_plugin.prepare.PreparedWindow` (picklable, e.g. a ``functools.partial``
        of :func:`~laser_plugin.prepare.prepare_window`), on a high-priority CUDA stream between
        windows. ``ranks``: the workers that prepare (default all); the
        others, and every worker after ``set_prepare(None)``, return plain predictions."""
        self.start()
        chosen = set(range(len(self._procs)) if ranks is None else ranks)
        for rank in range(len(self._procs)):
            self._request(rank, "prepare", prepare if rank in chosen else None)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The model's input size for a (height, width) source frame (asked of worker 0)."""
        self.start()
        return tuple(self._request(0, "input_size", (int(height), int(width))))

    def stats(self) -> list[dict]:
        """Per worker: GPU peak/allocated MiB since the last call, token-cache hits/misses."""
        self.start()
        return [self._request(rank, "stats") for rank in range(len(self._procs))]

    def ensure_slots(self, count: int, frames: int, height: int, width: int) -> None:
        """Shared uint8 frame slots: ``count`` windows of ``frames`` (height, width, 3) frames."""
        shape = (count, frames, height, width, 3)
        if self._slots is not None and tuple(self._slots.shape) == shape:
            return
        if any(self.in_flight):
            raise RuntimeError("cannot resize the frame slots while windows are in flight")
        self._slots = torch.zeros(shape, dtype=torch.uint8).share_memory_()
        self._slots_np = self._slots.numpy()
        self._free_slots = list(range(count))
        self.pinned = [
            bool(self._request(rank, "slots", self._slots)["pinned"])
            for rank in range(len(self._procs))
        ]

    @property
    def free_slots(self) -> int:
        return len(self._free_slots)

    def submit(
        self,
        wid: int,
        frames: Sequence[np.ndarray],
        size: tuple[int, int],
        keys: Sequence[object] | None = None,
    ) -> int:
        """Send a window's uint8 frames (each (H0, W0, 3)) to the least busy worker; returns its
        rank. ``wid``: the caller's id for :meth:`result` (>= 0, unique among those in flight)."""
        if wid in self._rank_of or wid in self._done:
            raise ValueError(f"window id {wid} is already in flight")
        rank = min(range(len(self._procs)), key=lambda r: (self.in_flight[r], r))
        slots = self._slots
        fits = (
            slots is not None
            and len(frames) <= slots.shape[1]
            and all(f.shape == tuple(slots.shape[2:]) for f in frames)
        )
        if fits and self._free_slots:
            slot = self._free_slots.pop()
            dst = self._slots_np[slot]
            for j, f in enumerate(frames):
                np.copyto(dst[j], f)  # one plain memcpy per frame (no thread pool)
            self._slot_of[wid] = slot
            msg = ("window", wid, slot, len(frames), None, tuple(size), list(keys or []))
        else:  # another size (or no slot): the frames travel as their own shared tensors
            extra = [torch.from_numpy(np.ascontiguousarray(f)) for f in frames]
            msg = ("window", wid, -1, len(frames), extra, tuple(size), list(keys or []))
        self._rank_of[wid] = rank
        self.in_flight[rank] += 1
        self.windows_per_worker[rank] += 1
        self._inboxes[rank].put(msg)
        return rank

    def result(self, wid: int, timeout: float = 3600.0) -> dict:
        """Wait for window ``wid``'s prediction: a dict of the :class:`WindowPrediction` fields,
        ``images`` ((n, H, W, 3) uint8 at the model size) and ``seconds`` (the worker's time)."""
        while wid not in self._done:
            self._dispatch(self._get(timeout, f"window {wid}"))
        kind, payload = self._done.pop(wid)
        if kind == "error":
            self._raise(payload, f"model worker failed on window {wid}")
        return payload

    def __call__(self, images: torch.Tensor) -> WindowPrediction:
        """The pool as a plain model: (L, 3, H, W) float in [0, 1] -> prediction (worker 0)."""
        self.start()
        rid = self._next_id
        self._next_id -= 1
        self._rank_of[rid] = 0
        self.in_flight[0] += 1
        self._inboxes[0].put(("images", rid, images.detach().cpu().contiguous()))
        return to_prediction(self.result(rid))  # "images" requests are never prepared


def to_prediction(payload: dict, device: torch.device | str | None = None) -> WindowPrediction:
    """A worker's payload of a window that was not prepared -> :class:`WindowPrediction`."""
    return WindowPrediction(**unship(payload, device))


def from_payload(
    payload: dict, device: torch.device | str | None = None
) -> WindowPrediction | PreparedWindow:
    """A worker's payload -> the prediction, or the prepared window when the worker prepared it
    (:meth:`WorkerPool.set_prepare`). ``device``: move the packed tensors there first."""
    meta = payload.get("prepared")
    if meta is None:
        return to_prediction(payload, device)
    return PreparedWindow(
        **unship(payload, device), stride=meta["stride"], messages=meta["messages"]
    )


def model_factory(name: str, weights: str | None = None, **kwargs) -> Callable[..., Any]:
    """A picklable factory for :class:`WorkerPool`: ``load_model(name, weights, device=..., **kw)``."""
    import functools

    from laser_plugin.models import load_model

    return functools.partial(load_model, name, weights, **kwargs)
