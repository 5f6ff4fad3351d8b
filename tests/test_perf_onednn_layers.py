"""The UNet's CPU oneDNN layers. Conv2d (weight packed once): same results as F.conv2d within float
rounding (tolerance 1e-5 relative to the output's largest magnitude), a pack that follows weight
replacement and in-place edits, and the plain kernel wherever packing does not apply. Linear (fused
bias): same results as F.linear within the same tolerance, and autograd's path when training."""
import pytest
import torch
import torch.nn.functional as F

from diffusion.models import unet as U
from unet_tiny import tiny_unet

REL_TOL = 1e-5

pytestmark = pytest.mark.skipif(not U._HAS_PACKED_CONV, reason="torch built without oneDNN")


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _conv(cin=256, cout=64, k=3, **kw):
    torch.manual_seed(0)
    conv = U.Conv2d(cin, cout, k, padding=k // 2, **kw).requires_grad_(False)
    with torch.no_grad():
        conv.bias.normal_()
    return conv


@pytest.fixture(autouse=True)
def _restore_flag():
    yield
    U.set_conv_prepack(True)


def test_small_outputs_use_the_pack_and_match_conv2d():
    conv = _conv()
    x = torch.randn(2, 256, 3, 3)  # 256*9 weights per position >= 128 * 18 positions
    assert conv._use_packed(x)
    out = conv(x)
    assert conv._packed is not None
    assert out.is_contiguous() and out.shape == (2, 64, 3, 3)
    assert _rel(out, F.conv2d(x, conv.weight, conv.bias, padding=1)) < REL_TOL


@pytest.mark.parametrize("stride,kernel,size", [(2, 3, 5), (1, 1, 1)])
def test_strided_and_pointwise_convolutions(stride, kernel, size):
    conv = _conv(k=kernel, stride=stride)
    x = torch.randn(1, 256, size, 2)
    assert conv._use_packed(x)
    ref = F.conv2d(x, conv.weight, conv.bias, stride=stride, padding=kernel // 2)
    assert _rel(conv(x), ref) < REL_TOL


def test_one_pack_serves_other_input_shapes():
    conv = _conv()
    conv(torch.randn(2, 256, 3, 3))
    packed = conv._packed
    x = torch.randn(1, 256, 2, 5)
    assert _rel(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1)) < REL_TOL
    assert conv._packed is packed


def test_pack_follows_replaced_and_modified_weights():
    conv = _conv()
    x = torch.randn(1, 256, 2, 2)
    conv(x)
    # replaced, as ModelPatcher does for LoRA
    conv.weight = torch.nn.Parameter(conv.weight * 2, requires_grad=False)
    assert _rel(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1)) < REL_TOL
    # modified in place
    with torch.no_grad():
        conv.weight.mul_(-0.5)
    assert _rel(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1)) < REL_TOL


def test_plain_kernel_when_disabled_large_or_autograd():
    conv = _conv()
    small = torch.randn(1, 256, 2, 2)
    U.set_conv_prepack(False)
    assert not conv._use_packed(small)
    assert torch.equal(conv(small), F.conv2d(small, conv.weight, conv.bias, padding=1))
    U.set_conv_prepack(True)
    assert not conv._use_packed(torch.randn(2, 256, 16, 16))  # enough positions: plain is as fast
    assert not conv._use_packed(small.double())
    conv.requires_grad_(True)
    assert not conv._use_packed(small)  # training keeps autograd's kernel
    conv.requires_grad_(False)
    assert conv._use_packed(small)
    assert "_packed" not in conv.state_dict() and set(conv.state_dict()) == {"weight", "bias"}


@pytest.mark.skipif(not U._HAS_ONEDNN_LINEAR, reason="torch built without oneDNN linear")
@pytest.mark.parametrize("shape,bias", [((2, 7, 48), True), ((5, 48), False), ((3, 2, 4, 48), True)])
def test_linear_matches_f_linear(shape, bias):
    torch.manual_seed(0)
    lin = U.Linear(48, 40, bias=bias).requires_grad_(False)
    x = torch.randn(*shape)
    if len(shape) == 3:
        x = x.transpose(0, 1).contiguous().transpose(0, 1)  # strided input too
    out = lin(x)
    assert out.shape == shape[:-1] + (40,)
    assert _rel(out, F.linear(x, lin.weight, lin.bias)) < REL_TOL


def test_linear_keeps_autograd():
    lin = U.Linear(8, 4)
    x = torch.randn(3, 8, requires_grad=True)
    lin(x).sum().backward()
    assert x.grad is not None and lin.weight.grad is not None


def test_unet_with_every_convolution_packed_matches_plain(monkeypatch):
    model = tiny_unet()
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([999.0, 10.0])
    ctx = torch.randn(2, 5, 16)
    with torch.inference_mode():
        U.set_conv_prepack(False)
        ref = model(x, t, ctx)
        U.set_conv_prepack(True)
        monkeypatch.setattr(U, "PREPACK_MIN_WEIGHT_PER_POSITION", 0)
        out = model(x, t, ctx)
    packed = [m for m in model.modules() if isinstance(m, U.Conv2d) and m._packed is not None]
    assert len(packed) == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert _rel(out, ref) < REL_TOL


def test_packs_of_weights_in_ordinary_memory_share_a_budget(monkeypatch):
    monkeypatch.setitem(U._prepack, "resident_bytes", 0)
    conv = _conv()
    nbytes = conv.weight.numel() * 4
    x = torch.randn(1, 256, 2, 2)
    monkeypatch.setattr(U, "PREPACK_RESIDENT_BUDGET", nbytes - 1)
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))  # declined: plain kernel
    assert conv._packed[2] is None and U._prepack["resident_bytes"] == 0
    monkeypatch.setattr(U, "PREPACK_RESIDENT_BUDGET", nbytes)
    conv.weight = torch.nn.Parameter(conv.weight.clone(), requires_grad=False)
    conv(x)
    assert conv._packed[2] is not None and U._prepack["resident_bytes"] == nbytes
    conv.weight = torch.nn.Parameter(conv.weight * 2, requires_grad=False)  # old pack released
    assert _rel(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1)) < REL_TOL
    assert U._prepack["resident_bytes"] == nbytes


def test_memory_mapped_weights_are_packed_beyond_the_budget(monkeypatch, tmp_path):
    import mmap

    conv = _conv()
    path = tmp_path / "w.bin"
    path.write_bytes(conv.weight.numpy().tobytes())
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    weight = torch.frombuffer(mapped, dtype=torch.float32).view(conv.weight.shape)
    assert U.memory.is_file_backed(weight) and not U.memory.is_file_backed(conv.weight)
    conv.weight = torch.nn.Parameter(weight, requires_grad=False)
    monkeypatch.setattr(U, "PREPACK_RESIDENT_BUDGET", 0)
    monkeypatch.setitem(U._prepack, "resident_bytes", 0)
    x = torch.randn(1, 256, 2, 2)
    out = conv(x)
    assert conv._packed[2] is not None and U._prepack["resident_bytes"] == 0
    assert _rel(out, F.conv2d(x, conv.weight, conv.bias, padding=1)) < REL_TOL
    del conv, weight
