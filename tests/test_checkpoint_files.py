"""Reading model files: memory-mapped safetensors without a second copy, storage dtypes,
weights-only pickles, architecture / prediction detection, and clear errors for bad files."""
import pytest
import torch
from safetensors.torch import save_file

from diffusion.loading import checkpoint as ck, files as model_files
from diffusion.models.unet import UNetModel
from unet_tiny import TINY_SD1, TINY_SDXL, tiny_unet


def _unet_sd(config=TINY_SD1, prefix="model.diffusion_model."):
    return {prefix + k: v.contiguous() for k, v in tiny_unet(config).state_dict().items()}


def _forward(model):
    g = torch.Generator().manual_seed(2)
    x, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 3, 16, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([250.0]), ctx)


@pytest.fixture(scope="module")
def sd1_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "unet.safetensors"
    sd = _unet_sd()
    save_file(sd, str(path), metadata=TINY_SD1.head_metadata())
    return path, sd


def test_safetensors_tensors_are_views_of_one_file_mapping(sd1_file):
    path, sd = sd1_file
    tensors, metadata = model_files.read_safetensors(path)
    assert metadata == TINY_SD1.head_metadata()
    assert set(tensors) == set(sd)
    size = path.stat().st_size
    storages = {t.untyped_storage().data_ptr() for t in tensors.values()}
    assert len(storages) == 1  # every tensor points into the same mapping
    assert all(t.untyped_storage().nbytes() == size for t in tensors.values())
    for k, v in sd.items():
        assert torch.equal(tensors[k], v)


def test_fp32_unet_parameters_are_the_mapped_tensors(sd1_file):
    path, sd = sd1_file
    model = ck.load_unet(path)
    size = path.stat().st_size
    params = list(model.model.parameters())
    assert all(p.untyped_storage().nbytes() == size for p in params)  # assigned, not copied
    assert model.arch == "sd1" and model.prediction == "eps"
    reference = UNetModel(TINY_SD1)
    reference.load_state_dict({k[len(ck.UNET_PREFIX):]: v for k, v in sd.items()})
    assert torch.equal(_forward(model.model), _forward(reference.eval()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_storage_loads_and_computes_in_fp32_on_cpu(tmp_path, dtype):
    sd = {k: v.to(dtype) for k, v in _unet_sd().items()}
    path = tmp_path / "half.safetensors"
    save_file(sd, str(path))
    model = ck.load_unet(path)
    assert model.dtype == torch.float32
    reference = UNetModel(TINY_SD1)
    reference.load_state_dict({k[len(ck.UNET_PREFIX):]: v.float() for k, v in sd.items()})
    assert torch.equal(_forward(model.model), _forward(reference.eval()))


def test_unet_only_file_without_prefix(tmp_path):
    path = tmp_path / "bare.safetensors"
    save_file(_unet_sd(TINY_SDXL, prefix=""), str(path))
    assert ck.load_unet(path).arch == "sdxl"


def test_ckpt_weights_only_with_state_dict_wrapper(tmp_path, sd1_file):
    _, sd = sd1_file
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd, "global_step": 5}, path)
    model = ck.load_unet(path)
    assert model.arch == "sd1"
    assert torch.equal(_forward(model.model), _forward(ck.load_unet(sd1_file[0]).model))


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_ckpt_with_python_objects_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Evil()}, path)
    with pytest.raises(model_files.CheckpointError, match="evil.ckpt.*refusing"):
        model_files.read_state_dict(path)


def test_truncated_safetensors(tmp_path, sd1_file):
    data = sd1_file[0].read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(model_files.CheckpointError, match=r"cut\.safetensors.*truncated"):
        ck.load_unet(path)


@pytest.mark.parametrize("payload", [b"", b"\x05\x00", b"\xff" * 64,
                                     (20).to_bytes(8, "little") + b"{not json at all!!!}"])
def test_corrupt_files(tmp_path, payload):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(payload)
    with pytest.raises(model_files.CheckpointError, match=r"bad\.safetensors"):
        ck.load_checkpoint(path)


def test_corrupt_ckpt(tmp_path):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(model_files.CheckpointError, match=r"bad\.ckpt.*truncated or corrupt"):
        ck.load_unet(path)


def test_missing_file(tmp_path):
    with pytest.raises(model_files.CheckpointError, match="nope.safetensors: file not found"):
        ck.load_checkpoint(tmp_path / "nope.safetensors")


