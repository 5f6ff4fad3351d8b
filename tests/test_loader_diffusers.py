"""DiffusersLoader: a diffusers pipeline folder loads as the same MODEL, CLIP and VAE as the single-file
checkpoint of the same weights.

Each family (tests/family_pipelines.py) is built once as diffusers' pipeline and as a checkpoint file;
the pipeline is written with `save_pretrained` (safetensors) into models/diffusers/. Then, through the
nodes: the conditioning of a prompt, one KSampler step and the decoded image agree with
CheckpointLoaderSimple's (<= 1e-5; in practice they are identical, same tensors on both sides).
"""
from __future__ import annotations

import shutil

import pytest
import torch

pytest.importorskip("diffusers")

from family_pipelines import FAMILIES, build_family  # noqa: E402
from tests.sdnodes_env import registry_with_capture, temporary_base  # noqa: E402

TOL = 1e-5
PROMPT = "a small red house by a lake, evening light"
ENCODE = {"sd1": "CLIPTextEncode", "sd2": "CLIPTextEncode", "sdxl": "CLIPTextEncodeSDXL",
          "sdxl_refiner": "CLIPTextEncodeSDXLRefiner"}


def rel_err(ours, theirs) -> float:
    return float((ours.float() - theirs.float()).abs().max() / theirs.float().abs().max())


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """arch -> Family, built on first use: the checkpoint in models/checkpoints, the pipeline saved
    with save_pretrained in models/diffusers/tiny-<arch>. Yields (home, get)."""
    home = tmp_path_factory.mktemp("diffusers_home")
    built: dict = {}

    def get(arch):
        if arch not in built:
            fam = build_family(arch, home / "models" / "checkpoints", seed=FAMILIES.index(arch))
            fam.pipe.save_pretrained(home / "models" / "diffusers" / f"tiny-{arch}", safe_serialization=True)
            built[arch] = fam
        return built[arch]

    with temporary_base(home):
        yield home, get


@pytest.fixture(scope="module")
def home(pipelines):
    return pipelines[0]


@pytest.fixture(scope="module")
def registry():
    return registry_with_capture()


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, pipelines):
    return pipelines[1](request.param)


def _node(registry, name, **inputs):
    cls = registry.get_class(name)
    return getattr(cls(), cls.FUNCTION)(**inputs)


def _text_inputs(arch, text, clip):
    if arch == "sdxl":
        return dict(clip=clip, width=64, height=64, crop_w=0, crop_h=0, target_width=64, target_height=64,
                    text_g=text, text_l=text)
    if arch == "sdxl_refiner":
        return dict(clip=clip, ascore=6.0, width=64, height=64, text=text)
    return dict(clip=clip, text=text)


def _both(registry, fam):
    single = _node(registry, "CheckpointLoaderSimple", ckpt_name=fam.checkpoint.name)
    folder = _node(registry, "DiffusersLoader", model_path=f"tiny-{fam.arch}")
    return single, folder


def test_object_info_lists_pipeline_folders(family, registry, home):
    info = registry.object_info_for("DiffusersLoader")
    assert info["category"] == "advanced/loaders/deprecated"
    assert info["python_module"] == "nodes"
    assert info["output"] == ["MODEL", "CLIP", "VAE"] and info["output_name"] == ["MODEL", "CLIP", "VAE"]
    assert info["input_order"] == {"required": ["model_path"]}
    options = info["input"]["required"]["model_path"][0]
    assert f"tiny-{family.arch}" in options
    # only folders with a model_index.json are offered, nested ones by their relative path
    (home / "models" / "diffusers" / "not-a-pipeline" / "unet").mkdir(parents=True, exist_ok=True)
    nested = home / "models" / "diffusers" / "group" / "nested"
    nested.mkdir(parents=True, exist_ok=True)
    (nested / "model_index.json").write_text("{}")
    options = registry.object_info_for("DiffusersLoader")["input"]["required"]["model_path"][0]
    assert "not-a-pipeline" not in options and "not-a-pipeline/unet" not in options
    assert "group/nested" in options
    shutil.rmtree(home / "models" / "diffusers" / "group")


def test_conditioning_equals_single_file(family, registry):
    (_, clip_a, _), (_, clip_b, _) = _both(registry, family)
    (a,) = _node(registry, ENCODE[family.arch], **_text_inputs(family.arch, PROMPT, clip_a))
    (b,) = _node(registry, ENCODE[family.arch], **_text_inputs(family.arch, PROMPT, clip_b))
    assert a[0][0].shape == b[0][0].shape
    assert rel_err(b[0][0], a[0][0]) <= TOL
    if family.arch.startswith("sdxl"):  # the pooled output feeds the SDXL UNet; SD1/SD2 UNets ignore it
        assert rel_err(b[0][1]["pooled_output"], a[0][1]["pooled_output"]) <= TOL
        assert {k: v for k, v in b[0][1].items() if k != "pooled_output"} == \
               {k: v for k, v in a[0][1].items() if k != "pooled_output"}


def _one_step(registry, loader: dict, arch: str, label: str):
    from graph.runner import Runner
    from tests.sdnodes_env import CaptureLatent

    def text(prompt):
        inputs = _text_inputs(arch, prompt, ["4", 1])
        return {"class_type": ENCODE[arch], "inputs": inputs}

    prompt = {
        "4": loader,
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": text(PROMPT), "7": text("blurry"),
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": 3, "steps": 1, "cfg": 4.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
            "denoise": 1.0}},
        "cap": {"class_type": "SDNodesCaptureLatent", "inputs": {"samples": ["3", 0], "label": label}},
    }
    Runner(registry).run(prompt)
    return CaptureLatent.seen[label]["samples"]


