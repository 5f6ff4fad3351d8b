"""k-diffusion's sampler module as a test-only reference, without the rest of the package.

Install (test environment only, pure Python, no dependency resolution):

    pip install --no-deps k-diffusion==0.1.1.post1 torchdiffeq

Why not `import k_diffusion`: the package's __init__ imports every submodule, and `k_diffusion.utils`
imports `torchvision.transforms.functional` at module level. PyPI's torchvision does not import beside
our torch build, and we must not install it (nor the other heavy extras: clip, wandb, ...).
`k_diffusion/sampling.py` itself only needs scipy, torchdiffeq, torchsde, tqdm and `utils.append_dims`.

How: `load()` finds the installed package directory without importing it (importlib.util.find_spec
on the top-level name only reads the file system), then executes `utils.py` and `sampling.py` by path
as submodules of a private package name (`_kdiffusion_ref`), so a real `k_diffusion` import elsewhere
is never shadowed or half-initialised. While `utils.py` executes, a stub module stands in for
`torchvision` / `torchvision.transforms` / `torchvision.transforms.functional` (only image
conversion helpers we never call use it); the previous sys.modules entries are restored right
after, even on failure. The loaded module is cached.

`load()` raises ImportError when k-diffusion is not installed; tests call `pytest.importorskip`-style
`require()` so the suite still runs (and says why it skipped) without it.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

VERSION = "0.1.1.post1"
_PACKAGE = "_kdiffusion_ref"
_STUBBED = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
_cache: dict = {}


def _package_dir() -> Path:
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"k-diffusion is not installed: pip install --no-deps k-diffusion=={VERSION} torchdiffeq")
    return Path(next(iter(spec.submodule_search_locations)))


def _exec_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"{_PACKAGE}.{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load() -> types.ModuleType:
    """The `k_diffusion.sampling` module of the installed k-diffusion (see module docstring)."""
    if "sampling" in _cache:
        return _cache["sampling"]
    root = _package_dir()
    package = types.ModuleType(_PACKAGE)
    package.__path__ = [str(root)]
    sys.modules[_PACKAGE] = package

    saved = {name: sys.modules.get(name) for name in _STUBBED}
    stub = types.ModuleType("torchvision")
    stub.transforms = types.ModuleType("torchvision.transforms")
    stub.transforms.functional = types.ModuleType("torchvision.transforms.functional")
    sys.modules.update({"torchvision": stub, "torchvision.transforms": stub.transforms,
                        "torchvision.transforms.functional": stub.transforms.functional})
    try:
        package.utils = _exec_file("utils", root / "utils.py")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    package.sampling = _exec_file("sampling", root / "sampling.py")
    _cache["sampling"] = package.sampling
    return package.sampling


def require() -> types.ModuleType:
    """load(), failing with the install line when k-diffusion is absent (make test installs it)."""
    try:
        return load()
    except ImportError as exc:
        raise ImportError(f"{exc}; install the reference with "
                          "`pip install --no-deps k-diffusion==0.1.1.post1` (the Makefile does)") from exc