def test_unrecognised_contents(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(model_files.CheckpointError, match="other.safetensors: holds no UNet"):
        ck.load_checkpoint(path)
    with pytest.raises(model_files.CheckpointError, match="other.safetensors: holds no UNet"):
        ck.load_unet(path)
    diffusers_like = tmp_path / "diffusers.safetensors"
    save_file({"conv_in.weight": torch.zeros(4, 4, 3, 3), "down_blocks.0.resnets.0.conv1.weight":
               torch.zeros(1)}, str(diffusers_like))
    with pytest.raises(model_files.CheckpointError, match="diffusers' layout"):
        ck.load_unet(diffusers_like)


def test_unet_with_missing_tensors_names_them(tmp_path):
    sd = _unet_sd()
    dropped = "model.diffusion_model.output_blocks.3.1.proj_out.weight"
    del sd[dropped]
    path = tmp_path / "partial.safetensors"
    save_file(sd, str(path))
    with pytest.raises(model_files.CheckpointError, match=r"partial\.safetensors.*missing.*proj_out"):
        ck.load_unet(path)


def test_unet_with_wrong_shape(tmp_path):
    sd = _unet_sd()
    sd["model.diffusion_model.middle_block.0.emb_layers.1.weight"] = torch.zeros(64, 99)
    path = tmp_path / "wrong.safetensors"
    save_file(sd, str(path))
    with pytest.raises(model_files.CheckpointError, match=r"wrong\.safetensors.*emb_layers"):
        ck.load_unet(path)


def test_split_state_dict_by_prefix():
    sd = {"model.diffusion_model.a": 1, "first_stage_model.decoder.b": 2,
          "cond_stage_model.transformer.c": 3, "conditioner.embedders.1.model.d": 4, "junk": 5}
    parts = ck.split_state_dict(sd)
    assert parts == {"unet": {"a": 1}, "vae": {"decoder.b": 2},
                     "clip": {"cond_stage_model.transformer.c": 3, "conditioner.embedders.1.model.d": 4}}


def test_head_layout_metadata_overrides_convention(tmp_path):
    # 2 heads of 32 on a linear (SD2-style) model breaks the 64-per-head convention.
    from diffusion.loading.config import UNetConfig
    cfg = UNetConfig(model_channels=64, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1),
                     transformer_depth_output=(1, 1, 1, 1), context_dim=16, num_heads=-1,
                     num_head_channels=32, use_linear_in_transformer=True)
    net = tiny_unet(cfg)
    path = tmp_path / "heads.safetensors"
    save_file({"model.diffusion_model." + k: v for k, v in net.state_dict().items()}, str(path),
              metadata=cfg.head_metadata())
    loaded = ck.load_unet(path)
    assert loaded.model.config.num_head_channels == 32
    assert torch.equal(_forward(loaded.model), _forward(net))
    save_file({"model.diffusion_model." + k: v for k, v in net.state_dict().items()}, str(path),
              metadata={"latentgraph.num_heads": "lots"})
    with pytest.raises(model_files.CheckpointError, match="latentgraph.num_heads='lots'"):
        ck.load_unet(path)


def test_prediction_detection_for_sd2():
    from diffusion.loading.config import detect_unet_config
    cfg = dict(model_channels=64, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1),
               transformer_depth_output=(1, 1, 1, 1), context_dim=16, num_heads=-1,
               num_head_channels=64, use_linear_in_transformer=True)
    from diffusion.loading.config import UNetConfig
    sd = tiny_unet(UNetConfig(**cfg)).state_dict()
    config = detect_unet_config(sd)
    assert config.arch == "sd2"
    key = "output_blocks.3.1.transformer_blocks.0.norm1.bias"
    sd[key] = torch.linspace(-0.01, 0.01, sd[key].numel())  # eps-like: small spread
    assert ck.detect_prediction(sd, config, {}) == "eps"
    sd[key] = torch.linspace(-0.5, 0.5, sd[key].numel())  # v-like: std above 0.09
    assert ck.detect_prediction(sd, config, {}) == "v_prediction"
    assert ck.detect_prediction(sd, config, {}, prediction="eps") == "eps"
    assert ck.detect_prediction(sd, config, {"modelspec.prediction_type": "epsilon"}) == "eps"
    sd[key] = torch.zeros_like(sd[key])
    assert ck.detect_prediction(sd, config, {"modelspec.prediction_type": "v"}) == "v_prediction"
    assert ck.detect_prediction(sd, config, {}, sd={"v_pred": torch.zeros(())}) == "v_prediction"
    with pytest.raises(ValueError, match="prediction must be"):
        ck.detect_prediction(sd, config, {}, prediction="x0")


def test_legacy_pickle_format_loads_weights_only(tmp_path, sd1_file):
    _, sd = sd1_file
    path = tmp_path / "legacy.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=False)  # no mmap possible: read normally
    tensors, metadata = model_files.read_state_dict(path)
    assert metadata == {} and set(tensors) == set(sd)
    assert all(torch.equal(tensors[k], sd[k]) for k in sd)
