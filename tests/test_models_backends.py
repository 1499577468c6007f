"""π³ and VGGT backends with tiny random weights: the ReconstructionModel contract."""

import numpy as np
import pytest
import torch

from laser_plugin.errors import ConfigError, InputError
from laser_plugin.models import pi3, vggt
from laser_plugin.types import ReconstructionModel

BACKENDS = {"pi3": pi3, "vggt": vggt}


def _images(n=3, h=28, w=42, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=["pi3", "vggt"])
def model(request):
    return BACKENDS[request.param].make_model(size="tiny", random_init=True, seed=0)


def test_prediction_shapes_and_conventions(model):
    assert isinstance(model, ReconstructionModel)
    assert model.name in ("pi3", "vggt") and "commercial" in model.license
    pred = model(_images())
    pred.validate(num_frames=3)
    assert pred.image_size == (28, 42)
    for t in (pred.depth, pred.conf, pred.cam_to_world, pred.intrinsics):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    assert (pred.depth > 0).all()
    rot = pred.cam_to_world[:, :3, :3]
    torch.testing.assert_close(
        rot @ rot.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(pred.cam_to_world[:, 3], torch.tensor([0.0, 0, 0, 1]).expand(3, 4))
    K = pred.intrinsics
    assert (K[:, 0, 0] > 0).all() and (K[:, 1, 1] > 0).all()
    # image centre of 42x28, pixel centres at integers: ((W - 1) / 2, (H - 1) / 2)
    torch.testing.assert_close(K[:, :2, 2], torch.tensor([20.5, 13.5]).expand(3, 2))
    if model.name == "pi3":
        assert ((pred.conf > 0) & (pred.conf < 1)).all()  # sigmoid of logits
    else:
        assert (pred.conf >= 1).all()  # 1 + exp


def test_vggt_first_frame_is_the_reference_view():
    # Frame 0 gets its own camera/register tokens: swapping two later frames permutes their
    # outputs but leaves frame 0's prediction unchanged (up to float noise).
    m = vggt.make_model(size="tiny", random_init=True, seed=1)
    x = _images(4)
    a = m.forward_raw(x, ("camera", "depth"))
    b = m.forward_raw(x[[0, 2, 1, 3]], ("camera", "depth"))
    torch.testing.assert_close(
        a["pose_enc"][0, [0, 2, 1, 3]], b["pose_enc"][0], atol=1e-5, rtol=1e-4
    )
    torch.testing.assert_close(a["depth"][0, [0, 2, 1, 3]], b["depth"][0], atol=1e-5, rtol=1e-4)


def test_pi3_is_permutation_equivariant():
    # No reference frame in π³: permuting the inputs permutes every per-frame output.
    m = pi3.make_model(size="tiny", random_init=True, seed=1)
    x = _images(3)
    perm = [2, 0, 1]
    a, b = m.forward_raw(x), m.forward_raw(x[perm])
    for key in ("local_points", "conf", "camera_poses"):
        torch.testing.assert_close(a[key][0, perm], b[key][0], atol=1e-5, rtol=1e-4)


def test_deterministic_across_calls_and_builds(model):
    x = _images(seed=5)
    first, second = model(x), model(x)
    assert torch.equal(first.depth, second.depth) and torch.equal(
        first.cam_to_world, second.cam_to_world
    )
    rebuilt = BACKENDS[model.name].make_model(size="tiny", random_init=True, seed=0)
    torch.testing.assert_close(rebuilt(x).depth, first.depth, rtol=0, atol=0)
    other = BACKENDS[model.name].make_model(size="tiny", random_init=True, seed=1)
    assert not torch.allclose(other(x).depth, first.depth)


def test_bf16_autocast_agrees_with_fp32(model):
    x = _images(seed=7)
    fp32 = model(x)
    bf16 = BACKENDS[model.name].make_model(size="tiny", random_init=True, seed=0, dtype="bf16")
    assert bf16.dtype == torch.bfloat16
    low = bf16(x)
    rel = (low.depth - fp32.depth).norm() / fp32.depth.norm()
    assert rel < 3e-2, rel
    rel_pose = (low.cam_to_world - fp32.cam_to_world).norm() / fp32.cam_to_world.norm()
    assert rel_pose < 3e-2, rel_pose
    assert rel > 0  # autocast actually ran in lower precision


def test_cpu_default_is_fp32_and_cuda_request_without_gpu_is_a_config_error():
    assert pi3.make_model(size="tiny", random_init=True).dtype == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="cuda"):
            pi3.make_model(size="tiny", random_init=True, device="cuda")


@pytest.mark.parametrize("shape", [(3, 28, 40), (2, 3, 28, 42, 1), (2, 4, 28, 42)])
def test_bad_image_tensors_are_input_errors(model, shape):
    x = torch.rand(*shape)
    if len(shape) == 3:
        x = torch.rand(2, 3, *shape[1:])
    with pytest.raises(InputError):
        model(x)


def test_pi3_input_size_follows_the_upstream_pixel_budget():
    assert pi3.input_size(480, 640) == (434, 574)
    for h, w in [(480, 640), (1080, 1920), (720, 1280), (1000, 500), (100, 100), (294, 518)]:
        out_h, out_w = pi3.input_size(h, w)
        assert out_h % 14 == 0 and out_w % 14 == 0
        assert out_h * out_w <= 255_000
        assert abs(out_w / out_h - w / h) / (w / h) < 0.06
    # small images are upscaled to the budget too, as upstream does
    assert pi3.input_size(100, 100) == (504, 504)


def test_vggt_input_size_is_width_518():
    assert vggt.input_size(480, 640) == (392, 518)
    assert vggt.input_size(1080, 1920) == (294, 518)
    assert vggt.input_size(1920, 1080) == (518, 518)  # upstream centre-crops; capped here
    for h, w in [(480, 640), (720, 1280), (300, 700)]:
        out_h, out_w = vggt.input_size(h, w)
        assert out_w == 518 and out_h % 14 == 0


def test_unknown_size_is_rejected():
    with pytest.raises(ValueError, match="size"):
        pi3.make_model(size="huge", random_init=True)


def test_preprocess_resamples_like_upstream():
    from PIL import Image

    rng = np.random.default_rng(0)
    image = (rng.random((90, 160, 3)) * 255).astype(np.uint8)
    h, w = pi3.input_size(90, 160)
    expected = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.LANCZOS))
    out = pi3.Pi3Model.preprocess(image)
    assert out.shape == (3, h, w) and out.dtype == torch.float32
    np.testing.assert_array_equal((out * 255).round().byte().permute(1, 2, 0).numpy(), expected)
    # VGGT, portrait: width 518, then a centre crop to 518 rows
    tall = (rng.random((200, 100, 3)) * 255).astype(np.uint8)
    full = np.asarray(Image.fromarray(tall).resize((518, 1036), Image.Resampling.BICUBIC))
    out = vggt.VGGTModel.preprocess(tall)
    assert out.shape == (3, 518, 518) == (3, *vggt.input_size(200, 100))
    np.testing.assert_array_equal(
        (out * 255).round().byte().permute(1, 2, 0).numpy(), full[259 : 259 + 518]
    )
    with pytest.raises(InputError):
        pi3.Pi3Model.preprocess(image.astype(np.float32))
