"""Upscale models (ESRGAN, Real-ESRGAN, SwinIR, HAT, ...) from weight files, through `spandrel`.

spandrel reads the architecture and its sizes from the keys and shapes and builds the network; the
result is its `ImageModelDescriptor` (callable on [1, C, H, W] 0..1 images, `.scale`, `.model`), the
UPSCALE_MODEL value ComfyUI's nodes and plugins pass around. Files are read by our own reader
(`diffusion.loading.files`): safetensors memory-mapped, pickles only with `weights_only=True`.

Dependency: spandrel 0.4.2 declares torchvision, and `import spandrel` imports it, because two of its
~45 architectures bind torchvision names at import time: LaMa (inpainting; `rotate`,
`InterpolationMode`) and RestoreFormer (face restoration; `normalize`). PyPI's torchvision is built
against one torch release and breaks beside ours, so the Makefile installs spandrel with `--no-deps`
(its other dependencies, einops among them, are in pyproject) and, when no working torchvision is
importable, `import_spandrel` imports it with a stand-in for exactly those three names, put in
`sys.modules` for the import and taken out again, so nothing else ever sees a fake torchvision.
The stand-in's `normalize` is torchvision's arithmetic (RestoreFormer works); its `rotate` raises,
which only LaMa would reach, and LaMa (image + mask) is refused as an upscale model anyway.
"""
from __future__ import annotations

import enum
import importlib
import importlib.util
import logging
import sys
import threading
import types
from pathlib import Path

import torch

from diffusion.loading.files import PICKLE_SUFFIXES, CheckpointError, load_pickle, read_state_dict

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install --no-deps spandrel==0.4.2 && pip install einops"
_import_lock = threading.Lock()


class UpscaleModelError(Exception):
    """An upscale model cannot be loaded or run; the message says which file or input and why."""


# ---------------------------------------------------------------------------------------------
# Importing spandrel without torchvision

class _InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _normalize(tensor: torch.Tensor, mean, std, inplace: bool = False) -> torch.Tensor:
    """torchvision.transforms.functional.normalize for tensors: (x - mean) / std per channel (dim -3)."""
    if not tensor.is_floating_point():
        raise TypeError(f"normalize expects a float tensor, got {tensor.dtype}")
    mean = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device)
    std = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device)
    if (std == 0).any():
        raise ValueError("normalize: std contains a zero")
    if mean.ndim == 1:
        mean = mean.view(-1, 1, 1)
    if std.ndim == 1:
        std = std.view(-1, 1, 1)
    out = tensor if inplace else tensor.clone()
    return out.sub_(mean).div_(std)


def _rotate(*args, **kwargs):
    raise UpscaleModelError("this model needs torchvision's rotate (LaMa inpainting), and no torchvision "
                            "that works with this torch is installed")


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = _InterpolationMode
    functional.normalize = _normalize
    functional.rotate = _rotate
    root.transforms = transforms
    transforms.functional = functional
    return {m.__name__: m for m in (root, transforms, functional)}


def _torchvision_works() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        importlib.import_module("torchvision.transforms.functional")
        return True
    except Exception as e:  # a torchvision built for another torch fails while registering its ops
        log.warning("torchvision is installed but does not import (%s: %s); spandrel is imported "
                    "without it", type(e).__name__, e)
        return False


def import_spandrel():
    """The spandrel module, imported once (see the module docstring for torchvision)."""
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    with _import_lock:
        if "spandrel" in sys.modules:
            return sys.modules["spandrel"]
        if importlib.util.find_spec("spandrel") is None:
            raise UpscaleModelError(f"upscale models need the 'spandrel' package, which is not installed: "
                                    f"{INSTALL_HINT}")
        stand_in = {} if _torchvision_works() else _torchvision_stand_in()
        saved = {name: sys.modules.get(name) for name in stand_in}
        sys.modules.update(stand_in)
        try:
            module = importlib.import_module("spandrel")
        except ModuleNotFoundError as e:
            raise UpscaleModelError(f"spandrel needs the '{e.name}' package, which is not installed: "
                                    f"{INSTALL_HINT}") from e
        finally:
            for name, mod in stand_in.items():
                if sys.modules.get(name) is mod:
                    if saved[name] is None:
                        del sys.modules[name]
                    else:
                        sys.modules[name] = saved[name]
        _add_extra_arches(module)
        return module


def _add_extra_arches(spandrel) -> None:
    """Like ComfyUI: the non-commercial architectures of `spandrel_extra_arches`, when installed."""
    if importlib.util.find_spec("spandrel_extra_arches") is None:
        return
    try:
        from spandrel_extra_arches import EXTRA_REGISTRY

        spandrel.MAIN_REGISTRY.add(*EXTRA_REGISTRY)
    except Exception as e:
        log.warning("spandrel_extra_arches is installed but could not be added: %s", e)


# ---------------------------------------------------------------------------------------------
# Loading

def read_upscale_state_dict(path) -> dict[str, torch.Tensor]:
    """Tensors of an upscale model file, unwrapped from the containers trainers save them in
    (`params_ema`, `params`, `state_dict`, a `module.` prefix, ...; spandrel's canonical form)."""
    spandrel = import_spandrel()
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        obj = load_pickle(path)
    else:
        obj, _ = read_state_dict(path)
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a state dict")
    sd = spandrel.canonicalize_state_dict(obj)
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(path, "holds no tensors")
    return tensors


def upscale_model_from_state_dict(sd: dict, where: str = "state dict"):
    """spandrel's ImageModelDescriptor for the weights `sd` (in eval mode), built where the default
    device is: on the meta device this checks a key layout without any memory."""
    spandrel = import_spandrel()
    try:
        descriptor = spandrel.MAIN_REGISTRY.load(sd)
    except spandrel.UnsupportedModelError:
        raise UpscaleModelError(f"{where}: no upscale architecture spandrel knows matches these weights "
                                f"(e.g. keys {sorted(sd)[:3]})") from None
    except (RuntimeError, KeyError, ValueError, IndexError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise UpscaleModelError(f"{where}: weights do not fit the detected architecture: "
                                f"{' '.join(lines[:2])}") from e
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UpscaleModelError(f"{where}: is a {descriptor.architecture.name} model that takes an image and a "
                                f"mask; an upscale model must take a single image")
    return descriptor.eval()


def load_upscale_model(path):
    """UpscaleModelLoader: the spandrel model of an upscale model file, float32 on the CPU."""
    return upscale_model_from_state_dict(read_upscale_state_dict(path), where=str(path))
