"""Reading model files: tensors and metadata, without executing anything from the file.

- .safetensors: the file is memory-mapped (private, copy-on-write) and every tensor is a view into
  that mapping, so loading allocates nothing until a tensor is converted; modules built on the meta
  device take these views as their parameters (`load_state_dict(assign=True)`): no second copy.
  Only a tensor whose offset is not aligned to its element size is copied.
- .ckpt/.pt/.pth/.bin: only `torch.load(weights_only=True, mmap=True)`: plain tensors and containers,
  never arbitrary pickled objects.
Storage dtypes fp32, fp16 and bf16 (and the usual integer/fp8 ones) are accepted; the dtype used
to compute is chosen by `diffusion/memory.py`.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_ST_DTYPES.update({name: getattr(torch, attr) for name, attr in
                   (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")) if hasattr(torch, attr)})


class CheckpointError(Exception):
    """A model file cannot be used; the message names the file and what is wrong with it."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def read_safetensors(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors of a .safetensors file as views into a private memory map, and its metadata."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(path, f"file is {size} bytes, too short to be safetensors (truncated?)")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8 or header_len > 100_000_000:
            raise CheckpointError(path, f"header claims {header_len} bytes but the file has {size}; "
                                        "the file is truncated or not safetensors")
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(path, f"header is not valid safetensors JSON ({e}); file corrupt?") from None
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    data_len = size - data_start

    entries = []
    for name, info in header.items():
        try:
            dtype = _ST_DTYPES[info["dtype"]]
            shape = [int(s) for s in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except KeyError as e:
            raise CheckpointError(path, f"tensor {name!r}: unsupported or missing field {e}") from None
        except (TypeError, ValueError):
            raise CheckpointError(path, f"tensor {name!r}: malformed header entry {info!r}") from None
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if end - begin != nbytes or begin < 0:
            raise CheckpointError(path, f"tensor {name!r}: offsets {begin}..{end} do not fit shape "
                                        f"{shape} of {info['dtype']}")
        if end > data_len:
            raise CheckpointError(path, f"tensor {name!r} ends at byte {data_start + end} but the file "
                                        f"has {size} bytes: the file is truncated")
        entries.append((name, dtype, shape, begin, end))

    tensors: dict[str, torch.Tensor] = {}
    if not entries:
        return tensors, metadata
    # shared=False maps the file MAP_PRIVATE: pages come from the page cache on first touch and are
    # never written back; an accidental in-place edit copies just that page.
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
    raw_bytes = torch.empty(0, dtype=torch.uint8).set_(storage)
    for name, dtype, shape, begin, end in entries:
        item = torch.empty((), dtype=dtype).element_size()
        offset = data_start + begin
        if offset % item == 0:
            t = torch.empty(0, dtype=dtype).set_(storage, offset // item, shape)
        else:  # unaligned writer: this tensor alone is copied
            t = raw_bytes[offset:offset + (end - begin)].clone().view(dtype).reshape(shape)
        tensors[name] = t
    return tensors, metadata


def load_pickle(path):
    """The object a .ckpt/.pt/.pth/.bin file holds (tensors in plain containers), read with
    `torch.load(weights_only=True)`; CheckpointError when torch refuses it or cannot read it."""
    path = Path(path)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e).lower():
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as e:
        if type(e).__name__ == "UnpicklingError" or "weights_only" in str(e):
            raise CheckpointError(path, "contains pickled Python objects other than tensors; refusing to "
                                        "load it (convert it to .safetensors)") from None
        raise CheckpointError(path, f"cannot be read as a PyTorch checkpoint ({type(e).__name__}: "
                                    f"{e}); truncated or corrupt?") from None
    return obj


def read_pickle(path) -> dict[str, torch.Tensor]:
    path = Path(path)
    obj = load_pickle(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(path, "holds no tensors")
    return tensors


def read_state_dict(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a model file; raises CheckpointError for missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors" or suffix == ".sft":
        return read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return read_pickle(path), {}
    # Unknown extension: sniff. Zip (torch.save) starts with PK; anything else, try safetensors.
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"PK":
        return read_pickle(path), {}
    return read_safetensors(path)


def assign_weights(net: torch.nn.Module, sd: dict, what: str, where, hint: str = "") -> list[str]:
    """Make the tensors of `sd` the parameters of `net` (built on the meta device, so nothing is copied).

    A tensor whose shape does not fit, or a missing tensor, is a CheckpointError naming `what` (e.g.
    "UNet") and the file; `hint` is added to the missing-tensor message. Returns the unexpected keys.
    """
    try:
        result = net.load_state_dict(sd, strict=False, assign=True)
    except RuntimeError as e:
        raise CheckpointError(where, f"{what} weights do not fit the detected layout: "
                                     f"{str(e).splitlines()[-1].strip()}") from None
    if result.missing_keys:
        raise CheckpointError(where, f"{what} is missing {len(result.missing_keys)} tensors, e.g. "
                                     f"{result.missing_keys[:3]}{hint}")
    return list(result.unexpected_keys)