def test_one_ksampler_step_equals_single_file(family, registry):
    arch = family.arch
    single = _one_step(registry, {"class_type": "CheckpointLoaderSimple",
                                  "inputs": {"ckpt_name": family.checkpoint.name}}, arch, f"file-{arch}")
    folder = _one_step(registry, {"class_type": "DiffusersLoader",
                                  "inputs": {"model_path": f"tiny-{arch}"}}, arch, f"folder-{arch}")
    assert folder.shape == single.shape
    assert rel_err(folder, single) <= TOL
    assert float(single.abs().max()) > 0


def test_vae_and_prediction_equal_single_file(family, registry):
    (model_a, _, vae_a), (model_b, _, vae_b) = _both(registry, family)
    assert model_b.arch == model_a.arch == family.arch
    # SD2's tiny weights carry no v signature: the pipeline's scheduler config says v_prediction
    assert model_b.prediction == model_a.prediction == ("v_prediction" if family.arch == "sd2" else "eps")
    latent = torch.randn(1, 4, 8, 8, generator=torch.manual_seed(0))
    (img_a,) = _node(registry, "VAEDecode", samples={"samples": latent}, vae=vae_a)
    (img_b,) = _node(registry, "VAEDecode", samples={"samples": latent}, vae=vae_b)
    assert rel_err(img_b, img_a) <= TOL


def test_sd2_layers_count_from_the_full_tower(pipelines, registry):
    """diffusers' SD2 encoder lacks OpenCLIP-H's last layer; layer numbers still mean the full tower's."""
    fam = pipelines[1]("sd2")
    (_, clip_a, _), (_, clip_b, _) = _both(registry, fam)
    for n in (-2, -3):
        (a,) = _node(registry, "CLIPSetLastLayer", clip=clip_a, stop_at_clip_layer=n)
        (b,) = _node(registry, "CLIPSetLastLayer", clip=clip_b, stop_at_clip_layer=n)
        (ca,) = _node(registry, "CLIPTextEncode", clip=a, text=PROMPT)
        (cb,) = _node(registry, "CLIPTextEncode", clip=b, text=PROMPT)
        assert rel_err(cb[0][0], ca[0][0]) <= TOL
    # ... and equal what diffusers' own pipeline feeds its UNet (last_hidden_state of the short encoder)
    with torch.no_grad():
        theirs, _ = fam.pipe.encode_prompt(PROMPT, "cpu", 1, False)
    (cb,) = _node(registry, "CLIPTextEncode", clip=clip_b, text=PROMPT)
    assert rel_err(cb[0][0], theirs) <= TOL
    (last,) = _node(registry, "CLIPSetLastLayer", clip=clip_b, stop_at_clip_layer=-1)
    with pytest.raises(ValueError, match=r"layer -1 .*not in its weights.*-2 or lower"):
        _node(registry, "CLIPTextEncode", clip=last, text=PROMPT)


def _copy_pipeline(home, arch, name):
    src = home / "models" / "diffusers" / f"tiny-{arch}"
    dst = home / "models" / "diffusers" / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def test_bin_weights_load_weights_only(pipelines, registry):
    """.bin components load through torch.load(weights_only=True); a pickle with code is refused."""
    from safetensors.torch import load_file

    home, get = pipelines
    fam = get("sd1")
    dst = _copy_pipeline(home, "sd1", "tiny-sd1-bin")
    st = dst / "text_encoder" / "model.safetensors"
    torch.save(load_file(str(st)), str(dst / "text_encoder" / "pytorch_model.bin"))
    st.unlink()
    (_, clip_a, _), _ = _both(registry, fam)
    (_, clip_b, _) = _node(registry, "DiffusersLoader", model_path="tiny-sd1-bin")
    (a,) = _node(registry, "CLIPTextEncode", clip=clip_a, text=PROMPT)
    (b,) = _node(registry, "CLIPTextEncode", clip=clip_b, text=PROMPT)
    assert rel_err(b[0][0], a[0][0]) <= TOL

    torch.save({"weights": load_file(str(dst / "vae" / "diffusion_pytorch_model.safetensors")),
                "hook": shutil.rmtree}, str(dst / "vae" / "diffusion_pytorch_model.bin"))
    (dst / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(Exception, match="refusing to load"):
        _node(registry, "DiffusersLoader", model_path="tiny-sd1-bin")


def test_errors_name_folder_and_part(pipelines, registry):
    from diffusion.loading.files import CheckpointError

    home, get = pipelines
    get("sd1")
    dst = _copy_pipeline(home, "sd1", "tiny-sd1-broken")
    shutil.rmtree(dst / "unet")
    with pytest.raises(CheckpointError, match=r"tiny-sd1-broken.*no 'unet/' folder"):
        _node(registry, "DiffusersLoader", model_path="tiny-sd1-broken")
    shutil.copytree(home / "models" / "diffusers" / "tiny-sd1" / "unet", dst / "unet")
    (dst / "text_encoder" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"text_encoder.*none of the weight files"):
        _node(registry, "DiffusersLoader", model_path="tiny-sd1-broken")
    with pytest.raises(FileNotFoundError, match="DiffusersLoader: model_path 'nope'"):
        _node(registry, "DiffusersLoader", model_path="nope")
    for bad in ("../checkpoints", "/etc", ""):
        with pytest.raises(ValueError, match="inside the diffusers model folders"):
            _node(registry, "DiffusersLoader", model_path=bad)
    shutil.rmtree(dst)
