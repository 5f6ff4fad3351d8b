"""Upscale models: spandrel without torchvision, loading files, ComfyUI's tile layout, the out-of-memory
fallback, the full-size Real-ESRGAN key table, and the two nodes.

The reference network is tests/upscale_reference.py's RRDBNet (written from the Real-ESRGAN
architecture, not spandrel's code), saved with random weights in Real-ESRGAN's key layout."""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from safetensors.torch import save_file

from diffusion.loading.files import CheckpointError
from diffusion.loading.upscale_models import (UpscaleModelError, import_spandrel, load_upscale_model,
                                              upscale_model_from_state_dict)
from diffusion.upscale import feather_mask, tile_starts, tiled_scale, upscale_image
from tests.upscale_reference import RRDBNet, tiny_rrdbnet

pytestmark = pytest.mark.skipif(importlib.util.find_spec("spandrel") is None,
                                reason="spandrel is not installed (the Makefile installs it with --no-deps)")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def net():
    return tiny_rrdbnet(seed=0)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, net):
    """The tiny network as Real-ESRGAN ships its weights: a .pth holding {"params_ema": state dict}."""
    path = tmp_path_factory.mktemp("upscale") / "tiny_x4.pth"
    torch.save({"params_ema": net.state_dict()}, path)
    return path


# -- spandrel without torchvision -----------------------------------------------------------------

def test_spandrel_imports_and_leaves_no_fake_torchvision():
    spandrel = import_spandrel()
    assert "ESRGAN" in spandrel.MAIN_REGISTRY and "RestoreFormer" in spandrel.MAIN_REGISTRY
    if importlib.util.find_spec("torchvision") is None:  # our machines: the stand-in was used and removed
        assert not any(name == "torchvision" or name.startswith("torchvision.") for name in sys.modules)


def test_stand_in_normalize_is_torchvisions_formula():
    from diffusion.loading.upscale_models import _normalize

    x = torch.rand(2, 3, 5, 4)
    mean, std = [0.5, 0.4, 0.3], [0.5, 0.25, 2.0]
    expected = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    assert torch.allclose(_normalize(x, mean, std), expected, atol=1e-7)
    assert torch.equal(x, x.clone())  # not in place by default
    with pytest.raises(ValueError, match="zero"):
        _normalize(x, mean, [1.0, 0.0, 1.0])


# -- loading ---------------------------------------------------------------------------------------

def test_pth_and_safetensors_load_as_the_reference_network(net, model_file, tmp_path):
    st = tmp_path / "tiny_x4.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(st))
    x = torch.rand(1, 3, 24, 20)
    with torch.no_grad():
        expected = net(x).clamp(0, 1)
        for path in (model_file, st):
            model = load_upscale_model(path)
            assert (model.architecture.name, model.scale, model.input_channels) == ("ESRGAN", 4, 3)
            assert not model.model.training
            assert torch.allclose(model(x), expected, atol=1e-5), path


def test_refuses_pickled_objects_and_unknown_weights(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"params_ema": {"w": torch.zeros(1)}, "trainer": _Opaque()}, evil)
    with pytest.raises(CheckpointError, match="refusing"):
        load_upscale_model(evil)
    other = tmp_path / "not_an_upscaler.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)}, str(other))
    with pytest.raises(UpscaleModelError, match="no upscale architecture"):
        load_upscale_model(other)


def test_wrong_shapes_name_the_file(tmp_path, net):
    sd = dict(net.state_dict())
    sd["conv_body.weight"] = torch.zeros(8, 8, 1, 1)
    path = tmp_path / "broken.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(UpscaleModelError, match=r"broken\.safetensors.*do not fit"):
        load_upscale_model(path)


class _Opaque:
    pass


def test_full_size_realesrgan_x4plus_keys_on_meta():
    """RealESRGAN_x4plus: 23 blocks of 64 features, 702 tensors; built and loaded without memory."""
    with torch.device("meta"):
        table = RRDBNet(feat=64, blocks=23, grow=32).state_dict()
        assert len(table) == 702
        model = upscale_model_from_state_dict(dict(table), where="RealESRGAN_x4plus")
    assert (model.architecture.name, model.scale, model.input_channels, model.output_channels) == ("ESRGAN", 4, 3, 3)
    loaded = model.model.state_dict()
    assert len(loaded) == len(table)  # spandrel's strict load: nothing missing, nothing left over
    assert sorted(tuple(t.shape) for t in loaded.values()) == sorted(tuple(t.shape) for t in table.values())
    assert all(t.device.type == "meta" for t in loaded.values())


# -- the tile layout -------------------------------------------------------------------------------

