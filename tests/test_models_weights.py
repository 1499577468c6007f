"""Checkpoint loading: round trips, strictness, refusal of code-running pickles, clear errors."""

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from laser_plugin.errors import WeightsError
from laser_plugin.models import pi3, vggt
from laser_plugin.models.weights import read_state_dict, save_weights

BACKENDS = {"pi3": pi3, "vggt": vggt}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    # No real weights directory, no network access to the hub.
    monkeypatch.setenv("LASER_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def _images(n=2, h=28, w=42, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["pi3", "vggt"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_then_from_pretrained_round_trip(name, suffix, tmp_path, capsys):
    module = BACKENDS[name]
    src = module.make_model(size="tiny", random_init=True, seed=3)
    path = save_weights(src.net, tmp_path / f"ckpt{suffix}")
    loaded = module.make_model(weights=str(path), size="tiny")
    assert "licence" in capsys.readouterr().err
    for (k, a), (k2, b) in zip(src.net.state_dict().items(), loaded.net.state_dict().items()):
        assert k == k2
        assert torch.equal(a, b), k
    x = _images()
    pa, pb = src(x), loaded(x)
    torch.testing.assert_close(pa.depth, pb.depth, rtol=0, atol=0)
    torch.testing.assert_close(pa.cam_to_world, pb.cam_to_world, rtol=0, atol=0)


def test_default_location_is_used_when_no_path_is_given(tmp_path):
    src = pi3.make_model(size="tiny", random_init=True)
    target = pi3.CHECKPOINT.default_path
    assert str(target).startswith(str(tmp_path))
    target.parent.mkdir(parents=True)
    save_weights(src.net, target)
    loaded = pi3.make_model(size="tiny")
    assert torch.equal(loaded.net.register_token, src.net.register_token)


def test_directory_holding_the_released_file_name_works(tmp_path):
    src = vggt.make_model(size="tiny", random_init=True)
    save_weights(src.net, tmp_path / "model.pt")
    loaded = vggt.make_model(weights=str(tmp_path), size="tiny")
    assert torch.equal(loaded.net.aggregator.camera_token, src.net.aggregator.camera_token)


def test_vggt_checkpoint_with_a_track_head_loads_and_skips_it(tmp_path):
    src = vggt.make_model(size="tiny", random_init=True)
    state = dict(src.net.state_dict())
    state["track_head.tracker.query_ref_token"] = torch.zeros(1, 2, 388)
    save_weights(state, tmp_path / "with_track.pt")
    vggt.make_model(weights=str(tmp_path / "with_track.pt"), size="tiny")


@pytest.mark.parametrize("name", ["pi3", "vggt"])
def test_missing_weights_give_a_one_line_hint(name):
    module = BACKENDS[name]
    with pytest.raises(WeightsError) as info:
        module.make_model(size="tiny")
    msg = str(info.value)
    assert "\n" not in msg
    assert module.CHECKPOINT.url in msg
    assert str(module.CHECKPOINT.default_path) in msg


def test_nonexistent_path_and_offline_hub_id_are_weights_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        pi3.make_model(weights=str(tmp_path / "nope.safetensors"), size="tiny")
    with pytest.raises(WeightsError, match="model hub"):
        pi3.make_model(weights="someone/not-a-real-repo-xyz", size="tiny")


def test_wrong_model_checkpoint_is_refused_strictly(tmp_path):
    path = save_weights(
        vggt.make_model(size="tiny", random_init=True).net, tmp_path / "vggt.safetensors"
    )
    with pytest.raises(WeightsError, match="not a pi3 checkpoint") as info:
        pi3.make_model(weights=str(path), size="tiny")
    assert "missing" in str(info.value) and "unexpected" in str(info.value)


def test_wrong_size_is_refused_with_shapes(tmp_path):
    path = save_weights(
        pi3.make_model(size="tiny", random_init=True).net, tmp_path / "tiny.safetensors"
    )
    with pytest.raises(WeightsError, match="another shape"):
        pi3.make_model(weights=str(path), size="tiny", enc_dim=32, enc_heads=2)


def test_one_missing_key_is_refused(tmp_path):
    state = dict(pi3.make_model(size="tiny", random_init=True).net.state_dict())
    del state["image_mean"]
    path = save_weights(state, tmp_path / "partial.safetensors")
    with pytest.raises(WeightsError, match=r"1 missing .*image_mean"):
        pi3.make_model(weights=str(path), size="tiny")


class _Payload:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "x": _Payload(marker)}, path, pickle_protocol=2)
    with pytest.raises(WeightsError, match="refusing"):
        read_state_dict(path)
    assert not marker.exists()
    # and plain pickle files (not torch zip archives) are refused the same way
    raw = tmp_path / "evil.bin"
    raw.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    with pytest.raises(WeightsError):
        read_state_dict(raw)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_file_is_a_weights_error(suffix, tmp_path):
    path = save_weights(
        pi3.make_model(size="tiny", random_init=True).net, tmp_path / f"ckpt{suffix}"
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated"):
        pi3.make_model(weights=str(path), size="tiny")


def test_non_tensor_content_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsError, match="state dict"):
        read_state_dict(path)


def test_nested_training_checkpoint_is_unwrapped(tmp_path):
    net = pi3.make_model(size="tiny", random_init=True).net
    path = tmp_path / "train.pt"
    torch.save({"model": net.state_dict(), "epoch": 3}, path)
    assert read_state_dict(path).keys() == net.state_dict().keys()


def test_importing_backends_is_cheap():
    # No weights, network or network construction at import time (torch itself excluded).
    code = (
        "import time, torch, laser_plugin.types; t = time.perf_counter(); "
        "import laser_plugin.models.pi3, laser_plugin.models.vggt; print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip().splitlines()[-1]) < 1.0
