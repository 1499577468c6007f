"""Many videos at once on Ray (``laser batch``): one task per video, retried, resumable."""

from laser_plugin.batch.fleet import BatchResult as BatchResult
from laser_plugin.batch.fleet import FleetOptions as FleetOptions
from laser_plugin.batch.fleet import run_batch as run_batch
from laser_plugin.batch.manifest import Job as Job
from laser_plugin.batch.manifest import read_manifest as read_manifest
from laser_plugin.batch.task import TaskSpec as TaskSpec
from laser_plugin.batch.task import run_job as run_job

__all__ = [
    "BatchResult",
    "FleetOptions",
    "Job",
    "TaskSpec",
    "read_manifest",
    "run_batch",
    "run_job",
]