def test_tile_starts_and_feather_follow_comfyui():
    assert tile_starts(512, 512, 32) == [0]
    assert tile_starts(513, 512, 32) == [0, 480]        # the second tile is 33 px
    assert tile_starts(1000, 512, 32) == [0, 480, 960]
    assert tile_starts(120, 64, 24) == [0, 40, 80]
    assert feather_mask(1, 5, 3)[0].tolist() == pytest.approx([1 / 3, 2 / 3, 1, 2 / 3, 1 / 3])
    m = feather_mask(4, 6, 2)
    assert m[0, 0].item() == pytest.approx(0.25) and m[1, 2].item() == 1.0 and m[0, 3].item() == 0.5
    assert torch.equal(feather_mask(3, 3, 4), torch.ones(3, 3))  # sides not longer than the feather


def test_pointwise_function_is_reproduced_exactly_through_tiles():
    x = torch.rand(2, 3, 70, 90)

    def up(t):
        return torch.nn.functional.interpolate(t * 0.5 + 0.25, scale_factor=2, mode="nearest")

    out = tiled_scale(x, up, 2, 3, tile=32, overlap=8)
    assert torch.allclose(out, up(x), atol=1e-6)


def _exact_rows(length, starts, tile, radius):
    """Per input row: True where every tile covering it sees `radius` px of real context inside the
    tile on each side that is not the image border (so the network's output there is exact)."""
    ok = torch.ones(length, dtype=torch.bool)
    for s in starts:
        e = min(s + tile, length)
        for y in range(s, e):
            if (s > 0 and y - s < radius) or (e < length and e - 1 - y < radius):
                ok[y] = False
    return ok


def test_tiled_equals_whole_image_away_from_seams(net):
    model = upscale_model_from_state_dict(net.state_dict())
    x = torch.rand(1, 3, 120, 110, generator=torch.Generator().manual_seed(3))
    tile, overlap = 64, 24
    with torch.no_grad():
        whole = model(x)
        tiled = tiled_scale(x, model, model.scale, 3, tile=tile, overlap=overlap)
    # the layout is written out here, not taken from the module: starts every 40 px, last tile short
    rows = _exact_rows(120, [0, 40, 80], tile, RRDBNet.TINY_RADIUS)
    cols = _exact_rows(110, [0, 40, 80], tile, RRDBNet.TINY_RADIUS)
    exact = (rows[:, None] & cols[None, :]).repeat_interleave(4, 0).repeat_interleave(4, 1)
    assert exact.float().mean() > 0.3
    diff = (tiled - whole).abs()[0].amax(0)
    assert diff[exact].max() < 1e-4
    assert diff[~exact].max() > 1e-4  # the seams really are blends of tiles (the check above can fail)
    assert diff.max() < 0.05


# -- out of memory ---------------------------------------------------------------------------------

class _Limited:
    """An UPSCALE_MODEL stand-in: a nearest x2 upscaler that runs out of memory on tiles above `limit` px."""

    scale, input_channels, output_channels = 2, 3, 3

    def __init__(self, limit):
        self.limit, self.seen, self.model, self.devices = limit, [], torch.nn.Identity(), []

    def to(self, device):
        self.devices.append(str(device))
        return self

    def __call__(self, t):
        self.seen.append(max(t.shape[2:]))
        if max(t.shape[2:]) > self.limit:
            raise torch.OutOfMemoryError("simulated: tile too large")
        return torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest")


def test_out_of_memory_halves_the_tile_down_to_128():
    image = torch.rand(1, 300, 280, 3)
    model = _Limited(limit=128)
    steps = []
    out = upscale_image(model, image, device="cpu", progress=lambda d, t: steps.append((d, t)))
    assert model.seen[:2] == [300, 256]  # 512: the whole image, too large; 256: the first tile, too large
    assert max(model.seen[2:]) == 128     # then 128 px tiles only
    assert torch.allclose(out, torch.nn.functional.interpolate(image.movedim(-1, 1), scale_factor=2).movedim(1, -1))
    assert steps[-1] == (9, 9) and model.devices[-1] == "cpu"   # 3 x 3 tiles of 128 px (overlap 32)

    never = _Limited(limit=64)
    with pytest.raises(torch.OutOfMemoryError):
        upscale_image(never, image, device="cpu")
    assert never.seen == [300, 256, 128]  # 512, 256, 128, then it gives up
    assert never.devices[-1] == "cpu"


def test_channel_mismatch_is_a_clear_error(net):
    model = upscale_model_from_state_dict(net.state_dict())
    with pytest.raises(ValueError, match="3-channel images, got 4"):
        upscale_image(model, torch.rand(1, 8, 8, 4), device="cpu")
