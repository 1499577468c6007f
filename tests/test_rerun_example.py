"""examples/stream_to_rerun.py runs on the demo scene and writes a recording with every frame."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from laser_plugin import LaserConfig
from laser_plugin.integrations.rerun import RerunConfig

RrdReader = pytest.importorskip("rerun.chunk").RrdReader

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "stream_to_rerun.py"


def test_stream_to_rerun_example_writes_every_frame(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("stream_to_rerun", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # dataclasses look their module up there
    try:
        spec.loader.exec_module(example)
    finally:
        del sys.modules[spec.name]
    out = tmp_path / "demo.rrd"
    args = example.Args(
        rerun=f"save:{out}",
        max_frames=8,
        laser=LaserConfig(window_size=5, overlap=2),
        viewer=RerunConfig(recording_id="example"),
    )
    assert example.main(args) == 0
    assert "streamed 8 frames" in capsys.readouterr().out
    frames = sorted(
        i
        for ch in RrdReader(str(out)).stream()
        if ch.entity_path == "/world/camera"
        for i in ch.to_record_batch().column("frame").to_pylist()
    )
    assert frames == list(range(8))
