"""Run a batch of videos on Ray: one task per video, pinned to a GPU, retried, resumable.

Ray is the scheduler (placement, GPU pinning through ``num_gpus``, clusters); this module only
submits one task per video, resubmits the failed ones, skips the finished ones and keeps the
books. Retries are resubmissions from here rather than Ray's own ``max_retries``, so every attempt
is counted and its error kept, whether the task raised or its worker or node died.

Locally, a single-node Ray is started (and stopped) by :func:`run_batch`; with ``address``
(``ray://host:10001``, ``host:6379``, ``auto``) or ``RAY_ADDRESS`` it attaches to a cluster,
whose workers must see the inputs and the output root at the same paths (a shared file system).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laser_plugin.batch.manifest import Job
from laser_plugin.batch.task import TaskSpec, run_job
from laser_plugin.errors import ConfigError, LaserError

SUMMARY_NAME = "batch_summary.json"


@dataclass
class FleetOptions:
    """How the batch is spread over Ray."""

    retries: int = 2
    """Further attempts for a video whose attempt failed with a retryable error."""
    address: str | None = None
    """Ray cluster to attach to (ray://HOST:10001, HOST:6379, auto); default: RAY_ADDRESS if
    set, else a single-node Ray started here; 'local' forces the latter."""
    gpus_per_task: float = 1.0
    """GPUs reserved per video when the cluster has GPUs (0.5 packs two videos per GPU)."""
    cpus_per_task: float = 1.0
    """CPUs reserved per video (on CPU-only clusters, also torch's thread count)."""
    num_cpus: int | None = None
    """CPUs of the local Ray (default: all); ignored when attaching to a cluster."""
    force: bool = False
    """Reconstruct every video again, even those whose run is complete."""
    log_to_driver: bool = False
    """Forward the workers' stdout/stderr to this console."""
    connect_timeout: float = 30.0
    """Seconds to wait for the Ray cluster at --address before giving up with one line."""


@dataclass
class BatchResult:
    records: list[dict[str, Any]]
    """One per video, in manifest order (see :func:`run_batch`)."""
    seconds: float
    used_gpus: bool
    summary_path: Path
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r["status"] in ("complete", "skipped") for r in self.records)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("laser batch needs Ray: pip install 'laser-plugin[ray]'") from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` or ``ray://HOST:PORT``; None for ``auto`` and the like."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def _check_reachable(address: str, timeout: float) -> None:
    """Fail in one line, within ``timeout``, when nothing listens at ``address``: Ray itself
    retries an unreachable cluster for minutes, printing every retry."""
    import socket

    hp = _host_port(address)
    if hp is None:
        return
    try:
        socket.create_connection(hp, timeout=timeout).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ConnectionError(f"{reason} (is a Ray cluster running there?)") from None


def _init_within(ray, timeout: float, **kwargs) -> None:
    """``ray.init`` with a deadline: something that accepts connections but is not a Ray
    cluster would otherwise keep it waiting. On timeout the attempt is left in a daemon thread
    (ray.init cannot be cancelled) and the caller ends with one line."""
    import threading

    outcome: list[BaseException | None] = []

    def target():
        try:
            ray.init(**kwargs)
            outcome.append(None)
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)

    thread = threading.Thread(target=target, name="laser-ray-init", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise TimeoutError(f"no answer within {timeout:g} s")
    if outcome[0] is not None:
        raise outcome[0]


def connect(options: FleetOptions) -> bool:
    """Attach to or start Ray; return whether this call started it (and so should stop it)."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    if not options.connect_timeout > 0:
        raise ConfigError(f"--connect-timeout must be positive, got {options.connect_timeout}")
    address = options.address or os.environ.get("RAY_ADDRESS") or None
    common = {"log_to_driver": options.log_to_driver, "configure_logging": False}
    where = f"Ray at {address}" if address and address != "local" else "a local Ray"
    try:
        if address and address != "local":
            _check_reachable(address, options.connect_timeout)
            _init_within(ray, options.connect_timeout, address=address, **common)
        else:
            # address=None would still read RAY_ADDRESS; "local" always starts a fresh local Ray.
            ray.init(address="local", num_cpus=options.num_cpus, include_dashboard=False, **common)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        lines = str(exc).strip().splitlines()
        raise ConfigError(
            f"cannot start or attach to {where}: {lines[0] if lines else type(exc).__name__}"
        ) from None
    return True


def is_complete(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run (summary status ``complete``)."""
    from laser_plugin.io.run_dir import load_run

    if not (run_dir / "summary.json").is_file():
        return False
    try:
        return load_run(run_dir).status == "complete"
    except (LaserError, OSError, ValueError):
        return False


def _skipped_record(job: Job, out: Path) -> dict[str, Any]:
    from laser_plugin.io.run_dir import load_run

    run = load_run(out)
    s = run.summary
    return {
        "name": job.name,
        "path": job.path,
        "output": str(out),
        "status": "skipped",
        "attempts": 0,
        "frames": int(s.get("frames", len(run.frames))),
        "windows": int(s.get("windows", 0)),
        "seconds": s.get("elapsed_s"),
        "errors": [],
    }


def _remote_job(
    job: Job, output_root: str, spec: TaskSpec, attempt: int, progress
) -> dict[str, Any]:
    """Body of the Ray task (module level, so workers import it rather than unpickle it)."""

    def report(name: str, frames: int) -> None:
        progress.report.remote(name, frames)

    return run_job(job, output_root, spec, attempt, report if progress is not None else None)


def _progress_actor(ray):
    @ray.remote(num_cpus=0)
    class FleetProgress:
        """Frames reconstructed so far, per video (latest attempt), reported by the tasks."""

        def __init__(self):
            self.frames: dict[str, int] = {}

        def report(self, name: str, frames: int) -> None:
            self.frames[name] = frames

        def total(self) -> int:
            return sum(self.frames.values())

    return FleetProgress.remote()


def run_batch(
    jobs: Sequence[Job],
    output_root: str | Path,
    spec: TaskSpec,
    options: FleetOptions | None = None,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    device: str = "auto",
) -> BatchResult:
    """Reconstruct every job into ``output_root/<name>`` on Ray; return one record per video.

    A record holds ``name, path, output, status`` (``complete``, ``skipped`` (complete before),
    ``failed``), ``attempts``, ``frames``, ``windows``, ``seconds``, ``error`` (the last one) and
    ``errors`` (one per failed attempt). ``device`` is where each task's network runs: ``auto``
    (the GPU Ray assigns when the cluster has GPUs, else the CPU), ``cpu`` or ``cuda``. ``on_update(state)`` is called about twice a second with
    ``done, total, running, failed, retried, frames, fps`` for a progress display. The records are
    also written to ``output_root/batch_summary.json`` as the batch goes.
    """
    from laser_plugin.io.atomic import write_json_atomic

    options = options or FleetOptions()
    if options.retries < 0:
        raise ConfigError(f"retries must be >= 0, got {options.retries}")
    for job in jobs:
        # The batch's own file lives beside the run directories: a video of that name would
        # collide with it (a folder where the records go, or records over a run).
        if job.name.lower() == SUMMARY_NAME.lower():
            raise ConfigError(
                f"a video cannot be named {SUMMARY_NAME} ({job.path}): the batch keeps its "
                "records under that name; give it another name in the manifest"
            )
    root = Path(output_root).expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output root {root}: {exc.strerror or exc}") from None
    ray = _import_ray()
    started = connect(options)
    t0 = time.perf_counter()
    records: dict[str, dict[str, Any]] = {}
    pending: dict[Any, tuple[Job, int]] = {}  # ref -> (job, attempt)
    used_gpus = False
    spec = dataclasses.replace(spec)  # the device set below is this batch's, not the caller's
    try:
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        if device == "cuda" and not has_gpus:
            raise ConfigError("--device cuda: the Ray cluster has no GPUs (use auto or cpu)")
        used_gpus = has_gpus and device != "cpu"
        if used_gpus:
            spec.device = "cuda"  # the GPU Ray pinned the task to (it sets CUDA_VISIBLE_DEVICES)
            resources = {"num_gpus": options.gpus_per_task, "num_cpus": options.cpus_per_task}
        else:
            spec.device = "cpu"
            resources = {"num_gpus": 0, "num_cpus": options.cpus_per_task}
        spec.threads = max(1, int(options.cpus_per_task))
        remote = ray.remote(_remote_job)
        progress = _progress_actor(ray)
        spec_ref = ray.put(spec)

        todo = []
        for job in jobs:
            out = root / job.name
            if not options.force and is_complete(out):
                records[job.name] = _skipped_record(job, out)
            else:
                todo.append(job)

        def submit(job: Job, attempt: int) -> None:
            ref = remote.options(name=f"laser:{job.name}", max_retries=0, **resources).remote(
                job, str(root), spec_ref, attempt, progress
            )
            pending[ref] = (job, attempt)

        for job in todo:
            records[job.name] = {
                "name": job.name,
                "path": job.path,
                "output": str(root / job.name),
                "status": "pending",
                "attempts": 0,
                "frames": 0,
                "errors": [],
            }
            submit(job, 1)

        retried = 0
        last_write = 0.0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.5)
            for ref in ready:
                job, attempt = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except ray.exceptions.RayError as exc:  # worker or node died, task lost, ...
                    lines = str(exc).strip().splitlines()
                    res = {
                        "ok": False,
                        "retryable": True,
                        "error": f"{type(exc).__name__}: {lines[0] if lines else ''}",
                    }
                rec = records[job.name]
                rec["attempts"] = attempt
                if res.get("ok"):
                    rec.update(
                        {k: v for k, v in res.items() if k not in ("ok", "attempt")},
                        status="complete",
                    )
                    rec["fps"] = (
                        round(rec["frames"] / rec["seconds"], 2) if rec.get("seconds") else None
                    )
                    continue
                rec["errors"].append(res["error"])
                rec.update(
                    error=res["error"],
                    frames=res.get("frames", 0),
                    seconds=res.get("seconds"),
                    traceback=res.get("traceback"),
                    retryable=res.get("retryable", True),
                )
                if res.get("retryable", True) and attempt <= options.retries:
                    retried += 1
                    rec["status"] = "retrying"
                    submit(job, attempt + 1)
                else:
                    rec["status"] = "failed"
            now = time.perf_counter()
            if on_update is not None:
                frames = ray.get(progress.total.remote())
                on_update(
                    {
                        "done": sum(
                            r["status"] in ("complete", "skipped", "failed")
                            for r in records.values()
                        ),
                        "total": len(jobs),
                        "running": len(pending),
                        "failed": sum(r["status"] == "failed" for r in records.values()),
                        "retried": retried,
                        "frames": frames,
                        "fps": frames / max(now - t0, 1e-9),
                    }
                )
            if ready and now - last_write > 2.0:
                _write_summary(write_json_atomic, root, jobs, records, now - t0, used_gpus)
                last_write = now
    except KeyboardInterrupt:
        for ref in list(pending):
            ray.cancel(ref, force=True)
        for rec in records.values():
            if rec["status"] in ("pending", "retrying"):
                rec["status"] = "cancelled"
        _write_summary(write_json_atomic, root, jobs, records, time.perf_counter() - t0, used_gpus)
        raise
    finally:
        if started:
            ray.shutdown()
    seconds = time.perf_counter() - t0
    path = _write_summary(write_json_atomic, root, jobs, records, seconds, used_gpus)
    ordered = [records[j.name] for j in jobs]
    counts = {s: sum(r["status"] == s for r in ordered) for s in ("complete", "skipped", "failed")}
    return BatchResult(ordered, seconds, used_gpus, path, counts)


def _write_summary(
    write_json_atomic, root: Path, jobs, records, seconds: float, used_gpus: bool
) -> Path:
    ordered = [records[j.name] for j in jobs if j.name in records]
    path = root / SUMMARY_NAME
    write_json_atomic(
        path,
        {
            "seconds": round(seconds, 3),
            "gpus": used_gpus,
            "counts": {
                s: sum(r["status"] == s for r in ordered)
                for s in ("complete", "skipped", "failed", "cancelled")
            },
            "frames": sum(int(r.get("frames") or 0) for r in ordered if r["status"] == "complete"),
            "videos": ordered,
        },
    )
    return path
