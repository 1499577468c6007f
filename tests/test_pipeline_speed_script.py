"""benchmarks/speed.py runs end to end on the CPU (tiny networks) and reports what it promises."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, args: list[str], out: Path) -> tuple[dict, str]:
    """Run ``benchmarks/NAME`` on the CPU, one thread; return its JSON (``--out``) and stdout."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / name), *args, "--out", str(out)]
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout


def test_speed_script_smoke(tmp_path):
    args = [
        "--model", "pi3", "--device", "cpu", "--size", "tiny", "--frames", "24", "--height", "42",
        "--width", "56", "--src-height", "45", "--src-width", "60", "--window", "8",
        "--overlap", "3", "--no-compile", "--no-ladder", "--process-transfers", "local",
        "--no-process-cpu-align", "--images-after-too",
    ]  # fmt: skip
    res, stdout = run_script("speed.py", args, tmp_path / "speed.json")
    for key in ("baseline", "fast", "fast_network_only", "fast_e2e_sequential_align_gpu",
                "process_local", "process_local_images_after", "process_local_images_before_again"):  # fmt: skip
        assert "error" not in res[key], res[key]
    assert res["process_local_images_after"]["frames"] == 24
    assert res["baseline"]["frames"] == 24 and res["fast"]["frames"] == 24
    assert res["fast"]["new_fps"] > 0 and res["baseline"]["network_only_new_fps"] > 0
    assert res["fast"]["latency_ms"]["max"] >= res["fast"]["latency_ms"]["p50"] > 0
    assert res["fast_network_only"]["cache_hits"] > 0  # overlap tokens were reused
    # On the CPU both paths run in fp32: the same numbers as the fp32 reference, cache included.
    assert res["baseline_accuracy"][1]["depth"] < 1e-5
    assert res["fast_accuracy"][1]["depth"] < 1e-5 and res["fast_accuracy"][1]["pose"] < 1e-5
    assert "speedup_e2e" in res and "== pi3 on CPU" in stdout


def test_multi_gpu_script_smoke_on_two_cpu_workers(tmp_path):
    """benchmarks/speed_multi_gpu.py --process: both prepare modes, one and two workers, the same
    frames (the figures themselves only mean something on GPUs)."""
    args = [
        "--process", "--devices", "cpu,cpu", "--size", "tiny", "--frames", "30", "--height", "42",
        "--width", "56", "--window-size", "8", "--overlap", "3", "--prepare", "processes,none",
    ]  # fmt: skip
    rows = run_script("speed_multi_gpu.py", args, tmp_path / "multi.json")[0]["results"]
    assert [(r["gpus"], r["prepare"]) for r in rows] == [
        (1, "processes"), (1, "none"), (2, "processes"), (2, "none"),
    ]  # fmt: skip
    for r in rows:
        assert r["end_to_end_new_fps"] > 0 and sum(r["windows_per_worker"]) == r["windows"]
        # Windows a worker process prepared skip the aligning process's own preparing.
        assert ("worker_prepare" in r["ms_per_window"]) == (r["prepare"] == "processes")
    for r in rows[1:]:  # same frames whatever the mode and the number of workers
        assert r["max_abs_pose_diff_vs_1"] == 0.0 and r["max_abs_depth_diff_vs_1"] == 0.0


def test_kernels_script_smoke(tmp_path):
    """benchmarks/kernels.py at toy sizes on the CPU: every variant runs and stays within bf16
    rounding of its fp32 reference (the timings only mean something on a GPU)."""
    args = ["--tiny", "--device", "cpu", "--iters", "2", "--only", "attention", "dpt"]
    res, stdout = run_script("kernels.py", args, tmp_path / "kernels.json")
    for shape in ("global", "frame"):
        row = res["attention"][shape]
        assert row["matmul_floor_ms"] > 0
        timed = {k: v for k, v in row.items() if isinstance(v, dict) and "ms" in v}
        assert "math" in timed  # the CPU always has the math backend
        assert all(0 < v["err_vs_fp32"] < 1e-2 for v in timed.values()), timed
    variants = {k: v for k, v in res["dpt"].items() if isinstance(v, dict)}
    assert "bf16_chunk20_channels_last_compiled" in variants and len(variants) == 7
    assert all(0 < v["err_vs_fp32"] < 1e-2 and v["ms"] > 0 for v in variants.values()), variants
    assert "attention global" in stdout and "dpt bf16_chunk4:" in stdout
