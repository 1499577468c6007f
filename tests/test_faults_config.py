"""Config and weights faults through the real CLI: one line, exit 2, no traceback, nothing run."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from cli_helpers import laser
from test_faults_common import assert_user_error, run_cli, textured_images, write_images

from laser_plugin.cli.main import main


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    # No real weights directory, no model hub.
    monkeypatch.setenv("LASER_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


@pytest.fixture
def frames(tmp_path):
    write_images(tmp_path / "frames", textured_images(4))
    return tmp_path / "frames"


CONFIG_FAULTS = [
    (["--window-size", "6", "--overlap", "6"], "overlap must be in [1, window_size)"),
    (["--window-size", "6", "--overlap", "9"], "overlap must be in [1, window_size)"),
    (["--window-size", "1"], "window_size must be at least 2"),
    (["--overlap", "0"], "overlap must be in"),
    (["--laser.iou-threshold", "0"], "iou_threshold must be positive"),
    (["--laser.iou-threshold", "1.5"], "iou_threshold must be below 1"),
    (["--laser.huber-delta", "-1"], "huber_delta must be positive"),
    (["--laser.top-conf-fraction", "0"], "top_conf_fraction must be positive"),
    (["--laser.irls-iterations", "0"], "irls_iterations must be at least 1"),
    (["--stride", "0"], "--stride must be at least 1"),
    (["--max-frames", "0"], "--max-frames must be at least 1"),
    (["--fps", "0"], "--fps must be positive"),
    (["--model", "nope"], "unknown model 'nope'"),
    (["--device", "cuda"], "no CUDA device"),
]


@pytest.mark.parametrize(
    ("extra", "needle"), CONFIG_FAULTS, ids=[" ".join(e) for e, _ in CONFIG_FAULTS]
)
def test_config_fault(tmp_path, capsys, frames, extra, needle):
    if extra[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    model = [] if "--model" in extra else ["--model", "synthetic"]
    code, err = laser(
        capsys, "run", str(frames), "--output-dir", str(tmp_path / "out"), *model, *extra
    )
    assert_user_error(code, err, needle)
    assert not (tmp_path / "out").exists()  # nothing was started


def test_unparsable_value_is_a_usage_error(tmp_path, capsys, frames):
    code, err = laser(capsys, "run", str(frames), "--window-size", "twenty")
    assert code == 2
    assert "Traceback" not in err
    assert "window-size" in err


def test_demo_config_fault(tmp_path, capsys):
    code, err = laser(
        capsys, "demo", "--output-dir", str(tmp_path / "d"), "--window-size", "3", "--overlap", "3"
    )
    assert_user_error(code, err, "overlap must be in")


# -- weights (the loaders are tested in tests/test_models_weights.py; here: what the CLI says) --


def test_missing_weights_file(tmp_path, frames):
    r = run_cli(
        "run",
        str(frames),
        "--output-dir",
        str(tmp_path / "o"),
        "--model",
        "pi3",
        "--weights",
        str(tmp_path / "missing.safetensors"),
    )
    assert_user_error(r.returncode, r.stderr, "weights not found", "missing.safetensors")


def test_truncated_weights_file(tmp_path, capsys, frames):
    from laser_plugin.models import pi3
    from laser_plugin.models.weights import save_weights

    path = save_weights(
        pi3.make_model(size="tiny", random_init=True).net, tmp_path / "tiny.safetensors"
    )
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code, err = laser(
        capsys,
        "run",
        str(frames),
        "--output-dir",
        str(tmp_path / "o"),
        "--model",
        "pi3",
        "--weights",
        str(cut),
    )
    assert_user_error(code, err, "cut.safetensors")


def test_checkpoint_of_another_model(tmp_path, capsys, frames):
    from laser_plugin.models import vggt
    from laser_plugin.models.weights import save_weights

    path = save_weights(
        vggt.make_model(size="tiny", random_init=True).net, tmp_path / "vggt.safetensors"
    )
    code, err = laser(
        capsys,
        "run",
        str(frames),
        "--output-dir",
        str(tmp_path / "o"),
        "--model",
        "pi3",
        "--weights",
        str(path),
    )
    assert_user_error(code, err, "not a pi3 checkpoint")


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_code_running_pickle_is_refused(tmp_path, frames):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"weights": torch.zeros(2), "x": _Payload(marker)}, fh)
    r = run_cli(
        "run",
        str(frames),
        "--output-dir",
        str(tmp_path / "o"),
        "--model",
        "pi3",
        "--weights",
        str(evil),
    )
    assert_user_error(r.returncode, r.stderr, "refusing to load")
    assert not marker.exists()


@pytest.mark.parametrize(
    "exc",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore detail"),
        MemoryError("cannot allocate"),
    ],
    ids=["cuda-oom", "host-oom"],
)
def test_out_of_memory_is_one_line(tmp_path, capsys, frames, monkeypatch, exc):
    import laser_plugin.models.synthetic as synthetic

    def oom(images):
        raise exc

    oom.input_size = lambda h, w: (h, w)
    monkeypatch.setattr(synthetic, "make_model", lambda weights=None, device="cpu", **kw: oom)
    code, err = laser(
        capsys, "run", str(frames), "--output-dir", str(tmp_path / "o"), "--model", "synthetic"
    )
    line = assert_user_error(code, err, "out of memory", "--window-size")
    assert "more detail" not in line


def test_other_runtime_errors_are_not_disguised(tmp_path, frames, monkeypatch):
    """A bug is not a user mistake: it keeps its traceback."""
    import laser_plugin.models.synthetic as synthetic

    def broken(images):
        raise RuntimeError("shape mismatch in layer 3")

    broken.input_size = lambda h, w: (h, w)
    monkeypatch.setattr(synthetic, "make_model", lambda weights=None, device="cpu", **kw: broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["run", str(frames), "--output-dir", str(tmp_path / "o"), "--model", "synthetic"])
