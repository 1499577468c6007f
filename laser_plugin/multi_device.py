"""One stream, several devices: windows are predicted on N model replicas at once.

The network's work on a window depends on nothing but the window's images
(:meth:`StreamingReconstructor.predict` is stateless), while registration and layer alignment must
see the windows in stream order and are cheap. So a window goes to whichever replica is free, and
the predictions are aligned in order as they come back, through a bounded reorder buffer: at most
``max_pending`` windows are in flight or waiting, so memory stays bounded however far one device
runs ahead of another. Alignment sees exactly the predictions and the order of a single-device run,
so the output is the same: bit for bit when the replicas compute identically (two CPU replicas,
tested); on two H100s, full-size π³ differed from the one-GPU run by at most 5e-7 in poses and
1.2e-4 in depth (floating-point noise of the GPU kernels; benchmarks/speed_multi_gpu.py, the
result indexed in benchmarks/results/README.md).

Threads, not processes: the network call spends its time in device kernels that release the GIL,
and threads share the decoded frames and the engine state without copies.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from laser_plugin.config import LaserConfig
from laser_plugin.engine import StreamingReconstructor
from laser_plugin.errors import ConfigError
from laser_plugin.sources import open_source
from laser_plugin.stream_threads import SinkCaller
from laser_plugin.types import ReconstructedFrame, ReconstructionModel, WindowPrediction
from laser_plugin.windows import Window, schedule_windows

if TYPE_CHECKING:
    from laser_plugin.resume import EngineState


def parse_devices(spec: str | Sequence[str]) -> list[str]:
    """``"cuda:0,cuda:1"`` (or a list), ``"all"`` (every visible GPU) -> validated device names.

    Repeating a device is allowed (``"cpu,cpu"``: two replicas on one device, used by tests).
    """
    import torch

    if isinstance(spec, str):
        if spec.strip() == "all":
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if n == 0:
                raise ConfigError("--devices all: no CUDA device is visible")
            return [f"cuda:{i}" for i in range(n)]
        names = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        names = [str(s).strip() for s in spec]
    if not names:
        raise ConfigError("--devices is empty; give e.g. cuda:0,cuda:1 or all")
    out = []
    for name in names:
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise ConfigError(
                f"--devices: {name!r} is not a device name (e.g. cuda:0, cpu)"
            ) from None
        if dev.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            index = 0 if dev.index is None else dev.index
            if index >= count:
                raise ConfigError(
                    f"--devices: {name} is not available ({count} CUDA device(s) visible)"
                )
            out.append(f"cuda:{index}")
        elif dev.type == "cpu":
            out.append("cpu")
        else:
            out.append(str(dev))
    return out


def load_replicas(name: str, devices: Sequence[str], weights: str | None = None, **kwargs) -> list:
    """One model per device through the registry (``load_model``), in the order of ``devices``."""
    from laser_plugin.models import load_model

    return [load_model(name, weights=weights, device=d, **kwargs) for d in devices]


class MultiDeviceReconstructor(StreamingReconstructor):
    """A :class:`StreamingReconstructor` that predicts windows on several model replicas at once.

    ``models``: one replica per device (e.g. from :func:`load_replicas`); each is called from its
    own thread, one window at a time. ``max_pending``: windows predicted ahead of the alignment
    (the reorder buffer's bound; default two per replica, so every device has the next window
    queued while the previous one is being aligned).
    """

    def __init__(
        self,
        models: Sequence[ReconstructionModel],
        config: LaserConfig | None = None,
        *,
        keep_source_images: bool = True,
        input_size: tuple[int, int] | None = None,
        max_pending: int | None = None,
        hooks: Sequence = (),
    ):
        models = list(models)
        if not models:
            raise ConfigError("MultiDeviceReconstructor needs at least one model replica")
        super().__init__(
            models[0],
            config,
            keep_source_images=keep_source_images,
            input_size=input_size,
            hooks=hooks,
        )
        self.replicas = models
        self.max_pending = max_pending if max_pending is not None else 2 * len(models)
        if self.max_pending < 1:
            raise ConfigError(f"max_pending must be at least 1, got {self.max_pending}")
        self.windows_per_replica = [0] * len(models)
        self.max_buffered = 0
        """Most windows that were predicted or in flight at once (<= max_pending)."""
        # On GPUs, each replica runs on its own stream and alignment on a high-priority stream
        # of its device: on the device it shares with a replica, alignment's many small kernels
        # then run between the network's instead of queueing behind a whole window.
        self.align_stream = (
            torch.cuda.Stream(device=self.device, priority=-1)
            if self.device.type == "cuda"
            else None
        )
        self.replica_streams = []
        for m in models:
            dev = torch.device(getattr(m, "device", "cpu"))
            self.replica_streams.append(
                torch.cuda.Stream(device=dev) if dev.type == "cuda" else None
            )

    def run(
        self,
        source: str | Path | Iterable,
        sinks: Sequence = (),
        *,
        max_frames: int | None = None,
        fps: float = 30.0,
        stride: int = 1,
        resume: EngineState | None = None,
    ) -> Iterator[ReconstructedFrame]:
        """As :meth:`StreamingReconstructor.run`, with the network calls spread over the replicas."""
        calls = SinkCaller(self, sinks)
        done = self.start_stream(resume)
        free: queue.SimpleQueue[int] = queue.SimpleQueue()  # replicas not busy
        for i in range(len(self.replicas)):
            free.put(i)
        self.set_side_model(lambda images: self._call_on_free(images, free))
        pool = ThreadPoolExecutor(
            max_workers=len(self.replicas), thread_name_prefix="laser-replica"
        )
        pending: deque[tuple[Window, Future]] = deque()  # submission (= stream) order
        ok = False
        try:
            frames = self._prepared(
                open_source(source, fps=fps, stride=stride, max_frames=max_frames)
            )
            windows = schedule_windows(frames, self.config.window_size, self.config.overlap)
            exhausted = False
            while True:
                # Fill the buffer first, so every replica has work while this thread aligns.
                while not exhausted and len(pending) < self.max_pending:
                    window = next(windows, None)
                    if window is None:
                        exhausted = True
                        break
                    if window.index < done:  # finalised before the interruption
                        continue
                    pending.append((window, pool.submit(self._predict_on_free, window, free)))
                    self.max_buffered = max(self.max_buffered, len(pending))
                if not pending:
                    break
                window, future = pending.popleft()
                pred, replica, seconds = future.result()  # re-raises the replica's exception
                self.windows_per_replica[replica] += 1
                times = {"model": seconds}
                self.timings["model"] = self.timings.get("model", 0.0) + seconds
                if self.align_stream is not None:
                    with torch.cuda.stream(self.align_stream):
                        finals, stats = self.align(window, pred, times)
                else:
                    finals, stats = self.align(window, pred, times)
                yield from calls.window(finals, stats)
            yield from calls.held()
            ok = True
        except BaseException as exc:
            calls.interrupt(exc)
            raise
        finally:
            # Windows not started are dropped; one already on a device finishes in the background.
            for _, future in pending:
                future.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            self.set_side_model(None)
            # As the engine: every sink closes; an essential one failing fails a finished run.
            calls.close(ok)

    def _call_on_free(self, images: torch.Tensor, free: queue.SimpleQueue) -> WindowPrediction:
        """A hook's own model call (loop verification) on the next free replica, so no replica
        ever runs two calls at once."""
        replica = free.get()
        try:
            model = self.replicas[replica]
            dev = torch.device(getattr(model, "device", "cpu"))
            with torch.inference_mode():
                return model(images.to(dev))
        finally:
            free.put(replica)

    def _predict_on_free(
        self, window: Window, free: queue.SimpleQueue
    ) -> tuple[WindowPrediction, int, float]:
        """Take a free replica, predict ``window`` on it, give it back (runs in a pool thread)."""
        replica = free.get()
        try:
            start = time.perf_counter()
            stream = self.replica_streams[replica]
            if stream is None:
                pred = self.predict(window, model=self.replicas[replica])
                # Moving to the alignment device here waits for the replica's kernels in this
                # thread, not in the aligning one, and makes the time below the device's real time.
                pred = pred.to(self.device)
            else:
                with torch.cuda.stream(stream):
                    pred = self.predict(window, model=self.replicas[replica]).to(self.device)
                stream.synchronize()
                # The aligning thread reads and frees these on its own stream.
                pred.record_stream(self.align_stream)
            return pred, replica, time.perf_counter() - start
        finally:
            free.put(replica)
